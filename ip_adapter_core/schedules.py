"""Weight types (λ per layer, the popular extension's names) and λ over sampling time.

Weight types. cubiq/ComfyUI_IPAdapter_plus, whose workflows artists share, weights the layers of
one SpatialTransformer block alike and numbers the blocks in the UNet's forward order (input blocks,
the middle block, output blocks): 16 on SD1.5, 11 on SDXL (its ``transformer_index``). Its types are
either a curve over that number, a factor for one kind of block, or a choice of the blocks that carry
style and composition (InstantStyle, arXiv 2404.02733). ``layer_table`` derives the multiplier (and
the token-set route, for the precise types) of every layer from ``layers.layers_for`` and the rules
below; nothing here lists numbers per layer.

One deliberate difference: that extension never patches the middle block (it registers its patch
under ("middle", 1), a key ComfyUI never calls), so in its hands "weak middle" changes nothing,
"strong middle" weakens every other block and leaves nothing strong, and the middle-block entries of
"strong style transfer" and "composition precise" never act. Here the middle block is patched like
every other layer, so those types do what their names say; every other layer gets exactly their
factor.

λ over time. ``TimeSchedule`` gives λ as a function of u, the position of a sampling step among the
steps of the run that lie in the prompt's start_at..end_at range (0 at the first, 1 at the last);
``run_state.RunState`` turns it into a per-step device table once per run.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from types import MappingProxyType

from .errors import IPAdapterError
from .input_bounds import MAX_ENTRY_CHARS, MAX_KEYFRAMES, check_count, read_number
from .layers import layers_for

WEIGHT_TYPES = ("linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
                "weak middle", "strong middle", "style transfer", "composition", "strong style transfer",
                "style and composition", "style transfer precise", "composition precise")

# The token sets a branch's K'/V' stack holds (attention.py stacks them in this order).
IMAGE_SET, NEGATIVE_SET, ZERO_SET = 0, 1, 2
# Which token set the positive and the negative rows of a batch attend to (*_SET above).
DEFAULT_ROUTE = (IMAGE_SET, NEGATIVE_SET)
# The precise types' move: the image goes to the negative rows, the positive rows get zero tokens
# (K' = V' = 0, so they receive nothing), so classifier-free guidance steers away from it there.
IMAGE_TO_NEGATIVE = (ZERO_SET, IMAGE_SET)

# The blocks the popular extension uses for style and for composition, with a factor inside the
# group (SD1.5's first composition block at a quarter). SDXL: InstantStyle's up_blocks.0.attentions.1
# and down_blocks.2.attentions.1. SD1.5: its own choice, the outer levels for style.
STYLE_BLOCKS = MappingProxyType({
    "sdxl": MappingProxyType({("output", 1): 1.0}),
    "sd15": MappingProxyType({**{("input", n): 1.0 for n in (1, 2, 4, 5)},
                              **{("output", n): 1.0 for n in range(5, 12)}}),
})
COMPOSITION_BLOCKS = MappingProxyType({
    "sdxl": MappingProxyType({("input", 8): 1.0}),
    "sd15": MappingProxyType({("input", 7): 0.25, ("input", 8): 1.0}),
})


@dataclass(frozen=True)
class Part:
    """What a group weight type does to one group of blocks: a factor, optionally times one of the
    boosts (a multiple of λ), and the token-set route."""

    factor: float
    boost: str = ""                       # "" | "style" | "composition"
    route: tuple[int, int] = DEFAULT_ROUTE


# name: (style blocks, composition blocks, all other blocks)
GROUP_TYPES = MappingProxyType({
    "style transfer": (Part(1), Part(0), Part(0)),
    "composition": (Part(0), Part(1), Part(0)),
    "strong style transfer": (Part(1), Part(0), Part(1)),
    "style and composition": (Part(1), Part(1, "composition"), Part(0)),
    "style transfer precise": (Part(1), Part(1, "style", IMAGE_TO_NEGATIVE), Part(0)),
    "composition precise": (Part(1, "composition", IMAGE_TO_NEGATIVE), Part(1),
                            Part(0.1, "composition", IMAGE_TO_NEGATIVE)),
})


def _curve(name: str, t: int, n: int) -> float:
    """The popular extension's curves over the block number t of n blocks."""
    if name == "ease in":
        return 0.05 + 0.95 * (1 - t / n)
    if name == "ease out":
        return 0.05 + 0.95 * (t / n)
    if name == "ease in-out":
        return 0.05 + 0.95 * (1 - abs(t - n / 2) / (n / 2))
    if name == "reverse in-out":
        return 0.05 + 0.95 * (abs(t - n / 2) / (n / 2))
    raise KeyError(name)


WEAK = 0.2
_WEAK_BLOCKS = {"weak input": ("input",), "weak output": ("output",), "weak middle": ("middle",),
                "strong middle": ("input", "output")}


def block_order(family: str) -> tuple[tuple[str, int], ...]:
    """The (block, number) of every attention block in the UNet's forward order."""
    rank = {"input": 0, "middle": 1, "output": 2}
    return tuple(sorted({l.key[:2] for l in layers_for(family)}, key=lambda b: (rank[b[0]], b[1])))


