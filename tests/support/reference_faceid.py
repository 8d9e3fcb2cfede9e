"""The original repository's FaceID maths, transcribed for the parity tests (tencent-ailab/IP-Adapter:
``ip_adapter/ip_adapter_faceid.py`` MLPProjModel, ProjPlusModel; ``ip_adapter/resampler.py``
PerceiverAttention / FeedForward as FacePerceiverResampler uses them; ``ip_adapter/attention_processor_faceid.py``
LoRALinearLayer, LoRAAttnProcessor2_0, LoRAIPAttnProcessor2_0). Written from those classes' formulas,
independently of the extension's code; the image tokens are held by the processor instead of being appended to
the text (the reference slices them off again at ``end_pos``), which is the same computation.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from support.reference_train import RefPerceiverAttention  # ip_adapter/resampler.py's, shared by both


def _ff(dim, mult=4):
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class RefFacePerceiverResampler(nn.Module):
    def __init__(self, dim=768, depth=4, dim_head=64, heads=16, embedding_dim=1280, output_dim=768, ff_mult=4):
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(nn.ModuleList([RefPerceiverAttention(dim, dim_head, heads), _ff(dim, ff_mult)])
                                    for _ in range(depth))

    def forward(self, latents, x):
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class RefMLPProjModel(nn.Module):
    def __init__(self, cross_attention_dim=768, id_embeddings_dim=512, num_tokens=4):
        super().__init__()
        self.cross_attention_dim, self.num_tokens = cross_attention_dim, num_tokens
        self.proj = nn.Sequential(nn.Linear(id_embeddings_dim, id_embeddings_dim * 2), nn.GELU(),
                                  nn.Linear(id_embeddings_dim * 2, cross_attention_dim * num_tokens))
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, id_embeds):
        x = self.proj(id_embeds).reshape(-1, self.num_tokens, self.cross_attention_dim)
        return self.norm(x)


class RefProjPlusModel(nn.Module):
    def __init__(self, cross_attention_dim=768, id_embeddings_dim=512, clip_embeddings_dim=1280, num_tokens=4):
        super().__init__()
        self.cross_attention_dim, self.num_tokens = cross_attention_dim, num_tokens
        self.proj = nn.Sequential(nn.Linear(id_embeddings_dim, id_embeddings_dim * 2), nn.GELU(),
                                  nn.Linear(id_embeddings_dim * 2, cross_attention_dim * num_tokens))
        self.norm = nn.LayerNorm(cross_attention_dim)
        self.perceiver_resampler = RefFacePerceiverResampler(
            dim=cross_attention_dim, depth=4, dim_head=64, heads=cross_attention_dim // 64,
            embedding_dim=clip_embeddings_dim, output_dim=cross_attention_dim, ff_mult=4)

    def forward(self, id_embeds, clip_embeds, shortcut=False, scale=1.0):
        x = self.norm(self.proj(id_embeds).reshape(-1, self.num_tokens, self.cross_attention_dim))
        out = self.perceiver_resampler(x, clip_embeds)
        if shortcut:
            out = x + scale * out
        return out


class RefLoRALinearLayer(nn.Module):
    def __init__(self, in_features, out_features, rank=4):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)

    def forward(self, hidden_states):
        orig = hidden_states.dtype
        return self.up(self.down(hidden_states.to(self.down.weight.dtype))).to(orig)  # network_alpha None: scale 1


class RefLoRAAttnProcessor(nn.Module):
    """LoRAAttnProcessor2_0, and with ``ip`` set LoRAIPAttnProcessor2_0 (image tokens held here)."""

    def __init__(self, hidden_size, cross_attention_dim=None, rank=128, lora_scale=1.0, ip=False, scale=1.0):
        super().__init__()
        cross = cross_attention_dim or hidden_size
        self.lora_scale, self.scale = lora_scale, scale
        self.to_q_lora = RefLoRALinearLayer(hidden_size, hidden_size, rank)
        self.to_k_lora = RefLoRALinearLayer(cross, hidden_size, rank)
        self.to_v_lora = RefLoRALinearLayer(cross, hidden_size, rank)
        self.to_out_lora = RefLoRALinearLayer(hidden_size, hidden_size, rank)
        if ip:
            self.to_k_ip = nn.Linear(cross, hidden_size, bias=False)
            self.to_v_ip = nn.Linear(cross, hidden_size, bias=False)
        self.ip = ip
        self.ip_tokens = None  # [batch, T, cross], set before each forward

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states) + self.lora_scale * self.to_q_lora(hidden_states)
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key = attn.to_k(ctx) + self.lora_scale * self.to_k_lora(ctx)
        value = attn.to_v(ctx) + self.lora_scale * self.to_v_lora(ctx)
        head_dim = key.shape[-1] // attn.heads
        q, k, v = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        if self.ip:
            ip_k = self.to_k_ip(self.ip_tokens).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            ip_v = self.to_v_ip(self.ip_tokens).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            ip = F.scaled_dot_product_attention(q, ip_k, ip_v, dropout_p=0.0, is_causal=False)
            out = out + self.scale * ip.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        out = attn.to_out[0](out) + self.lora_scale * self.to_out_lora(out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def reference_processors(unet, sections: dict, scale: float, rank: int) -> dict:
    """The processors the reference's ``set_ip_adapter`` installs, loaded with a FaceID file's ``ip_adapter``
    section as its ``load_state_dict`` does (``adapter_modules`` = the processors in ``attn_processors`` order,
    numbered from 0). Portrait files (no LoRA) use plain attention on attn1 and the IP processor without LoRA:
    modelled here with rank-``rank`` LoRA weights of zero."""
    ipa = {k: v.float() for k, v in sections["ip_adapter"].items()}
    procs = {}
    for i, name in enumerate(unet.attn_processors.keys()):
        cross = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
        if name.startswith("mid_block"):
            hidden = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        p = RefLoRAAttnProcessor(hidden, cross, rank=rank, ip=cross is not None, scale=scale)
        sd = {k.partition(".")[2]: v for k, v in ipa.items() if k.partition(".")[0] == str(i)}
        for proj in ("to_q", "to_k", "to_v", "to_out"):
            for part in ("down", "up"):
                key = f"{proj}_lora.{part}.weight"
                sd.setdefault(key, torch.zeros_like(getattr(getattr(p, f"{proj}_lora"), part).weight))
        p.load_state_dict(sd, strict=True)
        procs[name] = p.eval()
    return procs
