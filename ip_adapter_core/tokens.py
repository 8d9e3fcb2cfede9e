"""CLIP vision features -> positive and negative image tokens, as the reference makes them."""
from __future__ import annotations

import torch

from .config import PENULTIMATE, UNCOND_PROJECT_ZEROS, AdapterConfig
from .errors import IPAdapterError

COMBINE_MODES = ("concat", "average")


def check_features(config: AdapterConfig, features: torch.Tensor, what: str = "image_features") -> None:
    """Refuse features of the wrong encoder or kind, naming the encoder the adapter needs."""
    want_ndim = 3 if config.feature == PENULTIMATE else 2
    if features.ndim != want_ndim or features.shape[-1] != config.feature_dim or features.shape[0] == 0:
        raise IPAdapterError(
            f"{what}: the adapter ({config.name}) needs CLIP {config.feature} of width "
            f"{config.feature_dim} from {config.encoder}, shaped "
            f"{'[images, tokens, width]' if want_ndim == 3 else '[images, width]'}; got shape "
            f"{tuple(features.shape)}. Load the {config.encoder} CLIP vision model for this adapter.")


def combine(features: torch.Tensor, mode: str) -> torch.Tensor:
    """Several images -> one image prompt: ``concat`` keeps every image's tokens
    (N images give N×T tokens, as diffusers does with a list of images); ``average``
    projects the mean CLIP feature."""
    if mode == "average":
        return features.mean(dim=0, keepdim=True)
    if mode == "concat":
        return features
    raise IPAdapterError(f"combine: expected one of {COMBINE_MODES}, got {mode!r}")


def project(image_proj: torch.nn.Module, config: AdapterConfig, features: torch.Tensor,
            negative_features: torch.Tensor | None = None, zero_image_features: torch.Tensor | None = None,
            mode: str = "concat", dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (positive, negative) image tokens, each [1, tokens, cross_dim].

    Without ``negative_features`` the negative follows the reference: for linear
    adapters the projection of zero ``image_embeds``; for the hidden-state variants
    the projection of the encoder's output for an all-zero normalised image
    (``zero_image_features``), one per positive image.
    """
    check_features(config, features)
    n = features.shape[0]
    if negative_features is None:
        if config.uncond == UNCOND_PROJECT_ZEROS:
            negative_features = torch.zeros_like(features)
        elif zero_image_features is None:
            raise IPAdapterError(
                f"negative_features: the adapter ({config.name}) makes its negative tokens from the "
                "encoder's output for an all-zero image, and none was given. Encode the image with "
                "the IP-Adapter Encode Image node (it supplies it), or connect negative_features.")
        else:
            check_features(config, zero_image_features, "zero-image features")
            negative_features = zero_image_features[:1].expand(n, *zero_image_features.shape[1:])
    check_features(config, negative_features, "negative_features")
    if negative_features.shape[0] not in (1, n):
        raise IPAdapterError(f"negative_features: {negative_features.shape[0]} images for {n} positive "
                             "images; give one negative or one per image.")
    negative_features = negative_features.expand(n, *negative_features.shape[1:])

    both = torch.cat([combine(features, mode), combine(negative_features, mode)])
    weight = next(image_proj.parameters())
    # Released files are fp16. Layers that cast their weights to the input (comfy.ops
    # manual_cast, in the host) compute in float32 like the reference does after loading;
    # plain torch layers need the input in their own dtype.
    casts = any(getattr(m, "comfy_cast_weights", False) for m in image_proj.modules())
    with torch.no_grad():
        tokens = image_proj(both.to(device=weight.device, dtype=torch.float32 if casts else weight.dtype)).to(dtype)
    pos, neg = tokens.chunk(2)
    # concat: all images' tokens side by side in one prompt
    return pos.reshape(1, -1, pos.shape[-1]), neg.reshape(1, -1, neg.shape[-1])
