"""Combining inputs of several Combine nodes: CLIP vision outputs before projection, or image
prompts (projected tokens) after it. The maths per mode lives in tokens.combine."""
from __future__ import annotations

import logging
import math
from dataclasses import MISSING, fields, replace

import torch

from ..errors import IPAdapterError, IPAdapterMismatchError
from ..files.config import CLIP_VISION_FEATURES
from .embeds import ImagePrompt
from .tokens import combine
from .vision import ZERO_IMAGE_ATTR

log = logging.getLogger("ipadapter")

# ImagePrompt fields that are its tokens and provenance; every other field is weighting.
_TOKEN_FIELDS = ("positive", "negative", "config", "adapter_path")


def _check_weight(name: str, weight: float) -> float:
    if not math.isfinite(weight):
        raise IPAdapterError(f"{name}: must be a finite number; got {weight}. Use a value such as 1.0.")
    return float(weight)


def combine_features(inputs: list[tuple[str, object, float]], method: str):
    """[(input name, CLIP_VISION_OUTPUT, weight), ...] -> one CLIP_VISION_OUTPUT whose feature
    tensors are the weighted combination over all images of all inputs (``concat``: the
    weighted batches one after the other). Fields missing from any input are left out."""
    from comfy.clip_vision import Output

    weights = [_check_weight(name.replace("features", "weight"), w) for name, _, w in inputs]
    present = [f for f in CLIP_VISION_FEATURES if all(_tensor(out, f) is not None for _, out, _ in inputs)]
    if not present:
        raise IPAdapterError(f"{inputs[0][0]}: the inputs share none of {CLIP_VISION_FEATURES}; connect outputs of a "
                             "CLIP vision encoder (IP-Adapter Encode Image or CLIP Vision Encode).")
    out = Output()
    for f in present:
        tensors = [_tensor(o, f) for _, o, _ in inputs]
        _check_widths(f, [name for name, _, _ in inputs], tensors)
        per_image = [w for w, t in zip(weights, tensors) for _ in range(t.shape[0])]
        first = tensors[0]
        # float32 for the maths (fp16 norms overflow), then the encoder's dtype again, so other
        # consumers of CLIP_VISION_OUTPUT (unCLIP, style models) get what an encoder gives them.
        stacked = torch.cat([t.to(device=first.device, dtype=torch.float32) for t in tensors])
        out[f] = combine(stacked, method, per_image, what="the connected features").to(first.dtype)
    zero = next((z for _, o, _ in inputs if (z := getattr(o, ZERO_IMAGE_ATTR, None)) is not None), None)
    if zero is not None:
        out[ZERO_IMAGE_ATTR] = zero
    return out


def _tensor(output, name):
    t = getattr(output, name, None)
    return t if isinstance(t, torch.Tensor) else None


def _check_widths(field: str, names: list[str], tensors: list[torch.Tensor]) -> None:
    want = tuple(tensors[0].shape[1:])
    for name, t in zip(names[1:], tensors[1:]):
        if tuple(t.shape[1:]) != want:
            raise IPAdapterMismatchError(
                f"{name}: its {field} are shaped {tuple(t.shape)}, {names[0]}'s {tuple(tensors[0].shape)} "
                "(per image: " + f"{tuple(t.shape[1:])} vs {want}); the images were encoded by different "
                "CLIP vision models. Encode every image with the same encoder, the one the adapter needs.")


def combine_prompts(inputs: list[tuple[str, ImagePrompt, float]], method: str) -> ImagePrompt:
    """[(input name, ImagePrompt, weight), ...] of one kind of adapter -> one ImagePrompt.

    ``concat`` puts the prompts' tokens side by side (token dim); the other modes combine
    the token tensors elementwise over the prompts, which must have the same token count.
    Weights multiply the positive tokens; the negative tokens are concatenated (concat) or
    averaged. The result has default weighting: weighting applies after combining.
    """
    first_name, first, _ = inputs[0]
    weights = [_check_weight(name.replace("embeds", "weight"), w) for name, _, w in inputs]
    for name, p, _ in inputs[1:]:
        _check_same_adapter(first_name, first, name, p)
    for name, p, _ in inputs:
        if any(_differs(getattr(p, k), v) for k, v in _weighting_defaults().items()):
            log.warning("%s: its weighting (IP-Adapter Weight) is dropped by combining; weight the combined "
                        "embeds instead", name)
    frames = _frame_count([(name, p) for name, p, _ in inputs])
    like = dict(device=first.positive.device, dtype=first.positive.dtype)
    # [frames, tokens, C] each (a one-frame prompt serves every frame of one-per-frame prompts)
    pos = [p.positive.to(**like).expand(frames, -1, -1) for _, p, _ in inputs]
    neg = [p.negative.to(**like).expand(frames, -1, -1) for _, p, _ in inputs]
    if method == "concat":
        positive = torch.cat([w * t if w != 1.0 else t for w, t in zip(weights, pos)], dim=1)
        negative = torch.cat(neg, dim=1)
    else:
        _check_token_counts(method, [name for name, _, _ in inputs], pos)
        # over the prompts, frame by frame: [prompts, frames, tokens, C] -> [frames, tokens, C]
        positive = combine(torch.stack(pos), method, weights, what="the connected embeds")[0]
        negative = combine(torch.stack(neg), "average", what="the connected embeds")[0]
    return replace(first, positive=positive.contiguous(), negative=negative.contiguous(), **_weighting_defaults())


def _frame_count(prompts: list[tuple[str, ImagePrompt]]) -> int:
    """The frames of the combined prompt: one-per-frame prompts must agree; one-frame prompts join all."""
    counts = {name: p.positive.shape[0] for name, p in prompts}
    many = {n for n in counts.values() if n > 1}
    if len(many) > 1:
        raise IPAdapterError("embeds: one-per-frame prompts of different lengths cannot be combined frame by "
                             f"frame ({', '.join(f'{k}: {v} frames' for k, v in counts.items())}). Project the "
                             "same number of images for each, or a single image for a prompt shared by all.")
    return many.pop() if many else 1


def _check_same_adapter(first_name: str, first: ImagePrompt, name: str, p: ImagePrompt) -> None:
    if p.config != first.config:
        raise IPAdapterMismatchError(
            f"{name}: made by a different kind of adapter ({p.config.name}) than {first_name} "
            f"({first.config.name}). Combine only embeds projected by the same IP-Adapter, or apply "
            "each with its own IP-Adapter Apply node.")
    if p.adapter_path != first.adapter_path:
        log.warning("%s was projected with '%s', %s with '%s'; both are %s: combined anyway",
                    name, p.adapter_path, first_name, first.adapter_path, p.config.name)


def _check_token_counts(method: str, names: list[str], pos: list[torch.Tensor]) -> None:
    for name, t in zip(names[1:], pos[1:]):
        if t.shape[1] != pos[0].shape[1]:
            raise IPAdapterError(
                f"{name}: {t.shape[1]} image tokens, {names[0]} has {pos[0].shape[1]}; '{method}' combines "
                "the prompts token by token, so they need the same count (a prompt of several concatenated "
                "images has more). Use method concat, or combine the images' features before projecting.")


def _differs(value, default) -> bool:
    if value is default:
        return False
    try:
        return bool(value != default)
    except (RuntimeError, TypeError, ValueError):  # e.g. a tensor: compared elementwise
        return True


def _weighting_defaults() -> dict:
    """ImagePrompt's defaults for every weighting field, read from the dataclass so fields
    added later are reset too."""
    out = {}
    for f in fields(ImagePrompt):
        if f.name in _TOKEN_FIELDS or not f.init:
            continue
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out
