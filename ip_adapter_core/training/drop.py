"""The reference's drop rule (tutorial_train.py): one uniform draw u per sample; u < i drops the
image only, i <= u < i+t the caption only, i+t <= u < i+t+b both (5% each by default), so the
adapter also learns the unconditional predictions classifier-free guidance needs.

What "drop" means: the image features of a linear adapter become zeros (its negative is the
projection of zeros); those of plus / full-face adapters become the encoder's features of an
all-zero normalised image (their negative); the caption becomes the empty caption's cond."""
from __future__ import annotations

import torch

from ..errors import IPAdapterError

DEFAULT_RATES = (0.05, 0.05, 0.05)  # image only, text only, both


def check_rates(image: float, text: float, both: float) -> None:
    if min(image, text, both) < 0 or image + text + both > 1:
        raise IPAdapterError(f"drop rates: each must be >= 0 and together <= 1; got image {image}, text {text}, "
                             f"both {both}. The reference uses 0.05 each.")


def drops(u: torch.Tensor, image: float = 0.05, text: float = 0.05, both: float = 0.05):
    """(drop image, drop text) boolean masks for uniform draws ``u`` [n]."""
    check_rates(image, text, both)
    text_lo, both_lo, both_hi = image, image + text, image + text + both
    drop_image = (u < image) | ((u >= both_lo) & (u < both_hi))
    drop_text = (u >= text_lo) & (u < both_hi)
    return drop_image, drop_text


def draw(n: int, generator: torch.Generator, image=0.05, text=0.05, both=0.05):
    """One draw per sample from ``generator`` (CPU), then the masks."""
    return drops(torch.rand(n, generator=generator), image, text, both)


def apply_drop(values: torch.Tensor, dropped_value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rows of ``values`` [n, ...] where ``mask`` is set replaced by ``dropped_value`` (one row,
    broadcast): zero features, zero-image features, or the empty caption's cond."""
    m = mask.to(values.device).view(-1, *([1] * (values.ndim - 1)))
    return torch.where(m, dropped_value.to(values).expand_as(values), values)
