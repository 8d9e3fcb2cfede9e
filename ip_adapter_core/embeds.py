"""The image prompt as it travels between nodes: tokens plus how strongly and where to use them."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import torch

from .attention import SCALING_MODES, V_ONLY
from .config import AdapterConfig
from .errors import IPAdapterError
from .frames import FrameSpec
from .input_bounds import MAX_CUSTOM_BLOCK_ENTRIES, MAX_ENTRY_CHARS, check_count, read_number
from .layers import BLOCK_PRESETS, layers_for
from .schedules import DEFAULT_ROUTE, TimeSchedule, layer_table

BLOCK_CHOICES = ("all", "style", "composition", "style and composition", "custom")


@dataclass(frozen=True)
class ImagePrompt:
    """Positive/negative image tokens of one adapter and their λ weighting.

    ``layer_weights`` maps ComfyUI attn2 keys to a multiplier of ``weight`` (the weight type's
    factor times the ``blocks`` choice's); ``None`` means every layer at 1. ``layer_routes`` maps
    the keys where the precise weight types route token sets differently (schedules.py).
    ``schedule`` makes λ change over the sampling range. A prompt of N token sets (projected one
    per frame) gives frame f of a latent batch the image ``frames`` assigns it (frame i = image i
    by default) and a λ multiplier per frame. Immutable: nodes derive new prompts with ``replace``.
    """

    positive: torch.Tensor            # [1, tokens, cross_dim]; [N, ...] one per frame (frames.py)
    negative: torch.Tensor            # the same shape
    config: AdapterConfig
    adapter_path: str = ""
    weight: float = 1.0
    layer_weights: MappingProxyType | None = field(default=None)
    start_at: float = 0.0
    end_at: float = 1.0
    weight_type: str = "linear"
    layer_routes: MappingProxyType | None = field(default=None)
    scaling: str = V_ONLY
    schedule: TimeSchedule | None = None
    frames: FrameSpec | None = None   # how frames share images and λ (None: frame i = image i)

    def animated(self) -> bool:
        """Whether the rows of a batch get their own token sets or λ (one per frame prompts)."""
        return self.frames is not None or self.positive.shape[0] > 1

    def frame_spec(self) -> FrameSpec:
        return self.frames if self.frames is not None else FrameSpec()

    def time_varying(self) -> bool:
        """Whether λ changes over the sampling range (then the run looks it up per step)."""
        return self.schedule is not None and self.schedule.constant(self.weight) is None

    def constant_weight(self) -> float:
        """λ when it does not change over time."""
        return self.weight if self.schedule is None else self.schedule.constant(self.weight)

    def layer_multiplier(self, key) -> float:
        return 1.0 if self.layer_weights is None else self.layer_weights.get(key, 0.0)

    def layer_scale(self, key) -> float:
        """λ for one attn2 layer; for a time-varying λ only the layer's multiplier (the run
        supplies λ per step)."""
        mult = self.layer_multiplier(key)
        return mult if self.time_varying() else self.constant_weight() * mult

    def layer_route(self, key) -> tuple[int, int]:
        """The token set of the (positive, negative) rows at one layer."""
        return DEFAULT_ROUTE if self.layer_routes is None else self.layer_routes.get(key, DEFAULT_ROUTE)

    def weighted(self, weight: float, blocks: str = "all", custom: str = "",
                 start_at: float = 0.0, end_at: float = 1.0, weight_type: str = "linear",
                 scaling: str = V_ONLY, style_boost: float = 1.0, composition_boost: float = 1.0) -> "ImagePrompt":
        """A copy with new λ, weight type, block selection, embeds scaling and sampling range (a λ
        schedule set before is kept). The weight type's and the blocks' multipliers multiply."""
        if not math.isfinite(weight):
            raise IPAdapterError(f"weight: must be a finite number; got {weight}. Use a value such as 1.0 "
                                 "(0 turns the image prompt off).")
        if not 0.0 <= start_at <= end_at <= 1.0:
            raise IPAdapterError(f"start_at/end_at: need 0 <= start_at <= end_at <= 1; got {start_at}, {end_at}.")
        if scaling not in SCALING_MODES:
            raise IPAdapterError(f"embeds_scaling: expected one of {', '.join(SCALING_MODES)}; got {scaling!r}.")
        family = self.config.family
        table = layer_table(family, weight_type, style_boost, composition_boost)
        blocks_mult = block_weights(family, blocks, custom)
        mults = {k: m * (1.0 if blocks_mult is None else blocks_mult.get(k, 0.0)) for k, (m, _) in table.items()}
        routes = {k: r for k, (_, r) in table.items() if r != DEFAULT_ROUTE}
        return replace(self, weight=float(weight),
                       layer_weights=None if all(m == 1.0 for m in mults.values()) else MappingProxyType(mults),
                       layer_routes=MappingProxyType(routes) if routes else None,
                       start_at=float(start_at), end_at=float(end_at), weight_type=weight_type,
                       scaling=scaling)

    def scheduled(self, schedule: TimeSchedule | None) -> "ImagePrompt":
        """A copy whose λ follows ``schedule`` over the sampling range (None: constant λ)."""
        return replace(self, schedule=schedule)


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
CUSTOM_EXAMPLE = "'input 8 = 1.0' or 'output 1:2 = 0.5', separated by commas"


def parse_custom(family: str, text: str) -> dict:
    """Parse ``"input 8 = 1, output 1 = 0.5, output 1:3 = 0"``: block, number, optional
    transformer index, multiplier. Layers not named get 0. Later entries win. At most
    MAX_CUSTOM_BLOCK_ENTRIES entries; multipliers as input_bounds.read_number allows."""
    layers = layers_for(family)
    parts = [p for p in re.split(r"[,;\n]", text or "") if p.strip()]
    check_count(len(parts), MAX_CUSTOM_BLOCK_ENTRIES, "custom_blocks", "entries")
    out = {}
    for part in parts:
        m = _ENTRY.match(part) if len(part) <= MAX_ENTRY_CHARS else None
        if not m:
            raise IPAdapterError(f"custom_blocks: cannot read {part.strip()[:80]!r}; write entries like "
                                 f"{CUSTOM_EXAMPLE}.")
        block, number, t = m.group(1), int(m.group(2)), m.group(3)
        value = read_number(m.group(4), f"custom_blocks ({block} {number})", CUSTOM_EXAMPLE)
        hit = [l.key for l in layers if l.key[:2] == (block, number) and (t is None or l.key[2] == int(t))]
        if not hit:
            valid = sorted({f"{b} {n}" for b, n, _ in (l.key for l in layers)})
            raise IPAdapterError(f"custom_blocks: {part.strip()!r} names no cross-attention layer of this "
                                 f"{family} model; valid blocks: {', '.join(valid)}.")
        out.update({k: value for k in hit})
    if not out:
        raise IPAdapterError("custom_blocks: blocks is 'custom' but no entries were given, e.g. 'input 8 = 1'.")
    return out
