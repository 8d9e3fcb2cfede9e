"""CLIP vision features -> positive and negative image tokens, as the reference makes them."""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

from ..errors import IPAdapterError
from ..files.config import PENULTIMATE, UNCOND_ENCODE_BLACK_IMAGE, UNCOND_PROJECT_ZEROS, AdapterConfig
from ..input_bounds import check_magnitudes, check_token
from ..networks.ops import compute_dtype

# The popular extension's names and order (cubiq/ComfyUI_IPAdapter_plus), so workflows translate.
COMBINE_MODES = ("concat", "add", "subtract", "average", "norm average", "max", "min")
# Projection only: every image its own token set, for frame i of a latent batch (frames.py).
ONE_PER_FRAME = "one per frame"
PROJECT_MODES = COMBINE_MODES + (ONE_PER_FRAME,)


def check_features(config: AdapterConfig, features: torch.Tensor, what: str = "image_features") -> None:
    """Refuse features of the wrong encoder or kind, naming the encoder the adapter needs, and
    features holding NaN or inf, which would turn every token and then the picture into NaN."""
    want_ndim = 3 if config.feature == PENULTIMATE else 2
    if features.ndim != want_ndim or features.shape[-1] != config.feature_dim or features.shape[0] == 0:
        raise IPAdapterError(
            f"{what}: the adapter ({config.name}) needs CLIP {config.feature} of width "
            f"{config.feature_dim} from {config.encoder}, shaped "
            f"{'[images, tokens, width]' if want_ndim == 3 else '[images, width]'}; got shape "
            f"{tuple(features.shape)}. Load the {config.encoder} CLIP vision model for this adapter.")
    finite = torch.isfinite(features)
    if not bool(finite.all()):  # one host read per projection, not per step
        bad = int(finite.numel() - finite.sum())
        images = sorted({int(i) for i in (~finite).reshape(features.shape[0], -1).any(1).nonzero().flatten()})
        raise IPAdapterError(
            f"{what}: the {config.encoder} CLIP features hold {bad} NaN or infinite value(s) (image(s) "
            f"{images[:8]} of the batch): the encoder overflowed, as a half-precision encoder can. Start ComfyUI "
            "with --fp32-text-enc (the CLIP vision model then runs in float32), or try another reference image.")


def combine(features: torch.Tensor, mode: str, weights: Sequence[float] | None = None,
            what: str = "image_features") -> torch.Tensor:
    """Several images [n, ...] -> the features to project: ``concat`` keeps every image
    (N images give N×T tokens, as diffusers does with a list of images); the other modes
    reduce over the images to one [1, ...] feature. ``weights`` (one per image) multiply
    each image's features first, as the popular extension's encoder weight does."""
    if mode not in COMBINE_MODES:
        raise IPAdapterError(f"combine: expected one of {COMBINE_MODES}, got {mode!r}.")
    n = features.shape[0]
    if weights is not None:
        check_weights(weights, n, what)
        if any(w != 1.0 for w in weights):
            shape = (n,) + (1,) * (features.ndim - 1)
            features = features * torch.tensor(weights, dtype=features.dtype, device=features.device).view(shape)
    if mode == "concat":
        return features
    if mode == "subtract" and n < 2:
        raise IPAdapterError(f"combine: 'subtract' takes the first image minus the mean of the others, so it "
                             f"needs 2 or more images; {what} has {n}. Give more images or choose another mode.")
    if n == 1:
        # As the popular extension: one image is projected as it is. Only 'norm average' would
        # change it otherwise (f / |f| over one image is its elementwise sign).
        return features
    return _REDUCE[mode](features)


def _norm_average(f: torch.Tensor) -> torch.Tensor:
    # The popular extension's formula, kept exactly: the norm is taken over the IMAGE dimension,
    # elementwise (each feature entry divided by its norm across the images), not per image.
    # The clamp only turns 0/0 (an entry zero in every image) into 0 instead of NaN tokens.
    norm = torch.norm(f, dim=0, keepdim=True).clamp_min(torch.finfo(f.dtype).tiny)
    return (f / norm).mean(dim=0, keepdim=True)


_REDUCE = {
    "add": lambda f: f.sum(dim=0, keepdim=True),
    "subtract": lambda f: f[:1] - f[1:].mean(dim=0, keepdim=True),
    "average": lambda f: f.mean(dim=0, keepdim=True),
    "norm average": _norm_average,
    "max": lambda f: f.amax(dim=0, keepdim=True),
    "min": lambda f: f.amin(dim=0, keepdim=True),
}


