"""The reference training step, transcribed independently from tencent-ailab/IP-Adapter
(tutorial_train*.py, ip_adapter/attention_processor.py IPAttnProcessor2_0, ImageProjModel, resampler.py)
for a diffusers UNet: the tests (tests/test_training_core.py) compare our step with it, and the
benchmark (bench/training.py) times it beside ours. Nothing here imports the original repository."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RefIPAttnProcessor(nn.Module):
    """IPAttnProcessor2_0's maths (ip_adapter/attention_processor.py): the last ``num_tokens`` of
    encoder_hidden_states are the image tokens; text and image attention share the query and are
    added (image × scale) before to_out; then residual / rescale as diffusers does."""

    def __init__(self, hidden_size, cross_attention_dim, scale=1.0, num_tokens=4):
        super().__init__()
        self.scale, self.num_tokens = scale, num_tokens
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        end_pos = encoder_hidden_states.shape[1] - self.num_tokens
        text, ip_states = encoder_hidden_states[:, :end_pos], encoder_hidden_states[:, end_pos:]
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        key, value = attn.to_k(text), attn.to_v(text)
        head_dim = key.shape[-1] // attn.heads

        def heads(t):
            return t.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        def merge(t):
            return t.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)

        q = heads(query)
        out = merge(F.scaled_dot_product_attention(q, heads(key), heads(value), attn_mask=attention_mask))
        ip_out = merge(F.scaled_dot_product_attention(q, heads(self.to_k_ip(ip_states)),
                                                      heads(self.to_v_ip(ip_states))))
        out = out + self.scale * ip_out
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class RefImageProjModel(nn.Module):
    """tutorial_train.py's ImageProjModel: Linear(clip dim -> tokens·cross) + LayerNorm(cross)."""

    def __init__(self, cross_attention_dim=768, clip_embeddings_dim=1024, clip_extra_context_tokens=4):
        super().__init__()
        self.cross, self.tokens = cross_attention_dim, clip_extra_context_tokens
        self.proj = nn.Linear(clip_embeddings_dim, self.tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds):
        return self.norm(self.proj(image_embeds).reshape(-1, self.tokens, self.cross))


class RefPerceiverAttention(nn.Module):
    """ip_adapter/resampler.py's PerceiverAttention (q, k scaled by dim_head^-1/4 each; fp32 softmax)."""

    def __init__(self, dim, dim_head, heads):
        super().__init__()
        self.dim_head, self.heads, inner = dim_head, heads, dim_head * heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x, latents):
        x, latents = self.norm1(x), self.norm2(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        q, k, v = (t.view(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        return self.to_out((weight @ v).permute(0, 2, 1, 3).reshape(b, n, -1))


class RefResampler(nn.Module):
    """ip_adapter/resampler.py's Resampler as tutorial_train_plus.py builds it (no pos_emb, no
    mean-pooled latents): latents attend over [proj_in(x); latents], depth × (attn + FF)."""

    def __init__(self, dim, depth, dim_head, heads, num_queries, embedding_dim, output_dim, ff_mult):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim ** 0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(nn.ModuleList([
            RefPerceiverAttention(dim, dim_head, heads),
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                          nn.Linear(dim * ff_mult, dim, bias=False))]) for _ in range(depth))

    def forward(self, x):
        latents = self.latents.repeat(x.size(0), 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


def reference_processors(unet, adapter):
    """tutorial_train.py's processor set-up (hidden size from the block name), with our adapter's
    K'/V' copied in by file index = position in unet.attn_processors. Returns {file index: proc}."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    boc, procs, ip = unet.config.block_out_channels, {}, {}
    for i, name in enumerate(unet.attn_processors):
        if name.endswith("attn1.processor"):
            procs[name] = AttnProcessor2_0()
            continue
        if name.startswith("mid_block"):
            hidden = boc[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(boc))[int(name[len("up_blocks.")])]
        else:
            hidden = boc[int(name[len("down_blocks.")])]
        p = RefIPAttnProcessor(hidden, unet.config.cross_attention_dim, num_tokens=adapter.config.num_tokens)
        p.load_state_dict({k: v.detach().clone() for k, v in adapter.layer(i).state_dict().items()})
        procs[name] = ip[i] = p
    unet.set_attn_processor(procs)
    return ip


def reference_projection(cfg, adapter):
    if cfg.projection == "linear":
        ref = RefImageProjModel(cfg.cross_dim, cfg.feature_dim, cfg.num_tokens)
    else:
        r = cfg.resampler
        ref = RefResampler(r.dim, r.depth, r.dim_head, r.heads, r.num_queries, r.embedding_dim, r.output_dim,
                           r.ff_mult)
    ref.load_state_dict({k: v.detach().clone() for k, v in adapter.image_proj.state_dict().items()}, strict=True)
    return ref


def reference_loss(unet, image_proj, x0, eps, t, text, feats):
    """tutorial_train.py's step: DDPMScheduler.add_noise, tokens appended to the text, ε-MSE."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          num_train_timesteps=1000)
    noisy = sched.add_noise(x0, eps, t)
    hidden = torch.cat([text, image_proj(feats)], dim=1)
    pred = unet(noisy, t, hidden).sample
    return F.mse_loss(pred.float(), eps.float(), reduction="mean")


