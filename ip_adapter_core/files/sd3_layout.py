"""SD3.5-Large IP-Adapters (InstantX/SD3.5-Large-IP-Adapter, FAMILIES.md §4): where their weights sit in
ComfyUI's MMDiT, and how a model is told to be one they fit.

SD3's MMDiT is a stack of joint blocks (image and text streams attending together). ComfyUI calls joint block
i through ``patches_replace["dit"][("double_block", i)]`` (comfy/ldm/modules/diffusionmodules/mmdit.py), so
those keys are the layer keys here, as Flux's are in flux_layout.py. The adapter acts in every joint block:
``ip_adapter.{i}`` is block i.

An MMDiT's width is tied to its depth (hidden = 64 · depth, heads of 64): SD3.5 Large has 38 blocks 2432
wide, SD3.5 Medium 24 blocks 1536 wide with extra self-attention in its first blocks (MMDiT-X), SD3 Medium
24 blocks without q/k norms. The published adapter is for Large only.

Torch-free (as layers.py), so the converter and the λ tables read it without torch.
"""
from __future__ import annotations

from types import MappingProxyType

from .layers import AttnLayer

SD3 = "sd3"
JOINT = "double_block"          # ComfyUI's patch key for a joint block
SD3_HEAD_DIM = 64               # every MMDiT: hidden = 64 · depth
SD35_LARGE = MappingProxyType(dict(depth=38, hidden_size=38 * SD3_HEAD_DIM))


def sd3_layers(blocks: int, hidden: int) -> tuple[AttnLayer, ...]:
    """The joint blocks an adapter acts in, in file order (block i is ``ip_adapter.{i}``)."""
    return tuple(AttnLayer((JOINT, i), i, hidden, hidden // SD3_HEAD_DIM) for i in range(blocks))


def mmdit_model_blocks(unet_config: dict) -> tuple[int, int] | None:
    """(joint blocks, hidden width) of an SD3.5-Large-structured MMDiT from ComfyUI's unet_config (RMS q/k norms,
    no MMDiT-X self-attention), or None when the model is not an MMDiT of that structure."""
    if "x_block_self_attn_layers" not in unet_config or "image_model" in unet_config:
        return None  # the key only ComfyUI's MMDiT detection writes
    if unet_config.get("qk_norm") != "rms" or unet_config.get("x_block_self_attn_layers"):
        return None
    try:
        depth = int(unet_config["depth"])
    except (KeyError, TypeError, ValueError):
        return None
    return depth, depth * SD3_HEAD_DIM


def mmdit_kind(unet_config: dict) -> str | None:
    """'SD3.5 Medium' / 'SD3 Medium' / 'an MMDiT' for an MMDiT the adapter does not fit, or None for another model."""
    if "x_block_self_attn_layers" not in unet_config:
        return None
    if unet_config.get("x_block_self_attn_layers"):
        return "SD3.5 Medium (MMDiT-X)"
    if unet_config.get("qk_norm") != "rms":
        return "SD3 Medium (no q/k norms)"
    return "an MMDiT"
