"""The image prompt as it travels between nodes: tokens plus how strongly and where to use them."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import torch

from .config import AdapterConfig
from .errors import IPAdapterError
from .layers import BLOCK_PRESETS, layers_for

BLOCK_CHOICES = ("all", "style", "composition", "style and composition", "custom")


@dataclass(frozen=True)
class ImagePrompt:
    """Positive/negative image tokens of one adapter and their λ weighting.

    ``layer_weights`` maps ComfyUI attn2 keys to a multiplier of ``weight``; ``None``
    means every layer at 1. Immutable: nodes derive new prompts with ``replace``.
    """

    positive: torch.Tensor            # [1, tokens, cross_dim]
    negative: torch.Tensor            # [1, tokens, cross_dim]
    config: AdapterConfig
    adapter_path: str = ""
    weight: float = 1.0
    layer_weights: MappingProxyType | None = field(default=None)
    start_at: float = 0.0
    end_at: float = 1.0

    def layer_scale(self, key) -> float:
        """λ for one attn2 layer."""
        mult = 1.0 if self.layer_weights is None else self.layer_weights.get(key, 0.0)
        return self.weight * mult

    def weighted(self, weight: float, blocks: str = "all", custom: str = "",
                 start_at: float = 0.0, end_at: float = 1.0) -> "ImagePrompt":
        """A copy with new λ, block selection and sampling range."""
        if not math.isfinite(weight):
            raise IPAdapterError(f"weight: must be a finite number; got {weight}. Use a value such as 1.0 "
                                 "(0 turns the image prompt off).")
        if not 0.0 <= start_at <= end_at <= 1.0:
            raise IPAdapterError(f"start_at/end_at: need 0 <= start_at <= end_at <= 1; got {start_at}, {end_at}.")
        return replace(self, weight=float(weight), layer_weights=block_weights(self.config.family, blocks, custom),
                       start_at=float(start_at), end_at=float(end_at))


def block_weights(family: str, blocks: str, custom: str = "") -> MappingProxyType | None:
    """Per-layer multipliers for a ``blocks`` choice (None = all layers at 1)."""
    if blocks == "all":
        return None
    layers = layers_for(family)
    presets = BLOCK_PRESETS[family]
    if blocks in ("style", "composition", "style and composition"):
        wanted = set()
        for name in blocks.split(" and "):
            wanted.update(presets[name])
        return MappingProxyType({l.key: 1.0 for l in layers if l.key[:2] in wanted})
    if blocks == "custom":
        return MappingProxyType(parse_custom(family, custom))
    raise IPAdapterError(f"blocks: expected one of {BLOCK_CHOICES}, got {blocks!r}.")


_ENTRY = re.compile(r"^\s*(input|middle|output)\s+(\d+)(?:\s*:\s*(\d+))?\s*=\s*(-?[\d.]+)\s*$")


def parse_custom(family: str, text: str) -> dict:
    """Parse ``"input 8 = 1, output 1 = 0.5, output 1:3 = 0"``: block, number, optional
    transformer index, multiplier. Layers not named get 0. Later entries win."""
    layers = layers_for(family)
    out = {}
    for part in filter(str.strip, re.split(r"[,;\n]", text or "")):
        m = _ENTRY.match(part)
        if not m:
            raise IPAdapterError(f"custom_blocks: cannot read {part.strip()!r}; write entries like "
                                 "'input 8 = 1.0' or 'output 1:2 = 0.5', separated by commas.")
        block, number, t, value = m.group(1), int(m.group(2)), m.group(3), float(m.group(4))
        hit = [l.key for l in layers if l.key[:2] == (block, number) and (t is None or l.key[2] == int(t))]
        if not hit:
            valid = sorted({f"{b} {n}" for b, n, _ in (l.key for l in layers)})
            raise IPAdapterError(f"custom_blocks: {part.strip()!r} names no cross-attention layer of this "
                                 f"{family} model; valid blocks: {', '.join(valid)}.")
        out.update({k: value for k in hit})
    if not out:
        raise IPAdapterError("custom_blocks: blocks is 'custom' but no entries were given, e.g. 'input 8 = 1'.")
    return out
