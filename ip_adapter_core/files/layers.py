"""Where each IP-Adapter layer goes in ComfyUI's UNet.

An IP-Adapter file numbers its per-layer weights ``ip_adapter.{i}.to_k_ip`` by the
position of the layer in diffusers' ``unet.attn_processors``: all down blocks, then
all up blocks, then the mid block *last*, attn1 before attn2 inside each
transformer block, so the cross-attention (attn2) layers have the odd indices.
ComfyUI addresses the same layers as ``(block_name, number, transformer_index)``.
The tables below are derived from the UNet architecture (channels and transformer
depth per level) rather than written out, and tests/test_layers.py checks them
against the UNet that ComfyUI itself builds.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class AttnLayer:
    """One cross-attention layer: its ComfyUI key, its file index and its width."""

    key: tuple[str, int, int]  # (block_name, number, transformer_index) as ComfyUI calls it
    file_index: int            # i in "ip_adapter.{i}.to_k_ip.weight"
    hidden: int                # channels = heads * dim_head
    heads: int

    @property
    def dim_head(self) -> int:
        return self.hidden // self.heads

    @property
    def block_prefix(self) -> str:
        """The ComfyUI state-dict prefix of the transformer block holding this layer (its attn1 and attn2):
        the SpatialTransformer is module 1 of its input / output / middle block, after the ResBlock."""
        block, number, t = self.key
        where = {"input": f"input_blocks.{number}", "output": f"output_blocks.{number}", "middle": "middle_block"}
        return f"diffusion_model.{where[block]}.1.transformer_blocks.{t}"


def _per_level(value, levels: int) -> list[int]:
    return [value] * levels if isinstance(value, int) else list(value)


def derive_layers(unet_config: dict) -> tuple[AttnLayer, ...]:
    """List the attn2 layers of a UNet in diffusers' file order, with ComfyUI keys.

    ``unet_config`` is ComfyUI's (``model.model_config.unet_config``): ``transformer_depth``
    per input block, ``transformer_depth_output`` per output block (consumed from its end,
    deepest level first, as ComfyUI's UNetModel does), ``transformer_depth_middle``. So the
    same function gives the standard tables and those of any other UNet of this kind
    (distilled SDXL models, tiny test UNets).
    """
    ch0, mult = unet_config["model_channels"], list(unet_config["channel_mult"])
    res = _per_level(unet_config["num_res_blocks"], len(mult))
    depth_in = list(unet_config["transformer_depth"])
    depth_out = list(unet_config["transformer_depth_output"])
    attn_blocks = unet_config.get("num_attention_blocks")
    heads, head_ch = unet_config.get("num_heads", -1), unet_config.get("num_head_channels", -1)

    def layer(key, ch):
        return key, ch, (heads if head_ch == -1 else ch // head_ch)

    down, up = [], []
    # ComfyUI numbers input blocks from 1 (block 0 is the stem conv); each level has
    # res blocks followed by a downsampler (not on the last level).
    number = 1
    for level, m in enumerate(mult):
        for nr in range(res[level]):
            depth = depth_in.pop(0)
            if attn_blocks is None or nr < attn_blocks[level]:
                down += [layer(("input", number, t), ch0 * m) for t in range(depth)]
            number += 1
        if level != len(mult) - 1:
            number += 1
    number = 0
    for level in reversed(range(len(mult))):
        for i in range(res[level] + 1):
            depth = depth_out.pop()
            if attn_blocks is None or i < attn_blocks[level]:
                up += [layer(("output", number, t), ch0 * mult[level]) for t in range(depth)]
            number += 1
    mid_depth = max(0, unet_config.get("transformer_depth_middle") or 0)
    mid = [layer(("middle", 0, t), ch0 * mult[-1]) for t in range(mid_depth)]
    return tuple(AttnLayer(key, 2 * k + 1, ch, h) for k, (key, ch, h) in enumerate(down + up + mid))


# The released adapters' UNets, as ComfyUI's model detection describes them.
SD15_UNET = MappingProxyType(dict(
    model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2, num_heads=8, num_head_channels=-1,
    transformer_depth=(1, 1, 1, 1, 1, 1, 0, 0), transformer_depth_output=(1,) * 9 + (0,) * 3,
    transformer_depth_middle=1))
SDXL_UNET = MappingProxyType(dict(
    model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=2, num_heads=-1, num_head_channels=64,
    transformer_depth=(0, 0, 2, 2, 10, 10), transformer_depth_output=(0, 0, 0, 2, 2, 2, 10, 10, 10),
    transformer_depth_middle=10))

STANDARD_UNETS = MappingProxyType({"sd15": SD15_UNET, "sdxl": SDXL_UNET})


@functools.lru_cache(maxsize=None)
def layers_of_width(family: str, model_channels: int) -> tuple[AttnLayer, ...]:
    """The attn2 layers of a UNet with the structure of ``family`` and ``model_channels`` base
    channels: the released UNets at 320, and narrower ones of the same structure (test and
    training UNets) at their own width, so their adapters need no special case."""
    try:
        cfg = STANDARD_UNETS[family]
    except KeyError:
        raise ValueError(f"unknown base-model family {family!r}; expected one of {sorted(STANDARD_UNETS)}") from None
    return derive_layers({**cfg, "model_channels": int(model_channels)})


def base_channels(family: str, first_hidden: int) -> int:
    """model_channels of a ``family`` UNet whose first attn2 layer (file index 1) is ``first_hidden``
    wide: SD1.5's first attention level has the base width, SDXL's twice it."""
    std = layers_of_width(family, 320)[0].hidden
    return first_hidden * 320 // std


LAYERS: MappingProxyType = MappingProxyType({
    "sd15": layers_of_width("sd15", 320),
    "sdxl": layers_of_width("sdxl", 320),
})

def layers_for(family: str) -> tuple[AttnLayer, ...]:
    """The attn2 layers of a base-model family ('sd15' or 'sdxl')."""
    try:
        return LAYERS[family]
    except KeyError:
        raise ValueError(f"unknown base-model family {family!r}; expected one of {sorted(LAYERS)}") from None


def layout_difference(unet_config: dict, family_or_layers) -> str | None:
    """Why a UNet's cross-attention layers differ from those an adapter is made for (a family's
    standard table, or the adapter's own layers), as a short description; None when every key
    and width matches."""
    try:
        have = {l.key: l.hidden for l in derive_layers(unet_config)}
    except (KeyError, TypeError, IndexError) as e:  # a config of another kind of UNet
        return f"its configuration does not describe a UNet of this kind ({type(e).__name__}: {e})"
    wanted = layers_for(family_or_layers) if isinstance(family_or_layers, str) else family_or_layers
    want = {l.key: l.hidden for l in wanted}
    if have == want:
        return None
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    other = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    parts = [f"{len(have)} cross-attention layers where the adapter has {len(want)}"]
    if missing:
        parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if extra:
        parts.append(f"extra {extra[:3]}{' ...' if len(extra) > 3 else ''}")
    if other:
        k = other[0]
        parts.append(f"{len(other)} of another width, e.g. {k}: {have[k]} channels, adapter {want[k]}")
    return "; ".join(parts)
