"""The chain most rules write: IP-Adapter Encode Image → Project → (Frames) → Weight (λ) → Apply, and the small
helpers that fill it from a node of theirs (a boost as a multiple of weight, a FLOAT list of frame weights, the
negative image). ``rules.py``, ``v1_rules.py`` and ``weights_rules.py`` share it.
"""
from __future__ import annotations

from .context import Ctx

# Their nodes whose FLOAT output is a list of frame weights (IP-Adapter Frame Weights / Join Frame Weights here).
LIST_SOURCES = ("IPAdapterWeights", "IPAdapterWeightsFromStrategy", "IPAdapterCombineWeights")


def encode(c: Ctx, cv, image, **options) -> tuple:
    return c.ref(c.add("IPAEncodeImage", clip_vision=cv, image=image, crop="center", interpolation="default",
                       sharpening=0.0, encode_batch_size=options.get("encode_batch_size", 0),
                       mask=options.get("mask")))


def chain(c: Ctx, *, model, ipa, features, negative, combine, weight, weight_type, start_at, end_at,
          embeds_scaling, style_boost=1.0, composition_boost=1.0, blocks="all", custom_blocks="",
          attn_mask=None, frame_weights=None, main=True) -> tuple:
    """Project → (Frames) → Weight → Apply; returns the Apply node's MODEL ref."""
    embeds = c.ref(c.add("IPAProject", ipadapter=ipa, image_features=features, combine=combine,
                         negative_features=negative, image_weights=""))
    if frame_weights is not None:
        embeds = c.ref(c.add("IPAFrames", embeds=embeds, frames_per_image=1, transition_frames=0,
                             transition="linear", frame_weights=frame_weights))
    embeds = c.ref(c.add("IPAWeight", embeds=embeds, weight=weight, blocks=blocks, custom_blocks=custom_blocks,
                         start_at=start_at, end_at=end_at, weight_type=weight_type, embeds_scaling=embeds_scaling,
                         style_boost=style_boost, composition_boost=composition_boost))
    return c.ref(c.add("IPAApply", main=main, model=model, ipadapter=ipa, embeds=embeds, attn_mask=attn_mask))


def boost(c: Ctx, name: str, value: float, weight) -> float:
    """Their boosts are λ values, ours multiples of weight: b → b / w."""
    if isinstance(weight, tuple):
        c.lost(f"{name} {value} kept as a multiple of weight: weight is linked, so b/weight cannot be written")
        return value
    if weight == 0:
        if value:
            c.lost(f"{name} {value} at weight 0: here a boost multiplies weight, so the boosted blocks get 0")
        return 1.0
    ratio = value / weight
    if abs(ratio) > 5:
        c.lost(f"{name} {value} at weight {weight} is {ratio:.3g}× weight; clamped to ±5 (this node's range)")
        ratio = max(-5.0, min(5.0, ratio))
    return round(ratio, 6)


def weight_and_lists(c: Ctx, batch: bool):
    """(weight for IPAWeight, frame weights ref or None): a FLOAT list of theirs (IPAdapterWeights) becomes
    IP-Adapter Frames' frame_weights with weight 1; theirs uses only its first value outside batch nodes."""
    up = c.upstream("weight")
    if up is not None and up[0].type in LIST_SOURCES:
        if batch:
            return 1.0, c.src("weight")
        first = c.e.facts.get(up[0].id, {}).get("first")
        c.lost(f"weight: a list of weights on a node that is not a batch node; theirs uses its first value, "
               f"written here ({first})")
        return (first if first is not None else 1.0), None
    return c.w("weight"), None


def negative_features(c: Ctx, cv):
    if c.linked("image_negative"):
        return encode(c, cv, c.src("image_negative"))
    return None
