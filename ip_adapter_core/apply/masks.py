"""Spatial masks for the image branch, sized from each attention call's own shape.

An attention call sees ``h*w`` query tokens of a latent ``H×W`` (ComfyUI's
``original_shape``, cropped for area conds). How the UNet got from ``H×W`` to ``h×w``
is not fixed: its own downsamplers round up, inner-resolution patches such as Deep
Shrink (PatchModelAddDownscale) use ``round(h / f)``. So the grid is derived from what
is certain, the token count, and the latent's aspect ratio.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import IPAdapterError


def tokens_hw(latent_hw: tuple[int, int], n_tokens: int) -> tuple[int, int]:
    """The (h, w) grid of an attention call with ``n_tokens`` queries on an ``H×W`` latent:
    the factorisation h·w = n_tokens whose aspect ratio is closest to H/W."""
    H, W = latent_hw
    if n_tokens < 1 or H < 1 or W < 1:
        raise ValueError(f"no token grid for {n_tokens} tokens on a {latent_hw} latent")
    target = math.log(H / W)
    best = None
    for h in range(1, math.isqrt(n_tokens) + 1):
        if n_tokens % h:
            continue
        for hh in {h, n_tokens // h}:
            score = abs(math.log(hh / (n_tokens // hh)) - target)
            if best is None or score < best[0] - 1e-12:
                best = (score, hh)
    h = best[1]
    return h, n_tokens // h


def check_mask(mask: torch.Tensor | None, what: str = "attn_mask") -> torch.Tensor | None:
    """Accept [H, W] or [M, H, W] masks with values in 0..1; refuse anything else by name."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3 or mask.shape[0] == 0 or min(mask.shape[1:]) < 1:
        raise IPAdapterError(f"{what}: expected a MASK shaped [H, W] or [batch, H, W]; got shape "
                             f"{tuple(mask.shape)}. Connect a mask from a mask node or LoadImageMask.")
    if not torch.isfinite(mask).all():
        raise IPAdapterError(f"{what}: the mask holds NaN or infinite values; masks are 0..1. "
                             "Check the node that made it.")
    return mask.float()


def check_mask_batch(mask: torch.Tensor, latent_batch: int, what: str = "attn_mask") -> None:
    """A mask batch must be 1 (every image) or the latent batch (one per image)."""
    if mask.shape[0] not in (1, latent_batch):
        raise IPAdapterError(
            f"{what}: the mask batch is {mask.shape[0]} but the latent batch being sampled is {latent_batch}; "
            + ("a mask batch must be 1 here" if latent_batch == 1 else
               f"a mask batch must be 1 (the same mask for every image) or {latent_batch} (one mask per image)")
            + ". Change the mask batch or the latent batch size.")


def call_window(extra_options) -> tuple[int, ...] | None:
    """The latent frames an attention call covers when the sampler evaluates a sub-batch: ComfyUI's
    context windows (``context_window.index_list``) or AnimateDiff-Evolved's (``ad_params["sub_idxs"]``);
    None for a call of the whole batch."""
    index = getattr(extra_options.get("context_window"), "index_list", None)
    if index is None:
        ad = extra_options.get("ad_params")
        index = ad.get("sub_idxs") if isinstance(ad, dict) else None
    return tuple(int(i) for i in index) if index is not None else None


def chunk_frames(rows: int, latent_batch: int, window: tuple[int, ...] | None = None,
                 what: str = "attn_mask") -> list[int] | None:
    """The frames (latent batch indices) of a chunk of ``rows`` images: None when the chunk is the
    whole batch, else the frames of the context window (``call_window``) it covers."""
    if rows == latent_batch:
        return None
    if window is not None and len(window) == rows and max(window) < latent_batch:
        return list(window)
    raise IPAdapterError(
        f"{what}: a call covers {rows} of the {latent_batch} latent images and no context window says "
        f"which" + ("; give a mask of batch 1 to use the same mask for every image." if what == "attn_mask"
                    else "; sample the whole batch at once, or use ComfyUI's context-window nodes."))


def mask_rows(mask: torch.Tensor, rows: int, window: tuple[int, ...] | None = None) -> torch.Tensor:
    """The mask rows for one chunk of ``rows`` images: all of them, or the frames of a
    context window (ComfyUI's sub-batches) when the chunk is shorter than the latent batch."""
    if mask.shape[0] == 1 or rows == mask.shape[0]:
        return mask
    frames = chunk_frames(rows, mask.shape[0], window)  # a mask batch > 1 is the latent batch (prepare)
    return mask if frames is None else mask[frames]


def crop_to_area(mask: torch.Tensor, latent_hw: tuple[int, int], area) -> torch.Tensor:
    """The part of ``mask`` [M, h, w] (covering the whole latent) that an area cond's call
    covers; ``area`` = (height, width, y, x) in latent units, as the sampler crops x."""
    if area is None:
        return mask
    H, W = latent_hw
    ah, aw, y, x = area
    full = F.interpolate(mask.unsqueeze(1), size=(H, W), mode="bilinear", align_corners=False).squeeze(1)
    return full[:, y:y + ah, x:x + aw]


def resize_to_tokens(mask: torch.Tensor, call_hw: tuple[int, int], n_tokens: int, dtype, device) -> torch.Tensor:
    """[M, h, w] -> [M, n_tokens, 1] on the call's token grid."""
    h, w = tokens_hw(call_hw, n_tokens)
    small = F.interpolate(mask.unsqueeze(1).to(device=device, dtype=torch.float32), size=(h, w),
                          mode="bilinear", align_corners=False)
    return small.reshape(mask.shape[0], h * w, 1).to(dtype)

