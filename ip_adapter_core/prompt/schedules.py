"""λ over sampling time.

``TimeSchedule`` gives λ as a function of u, the position of a sampling step among the steps of the
run that lie in the prompt's start_at..end_at range (0 at the first, 1 at the last);
``run_state.RunState`` turns it into a per-step device table once per run. λ per layer is blocks.py.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import IPAdapterError
from ..input_bounds import MAX_ENTRY_CHARS, MAX_KEYFRAMES, check_count, read_number

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
