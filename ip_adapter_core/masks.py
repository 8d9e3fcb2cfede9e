"""Spatial masks for the image branch, sized from each attention call's own shape.

An attention call sees ``h*w`` query tokens; its latent ``H×W`` (ComfyUI's
``original_shape``, cropped for area conds) was halved k times with rounding up,
so ``(h, w)`` is found by trying the k that reproduces the token count.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import IPAdapterError


def tokens_hw(latent_hw: tuple[int, int], n_tokens: int) -> tuple[int, int]:
    """The (h, w) grid of an attention call with ``n_tokens`` queries on an ``H×W`` latent."""
    h, w = latent_hw
    for _ in range(8):
        if h * w == n_tokens:
            return h, w
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    raise ValueError(f"no downscale of a {latent_hw} latent has {n_tokens} tokens")


def check_mask(mask: torch.Tensor | None, what: str = "attn_mask") -> torch.Tensor | None:
    """Accept [H, W] or [M, H, W] masks with values in 0..1; refuse anything else by name."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3 or mask.shape[0] == 0 or min(mask.shape[1:]) < 1:
        raise IPAdapterError(f"{what}: expected a MASK shaped [H, W] or [batch, H, W]; got shape "
                             f"{tuple(mask.shape)}. Connect a mask from a mask node or LoadImageMask.")
    return mask.float()


def mask_for_call(mask: torch.Tensor, latent_hw: tuple[int, int], n_tokens: int, chunks: int,
                  dtype, device) -> torch.Tensor:
    """Resize ``mask`` [M, H, W] to one call's token grid -> [rows or 1, n_tokens, 1].

    M = 1 applies to every image; M = latent batch gives each image its own mask, for
    each of the ``chunks`` (cond/uncond) of the call's batch.
    """
    h, w = tokens_hw(latent_hw, n_tokens)
    small = F.interpolate(mask.unsqueeze(1).to(device=device, dtype=torch.float32), size=(h, w),
                          mode="bilinear", align_corners=False)
    small = small.reshape(mask.shape[0], h * w, 1).to(dtype)
    return small.repeat(chunks, 1, 1) if small.shape[0] > 1 else small
