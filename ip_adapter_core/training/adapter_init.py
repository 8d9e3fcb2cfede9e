"""A new IP-Adapter to train, initialised as the reference (tencent-ailab/IP-Adapter,
tutorial_train*.py) does: the projection with torch's default initialisation (the Resampler's
latents randn / √dim), and each layer's K'/V' a copy of that layer's text K/V, so at step 0 the
image branch attends exactly as the text branch's weights would."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import IPAdapterError
from ..files.adapter import IPAdapterModel
from ..files.config import (
    ENCODERS,
    IMAGE_EMBEDS,
    PENULTIMATE,
    UNCOND_ENCODE_ZERO_IMAGE,
    UNCOND_PROJECT_ZEROS,
    VIT_H,
    AdapterConfig,
    ResamplerConfig,
)
from ..files.layers import layers_of_width

CROSS_DIM = {"sd15": 768, "sdxl": 2048}
# The released variants' token counts; new adapters of each kind default to them.
VARIANT_TOKENS = {"linear": 4, "resampler": 16, "mlp": 257}
VARIANT_NAMES = {"linear 4 tokens": "linear", "plus 16 tokens": "resampler", "full-face 257 tokens": "mlp"}


def new_config(family: str, projection: str, encoder: str = VIT_H, model_channels: int = 320,
               num_tokens: int | None = None) -> AdapterConfig:
    """The config of a new adapter: what a file of that kind would be detected as."""
    if family not in CROSS_DIM:
        raise IPAdapterError(f"family: expected one of {sorted(CROSS_DIM)}; got {family!r}.")
    if projection not in VARIANT_TOKENS:
        raise IPAdapterError(f"variant: expected one of {sorted(VARIANT_TOKENS)}; got {projection!r}.")
    if encoder not in ENCODERS:
        raise IPAdapterError(f"encoder: expected one of {sorted(ENCODERS)}; got {encoder!r}.")
    cross = CROSS_DIM[family]
    feature = IMAGE_EMBEDS if projection == "linear" else PENULTIMATE
    feature_dim = ENCODERS[encoder][feature]
    tokens = num_tokens or VARIANT_TOKENS[projection]
    if projection == "mlp":
        tokens = 257  # one token per CLIP token: fixed by the encoder
    resampler = None
    if projection == "resampler":
        # the released plus adapters: inner width = the UNet's text width on SD1.5 (12 heads of 64),
        # 1280 (20 heads) on SDXL; depth 4, ff ×4
        dim = 768 if family == "sd15" else 1280
        resampler = ResamplerConfig(dim=dim, depth=4, heads=dim // 64, dim_head=64, num_queries=tokens,
                                    embedding_dim=feature_dim, output_dim=cross, ff_mult=4)
    widths = tuple(l.hidden for l in layers_of_width(family, model_channels))
    uncond = UNCOND_PROJECT_ZEROS if projection == "linear" else UNCOND_ENCODE_ZERO_IMAGE
    return AdapterConfig(family, projection, tokens, encoder, feature, feature_dim, cross, widths, uncond, resampler)


def new_adapter(config: AdapterConfig, text_kv: Mapping[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
                seed: int = 0, dtype=torch.float32, device=None) -> IPAdapterModel:
    """A trainable adapter (float32 by default). ``text_kv``: file index -> (to_k weight, to_v
    weight) of the UNet's cross-attention layer (``comfy_text_kv`` / ``diffusers_text_kv``);
    every layer must be given, with the adapter's shapes. The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = IPAdapterModel(config, dtype=dtype, device=device)
        latents = getattr(model.image_proj, "latents", None)
        if latents is not None:
            with torch.no_grad():
                latents.copy_(torch.randn(latents.shape) / latents.shape[-1] ** 0.5)
    if text_kv is not None:
        copy_text_kv(model, text_kv)
    return model.train().requires_grad_(True)


def copy_text_kv(model: IPAdapterModel, text_kv: Mapping[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
    missing = [l.file_index for l in model.config.layers if l.file_index not in text_kv]
    if missing:
        raise IPAdapterError(f"text K/V: the UNet gave no cross-attention weights for layers {missing[:4]}; "
                             "the UNet does not have the adapter's layers.")
    with torch.no_grad():
        for layer in model.config.layers:
            ipl = model.layer(layer.file_index)
            for param, src in zip((ipl.to_k_ip.weight, ipl.to_v_ip.weight), text_kv[layer.file_index]):
                if tuple(src.shape) != tuple(param.shape):
                    raise IPAdapterError(f"text K/V: layer {layer.file_index} {layer.key} of the UNet is "
                                         f"{tuple(src.shape)}; the adapter needs {tuple(param.shape)}.")
                param.copy_(src.to(param.dtype))


def comfy_text_kv(diffusion_model, config: AdapterConfig) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """file index -> (to_k, to_v) weights of a ComfyUI UNetModel's attn2 layers (by their keys)."""
    blocks = {"input": diffusion_model.input_blocks, "output": diffusion_model.output_blocks}
    out = {}
    for layer in config.layers:
        kind, number, t = layer.key
        block = diffusion_model.middle_block if kind == "middle" else blocks[kind][number]
        transformer = next(m for m in block if hasattr(m, "transformer_blocks"))
        attn = transformer.transformer_blocks[t].attn2
        out[layer.file_index] = (attn.to_k.weight.detach(), attn.to_v.weight.detach())
    return out


def diffusers_text_kv(unet) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """file index -> (to_k, to_v) weights of a diffusers UNet2DConditionModel's attn2 layers: the
    file index is the position in ``unet.attn_processors``, as the reference numbers its files."""
    out = {}
    modules = dict(unet.named_modules())
    for i, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            attn = modules[name[: -len(".processor")]]
            out[i] = (attn.to_k.weight.detach(), attn.to_v.weight.detach())
    return out
