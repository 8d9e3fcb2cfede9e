"""The image prompt as it travels between nodes: tokens plus how strongly and where to use them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import torch

from ..errors import IPAdapterError
from ..files.config import AdapterConfig
from .blocks import DEFAULT_ROUTE, SCALING_MODES, V_ONLY, layer_lambdas
from .frames import FrameSpec
from .schedules import TimeSchedule


@dataclass(frozen=True)
class ImagePrompt:
    """Positive/negative image tokens of one adapter and their λ weighting.

    ``layer_weights`` maps ComfyUI attn2 keys to a multiplier of ``weight`` (the weight type's
    factor times the ``blocks`` choice's); ``None`` means every layer at 1. ``layer_routes`` maps
    the keys where the precise weight types route token sets differently (blocks.py).
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
    lora_strength: float = 1.0        # FaceID: strength of the adapter's UNet LoRA (apply/unet_lora.py)
    text_proj_scale: float = 1.0      # Kolors FaceID: multiplier of the UNet's text projection of the tokens

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
        table = layer_lambdas(self.config.family, weight_type, blocks, custom, style_boost, composition_boost,
                              self.config.layers, scaling)
        mults = {k: m for k, (m, _) in table.items()}
        routes = {k: r for k, (_, r) in table.items() if r != DEFAULT_ROUTE}
        return replace(self, weight=float(weight),
                       layer_weights=None if all(m == 1.0 for m in mults.values()) else MappingProxyType(mults),
                       layer_routes=MappingProxyType(routes) if routes else None,
                       start_at=float(start_at), end_at=float(end_at), weight_type=weight_type,
                       scaling=scaling)

    def scheduled(self, schedule: TimeSchedule | None) -> "ImagePrompt":
        """A copy whose λ follows ``schedule`` over the sampling range (None: constant λ)."""
        return replace(self, schedule=schedule)