def check_weights(weights: Sequence[float], n: int, what: str = "image_features") -> None:
    """Refuse per-image weights that are not ``n`` finite numbers within ±MAX_MAGNITUDE."""
    found = ", ".join(f"{w:g}" if isinstance(w, (int, float)) else str(w)[:16] if isinstance(w, str) else repr(w)
                      for w in weights[:8]) or "none"
    found += ", ..." if len(weights) > 8 else ""
    if len(weights) != n:
        raise IPAdapterError(f"image_weights: expected {n} weight(s), one per image of {what} in order; found "
                             f"{len(weights)} ({found}). Give {n} comma-separated numbers, or leave it empty "
                             "to weigh every image 1.")
    if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
        raise IPAdapterError(f"image_weights: every weight must be a finite number; found {found}. Use numbers "
                             "such as 1.0 or 0.5.")
    check_magnitudes(weights, "image_weights")


def parse_image_weights(text: str, n: int) -> list[float]:
    """``"1.0, 0.5, 0.8"`` -> one float per image (commas, semicolons or spaces between them);
    empty text weighs every image 1. More than ``n`` entries are refused before any is read."""
    parts = [p for p in re.split(r"[,;\s]+", text or "") if p]
    if not parts:
        return [1.0] * n
    if len(parts) > n:
        check_weights(parts, n)
    weights = []
    for p in parts:
        check_token(p, "image_weights", "'1.0, 0.5', one number per image")
        try:
            weights.append(float(p))
        except ValueError:
            raise IPAdapterError(f"image_weights: cannot read {p!r} as a number; write one number per image "
                                 "separated by commas, e.g. '1.0, 0.5'.") from None
    check_weights(weights, n)
    return weights


def project(image_proj: torch.nn.Module, config: AdapterConfig, features: torch.Tensor,
            negative_features: torch.Tensor | None = None, zero_image_features: torch.Tensor | None = None,
            mode: str = "concat", dtype=torch.float32,
            weights: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (positive, negative) image tokens, each [1, tokens, cross_dim] ([N, tokens, cross_dim]
    in ONE_PER_FRAME mode: one token set per image, each with its own negative).

    Without ``negative_features`` the negative follows the reference: for linear
    adapters the projection of zero ``image_embeds``; for the hidden-state variants
    the projection of the encoder's output for an all-zero normalised image
    (``zero_image_features``), one per positive image.

    ``mode`` and ``weights`` (one per positive image) combine the positive images (see
    ``combine``); the negative is never weighted. In concat the negatives stay one per
    image; in every other mode they are averaged. That equals the popular extension
    when all negatives are the same (the default zeros / zero image); for a batch of
    distinct negative images it silently takes the first one, we take their mean.
    """
    check_features(config, features)
    n = features.shape[0]
    if negative_features is None:
        if config.uncond == UNCOND_PROJECT_ZEROS:
            negative_features = torch.zeros_like(features)
        elif zero_image_features is None:
            picture = "a black image" if config.uncond == UNCOND_ENCODE_BLACK_IMAGE else "an all-zero image"
            raise IPAdapterError(
                f"negative_features: the adapter ({config.name}) makes its negative tokens from the "
                f"encoder's output for {picture}, and none was given. Encode the image with the IP-Adapter "
                "Encode Image node (it supplies it), connect clip_vision, or connect negative_features.")
        else:
            check_features(config, zero_image_features, "zero-image features")
            negative_features = zero_image_features[:1].expand(n, *zero_image_features.shape[1:])
    check_features(config, negative_features, "negative_features")
    if negative_features.shape[0] not in (1, n):
        raise IPAdapterError(f"negative_features: {negative_features.shape[0]} images for {n} positive "
                             "images; give one negative or one per image.")
    negative_features = negative_features.expand(n, *negative_features.shape[1:])

    per_frame = mode == ONE_PER_FRAME
    if per_frame:
        mode = "concat"
    neg_mode = "concat" if mode == "concat" else "average"
    both = torch.cat([combine(features, mode, weights), combine(negative_features, neg_mode, what="negative_features")])
    if config.timed:
        # SD3.5: the tokens depend on the timestep, so the prompt carries the features and the patch projects them
        # once per model evaluation (apply/sd3_patch.py). Several images concatenated are read by the Resampler
        # together (its 64 queries attend over every image's positions).
        pos, neg = both.to(dtype).chunk(2)
        if per_frame:
            return pos, neg
        return pos.reshape(1, -1, pos.shape[-1]), neg.reshape(1, -1, neg.shape[-1])
    weight = next(image_proj.parameters())
    with torch.no_grad():
        tokens = image_proj(both.to(device=weight.device, dtype=compute_dtype(image_proj))).to(dtype)
    pos, neg = tokens.chunk(2)
    if per_frame:
        return pos, neg
    # concat: all images' tokens side by side in one prompt
    return pos.reshape(1, -1, pos.shape[-1]), neg.reshape(1, -1, neg.shape[-1])
