"""Bounds on numbers that users type into text inputs (``custom_blocks``, ``keyframes``,
``image_weights``) or wire in as lists (frame weights), on how many entries those lists hold, and the
shape of IMAGE inputs.

Python reads a 400-digit number as ``inf``, and a finite 1e300 multiplier overflows the first
half-precision layer it reaches, so both are refused before they reach the model; a token is
measured before it is converted, and a list is counted before its entries are read. The caps
are listed here once and named in every message (docs/guarantees.md).
"""
from __future__ import annotations

import math

from .errors import IPAdapterError

MAX_TOKEN_CHARS = 64          # longer than any number a person types ("-0.000001", "1e-3")
MAX_ENTRY_CHARS = 128         # one entry of a list: "output 11:3 = -0.125", "0.5:0.6"
# A multiplier of λ or of CLIP features: the weight widgets span -2..5 and the boosts -5..5, so
# 1000 leaves room for any deliberate value while λ·1000 still fits float16 (max 65504).
MAX_MAGNITUDE = 1000.0
MAX_CUSTOM_BLOCK_ENTRIES = 1024   # SDXL has 70 cross-attention layers; entries may repeat
MAX_KEYFRAMES = 1024              # more than one per sampling step of any usual run
MAX_FRAMES = 100_000              # frames of a latent batch, as the Frames nodes' widgets allow


def read_number(token: str, what: str, example: str) -> float:
    """``token`` as a finite float of magnitude at most MAX_MAGNITUDE, or IPAdapterError naming
    ``what`` (the input) and showing ``example`` (how to write it)."""
    token = check_token(token.strip(), what, example)
    try:
        value = float(token)
    except ValueError:
        raise IPAdapterError(f"{what}: cannot read {token!r} as a number; write e.g. {example}.") from None
    check_magnitudes([value], what)
    return value


def check_token(token: str, what: str, example: str) -> str:
    """``token`` if it is short enough to be a number a person wrote (float() reads a 400-digit
    one as inf, and reads megabytes of digits before failing), else IPAdapterError."""
    if len(token) > MAX_TOKEN_CHARS:
        raise IPAdapterError(f"{what}: a number of {len(token)} characters ({token[:16]}...); numbers may have "
                             f"at most {MAX_TOKEN_CHARS}. Write e.g. {example}.")
    return token


def check_magnitudes(values, what: str) -> None:
    """Refuse NaN, inf and numbers beyond ±MAX_MAGNITUDE, naming ``what`` and the first offenders."""
    bad = [v for v in values if not (math.isfinite(v) and abs(v) <= MAX_MAGNITUDE)]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise IPAdapterError(f"{what}: every value must be a finite number between -{MAX_MAGNITUDE:g} and "
                             f"{MAX_MAGNITUDE:g}; found {shown}. Use values such as 1.0 or 0.5.")


def check_count(count: int, cap: int, what: str, unit: str) -> None:
    """Refuse a list of more than ``cap`` entries (``unit``: what one entry is) before reading it."""
    if count > cap:
        raise IPAdapterError(f"{what}: {count:,} {unit}; at most {cap:,} are allowed. Give fewer.")


def check_image_batch(image, what: str = "image"):
    """``image`` if it is a ComfyUI IMAGE batch [images, height, width, 3 or 4] with at least one image of at
    least one pixel, else IPAdapterError naming ``what``."""
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) != 4 or shape[0] == 0 or shape[-1] not in (3, 4) or 0 in shape[1:3]:
        raise IPAdapterError(f"{what}: expected an IMAGE batch [images, height, width, 3] with at least one "
                             f"image; got shape {shape}.")
    return image
