"""Flux IP-Adapters (FAMILIES.md §3): where their weights sit in Flux's transformer, and their files.

Flux.1 is a transformer of 19 double-stream blocks (image and text streams side by side) then 38
single-stream blocks (one stream, [text; image]). ComfyUI calls a block through
``patches_replace["dit"][("double_block", i)]`` / ``[("single_block", i)]``; those keys are the layer
keys here, as ``(block_name, number, transformer_index)`` are for UNets (layers.py).

XLabs' files (flux-ip-adapter v1, v2) have their own key names:

    ip_adapter_proj_model.proj.{weight,bias} [N·4096, 768]   ip_adapter_proj_model.norm.{weight,bias} [4096]
    double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj.{weight,bias} [3072, 4096]

``xlabs_sections`` renames them into the ``image_proj`` / ``ip_adapter.{i}.to_{k,v}_ip`` sections every
other adapter has, so detection, loading and the patch read one layout. v1 (4 tokens) and v2 (16) share
the file name; the token count is read from ``proj.weight``'s rows over the norm's width.

Torch-free (as layers.py), so the converter and the λ tables read it without torch.
"""
from __future__ import annotations

import re
from types import MappingProxyType

from .layers import AttnLayer

FLUX = "flux"
XLABS, INSTANTX = "xlabs", "instantx"   # the two published kinds (FAMILIES.md §3.1, §3.2)
FLUX_HEAD_DIM = 128             # every Flux.1 model (hidden 3072 = 24 heads x 128); RoPE needs it
DOUBLE, SINGLE = "double_block", "single_block"
# Flux.1 [dev] / [schnell], as ComfyUI's model detection describes them
FLUX1 = MappingProxyType(dict(depth=19, depth_single_blocks=38, hidden_size=3072, num_heads=24, context_in_dim=4096))

_XLABS_PROJ = "ip_adapter_proj_model."
_XLABS_LAYER = re.compile(r"^double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_(k|v)_proj\.(weight|bias)$")


def is_xlabs(flat_keys) -> bool:
    """Whether a flat key list is in XLabs' layout (its projection's prefix is unique to it)."""
    return any(k.startswith(_XLABS_PROJ) for k in flat_keys)


def xlabs_sections(flat: dict) -> tuple[dict[str, dict], list[str]]:
    """XLabs' flat keys -> ({"image_proj": ..., "ip_adapter": {"{i}.to_k_ip.weight": ...}}, other keys)."""
    sections: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
    rest = []
    for key, value in flat.items():
        m = _XLABS_LAYER.match(key)
        if key.startswith(_XLABS_PROJ):
            sections["image_proj"][key[len(_XLABS_PROJ):]] = value
        elif m:
            sections["ip_adapter"][f"{m[1]}.to_{m[2]}_ip.{m[3]}"] = value
        else:
            rest.append(key)
    return sections, rest


def flux_layers(double: int, single: int, hidden: int) -> tuple[AttnLayer, ...]:
    """The blocks an adapter acts in, in file order: double blocks 0..double-1, then single blocks
    (file indices continue after the double blocks, as InstantX numbers them)."""
    heads = hidden // FLUX_HEAD_DIM
    return (tuple(AttnLayer((DOUBLE, i), i, hidden, heads) for i in range(double))
            + tuple(AttnLayer((SINGLE, i), double + i, hidden, heads) for i in range(single)))


def flux_model_blocks(unet_config: dict) -> tuple[int, int, int] | None:
    """(double blocks, single blocks, hidden width) of a Flux.1 model from ComfyUI's unet_config, or
    None when the model is not Flux.1 (Flux 2, Chroma and other relatives patch differently)."""
    if unet_config.get("image_model") != FLUX or unet_config.get("global_modulation"):
        return None
    try:
        return int(unet_config["depth"]), int(unet_config["depth_single_blocks"]), int(unet_config["hidden_size"])
    except (KeyError, TypeError, ValueError):
        return None
