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


@dataclass(frozen=True)
class UNetShape:
    """The parts of a UNet config that decide where its cross-attention layers are."""

    channels: tuple[int, ...]          # per resolution level
    depth: tuple[int, ...]             # transformer blocks per attention, per level (0 = none)
    mid_depth: int
    res_blocks: int = 2                # per level on the way down; the way up has one more
    heads: int | None = None           # fixed head count (SD1.5) ...
    dim_head: int | None = None        # ... or fixed head size (SDXL)

    def heads_for(self, ch: int) -> int:
        return self.heads if self.heads is not None else ch // self.dim_head


def derive_layers(u: UNetShape) -> tuple[AttnLayer, ...]:
    """List the attn2 layers in diffusers' file order, with ComfyUI keys."""
    down, up, mid = [], [], []
    # ComfyUI numbers input blocks from 1 (block 0 is the stem conv); each level has
    # res_blocks blocks followed by a downsampler (not on the last level).
    number = 1
    for level, (ch, depth) in enumerate(zip(u.channels, u.depth)):
        for _ in range(u.res_blocks):
            down += [(("input", number, t), ch) for t in range(depth)]
            number += 1
        if level != len(u.channels) - 1:
            number += 1
    number = 0
    for ch, depth in zip(reversed(u.channels), reversed(u.depth)):
        for _ in range(u.res_blocks + 1):
            up += [(("output", number, t), ch) for t in range(depth)]
            number += 1
    mid = [(("middle", 0, t), u.channels[-1]) for t in range(u.mid_depth)]
    ordered = down + up + mid
    return tuple(AttnLayer(key, 2 * k + 1, ch, u.heads_for(ch)) for k, (key, ch) in enumerate(ordered))


SD15_UNET = UNetShape(channels=(320, 640, 1280, 1280), depth=(1, 1, 1, 0), mid_depth=1, heads=8)
SDXL_UNET = UNetShape(channels=(320, 640, 1280), depth=(0, 2, 10), mid_depth=10, dim_head=64)

LAYERS: MappingProxyType = MappingProxyType({
    "sd15": derive_layers(SD15_UNET),
    "sdxl": derive_layers(SDXL_UNET),
})

# Named groups of ComfyUI blocks. InstantStyle (arXiv 2404.02733) found that for SDXL
# up_blocks.0.attentions.1 carries style and down_blocks.2.attentions.1 layout.
BLOCK_PRESETS: MappingProxyType = MappingProxyType({
    "sdxl": MappingProxyType({
        "style": (("output", 1),),
        "composition": (("input", 8),),
    }),
    # SD1.5 has one transformer per attention; the analogous positions are the first
    # attention of the lowest-resolution up level and the last of the deepest down level.
    "sd15": MappingProxyType({
        "style": (("output", 4),),
        "composition": (("input", 8),),
    }),
})


def layers_for(family: str) -> tuple[AttnLayer, ...]:
    """The attn2 layers of a base-model family ('sd15' or 'sdxl')."""
    try:
        return LAYERS[family]
    except KeyError:
        raise ValueError(f"unknown base-model family {family!r}; expected one of {sorted(LAYERS)}") from None