def layer_table(family: str, weight_type: str, style_boost: float = 1.0, composition_boost: float = 1.0):
    """{layer key: (multiplier of λ, route)} for every attn2 layer of ``family``."""
    if weight_type not in WEIGHT_TYPES:
        raise IPAdapterError(f"weight_type: expected one of {', '.join(WEIGHT_TYPES)}; got {weight_type!r}.")
    for name, value in (("style_boost", style_boost), ("composition_boost", composition_boost)):
        if not math.isfinite(value):
            raise IPAdapterError(f"{name}: must be a finite number; got {value}. 1.0 leaves λ as it is.")
    order = block_order(family)
    number = {b: t for t, b in enumerate(order)}
    boosts = {"": 1.0, "style": style_boost, "composition": composition_boost}
    table = {}
    for layer in layers_for(family):
        block = layer.key[:2]
        route = DEFAULT_ROUTE
        if weight_type == "linear":
            mult = 1.0
        elif weight_type in _WEAK_BLOCKS:
            mult = WEAK if block[0] in _WEAK_BLOCKS[weight_type] else 1.0
        elif weight_type in GROUP_TYPES:
            style, comp, other = GROUP_TYPES[weight_type]
            if block in STYLE_BLOCKS[family]:
                part, inner = style, STYLE_BLOCKS[family][block]
            elif block in COMPOSITION_BLOCKS[family]:
                part, inner = comp, COMPOSITION_BLOCKS[family][block]
            else:
                part, inner = other, 1.0
            mult, route = part.factor * inner * boosts[part.boost], part.route
        else:
            mult = _curve(weight_type, number[block], len(order))
        table[layer.key] = (mult, route)
    return table


# ---------------------------------------------------------------------------- λ over time

SCHEDULE_CURVES = ("constant", "linear", "ease in", "ease out", "ease in-out", "keyframes")


def _shape(curve: str, u: float) -> float:
    if curve == "linear":
        return u
    if curve == "ease in":        # slow start
        return u * u
    if curve == "ease out":       # slow end
        return 1 - (1 - u) ** 2
    if curve == "ease in-out":    # smoothstep
        return u * u * (3 - 2 * u)
    raise KeyError(curve)


@dataclass(frozen=True)
class TimeSchedule:
    """λ over the sampling range: a curve from the prompt's λ to ``end``, or keyframes (u, λ)."""

    curve: str
    end: float = 0.0
    keyframes: tuple[tuple[float, float], ...] = ()

    def value(self, u: float, start: float) -> float:
        """λ at position u in [0, 1]; ``start`` is the prompt's λ (curves start there)."""
        u = min(1.0, max(0.0, u))
        if self.curve != "keyframes":
            return start + (self.end - start) * _shape(self.curve, u)
        points = self.keyframes
        if u <= points[0][0]:
            return points[0][1]
        for (u0, v0), (u1, v1) in zip(points, points[1:]):
            if u <= u1:
                return v0 + (v1 - v0) * (u - u0) / (u1 - u0)
        return points[-1][1]

    def constant(self, start: float) -> float | None:
        """λ when it does not change over time (so the run takes the constant path), else None."""
        if self.curve == "keyframes":
            values = {v for _, v in self.keyframes}
            return self.keyframes[0][1] if len(values) == 1 else None
        return start if self.end == start else None


_KEYFRAME = re.compile(r"^\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*:\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*$", re.I)
KEYFRAMES_EXAMPLE = "'0.0:1.0, 0.5:0.6, 1.0:0.2' (position in the sampling range : λ)"


def parse_keyframes(text: str) -> tuple[tuple[float, float], ...]:
    """``"0.0:1.0, 0.5:0.6, 1.0:0.2"`` -> ((0.0, 1.0), (0.5, 0.6), (1.0, 0.2)), positions increasing.
    At most MAX_KEYFRAMES points; λ as input_bounds.read_number allows."""
    parts = [p for p in re.split(r"[,;\n]", text or "") if p.strip()]
    check_count(len(parts), MAX_KEYFRAMES, "keyframes", "points")
    points = []
    for part in parts:
        m = _KEYFRAME.match(part) if len(part) <= MAX_ENTRY_CHARS else None
        try:
            position = float(m.group(1)) if m else math.nan
        except ValueError:  # the pattern lets "1.2.3" through
            position = math.nan
        if not 0.0 <= position <= 1.0:  # NaN included
            raise IPAdapterError(f"keyframes: cannot read {part.strip()[:80]!r}; write position:λ pairs with the "
                                 "position in 0..1 of the sampling range, e.g. '0.0:1.0, 0.5:0.6, 1.0:0.2'.")
        points.append((position, read_number(m.group(2), f"keyframes (λ at {position:g})", KEYFRAMES_EXAMPLE)))
    if not points:
        raise IPAdapterError(f"keyframes: the curve is 'keyframes' but none were given; write e.g. "
                             f"{KEYFRAMES_EXAMPLE}.")
    points.sort()
    for (a, _), (b, _) in zip(points, points[1:]):
        if a == b:
            raise IPAdapterError(f"keyframes: position {a} is given twice; give each position once.")
    return tuple(points)


def make_schedule(curve: str, end: float = 0.0, keyframes: str = "") -> TimeSchedule | None:
    """The schedule a node asks for; None for 'constant'."""
    if curve not in SCHEDULE_CURVES:
        raise IPAdapterError(f"curve: expected one of {', '.join(SCHEDULE_CURVES)}; got {curve!r}.")
    if curve == "constant":
        return None
    if curve == "keyframes":
        return TimeSchedule(curve, 0.0, parse_keyframes(keyframes))
    if not math.isfinite(end):
        raise IPAdapterError(f"weight_end: must be a finite number; got {end}.")
    return TimeSchedule(curve, float(end))
