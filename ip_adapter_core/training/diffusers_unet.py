"""Decoupled cross-attention on a diffusers ``UNet2DConditionModel``, for training with diffusers
and accelerate (scripts/train_ipadapter.py) and for checking against the reference.

The convention is the reference's (tencent-ailab/IP-Adapter ``IPAttnProcessor2_0``): the UNet's
``encoder_hidden_states`` are the text tokens followed by the adapter's image tokens; each attn2
splits them, attends to each, and adds ``scale · Attn(Q, K', V')`` before the output projection.
K'/V' are the adapter's own modules (``IPAdapterModel.layer``), held by reference and not
registered in the UNet, so ``unet.parameters()`` stays the frozen UNet's and the optimizer gets
exactly the adapter's parameters. The file index of a layer is its position in
``unet.attn_processors``, as the reference numbers its files."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b = t.shape[0]
    return t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)


class DecoupledAttnProcessor:
    """attn2 with an image branch; everything else as diffusers' AttnProcessor2_0."""

    def __init__(self, ip_layer, num_tokens: int, scale: float = 1.0):
        self.ip_layer, self.num_tokens, self.scale = ip_layer, num_tokens, scale

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        split = encoder_hidden_states.shape[1] - self.num_tokens
        text, image = encoder_hidden_states[:, :split], encoder_hidden_states[:, split:]
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, text.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        q = _heads(query, attn.heads)
        out = F.scaled_dot_product_attention(q, _heads(attn.to_k(text), attn.heads),
                                             _heads(attn.to_v(text), attn.heads), attn_mask=attention_mask)
        ip = F.scaled_dot_product_attention(q, _heads(self.ip_layer.to_k_ip(image), attn.heads),
                                            _heads(self.ip_layer.to_v_ip(image), attn.heads))
        out = out + self.scale * ip
        out = out.transpose(1, 2).reshape(batch, -1, query.shape[-1]).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_processors(unet, adapter, scale: float = 1.0) -> None:
    """Put the adapter's layers into a diffusers UNet's attn2 (attn1 keeps plain attention)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    procs = {}
    indices = {l.file_index for l in adapter.config.layers}
    for i, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            if i not in indices:
                raise ValueError(f"the UNet's attn2 layer {name} (file index {i}) is not one of the adapter's")
            procs[name] = DecoupledAttnProcessor(adapter.layer(i), adapter.config.num_tokens, scale)
        else:
            procs[name] = AttnProcessor2_0()
    unet.set_attn_processor(procs)


def predict_noise(unet, adapter, noisy, timesteps, text_cond, features, added_cond_kwargs=None):
    """The UNet's ε prediction with the image tokens of ``features`` (one image per row)."""
    tokens = adapter.image_proj(features.to(text_cond.dtype))
    hidden = torch.cat([text_cond, tokens.to(text_cond.dtype)], dim=1)
    return unet(noisy, timesteps, hidden, added_cond_kwargs=added_cond_kwargs).sample
