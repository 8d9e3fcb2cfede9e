"""Whole UNet steps with and without the adapter, for the record.

Steps go through BaseModel.apply_model with transformer_options as the sampler builds
them. One round runs the plain model and each patched model once, in rotating order;
the per-round ratio patched/plain cancels slow spells shared by both. On a shared CPU
the spread is larger than the effect at 4 and 16 tokens: that is why layers.py
measures the parts.
"""
from __future__ import annotations

import logging
import statistics

from .common import interleave, median, spread
from .models import unet_step

log = logging.getLogger("bench.step")


def whole_steps(plain_model, patched: dict, inp, rounds: int, device) -> dict:
    """``patched``: name -> patched model. Returns plain step times and, per name, the
    median and spread of the per-round ratios."""
    fns = {"plain": lambda: unet_step(plain_model, inp)}
    fns.update({name: (lambda m=m: unet_step(m, inp)) for name, m in patched.items()})
    res = interleave(fns, "plain", rounds, device)
    plain = res.times["plain"]
    out = {"plain_s": plain, "plain_median_s": median(plain), "plain_spread": spread(plain), "ratios": {}}
    for name in patched:
        ratios = [t / p for t, p in zip(res.times[name], plain)]
        out["ratios"][name] = {
            "median": median(ratios),
            "min": min(ratios), "max": max(ratios),
            "iqr_half": (statistics.quantiles(ratios, n=4)[2] - statistics.quantiles(ratios, n=4)[0]) / 2
            if len(ratios) >= 4 else (max(ratios) - min(ratios)) / 2,
            "n": len(ratios),
        }
        log.info("whole step %s: ratio %.4f (n=%d)", name, out["ratios"][name]["median"], len(ratios))
    return out
