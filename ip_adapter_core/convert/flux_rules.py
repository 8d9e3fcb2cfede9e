"""The rules for the Flux IP-Adapter packs' nodes (flux_nodes.py has their schemas): their loaders become IP-Adapter
Loader (the encoder is found by its shapes, through IP-Adapter CLIP Vision Loader), their apply nodes the chain
Encode Image → Project → Weight (→ λ Schedule) → Apply. Where the maths differ, a note says so (docs/flux.md).
"""
from __future__ import annotations

import math

from ..files.flux_layout import FLUX1
from .context import Ctx, Unconvertible

XLABS_FOLDER = "models/xlabs/ipadapters"
SHAKKER_FOLDER = "models/ipadapter-flux"


def _strengths(kind: str, start: float, finish: float, size: int) -> list[float]:
    """Their per-block strengths (x-flux-comfyui utils.py: Linear/FirstHalf/SecondHalf/SigmoidStrengthModel)."""
    half = size // 2
    ramp = [start + (finish - start) * (i / (half - 1)) for i in range(half)]
    if kind == "Linear":
        return [start + (finish - start) * (i / (size - 1)) for i in range(size)]
    if kind == "First half":
        return ramp + [finish] * (size - half)
    if kind == "Second half":
        return [start] * (size - half) + ramp
    if kind == "Sigmoid":
        return [start + (finish - start) * (1 / (1 + math.exp(-(i - size / 2) * 8 / size)) - 0.5) for i in range(size)]
    raise Unconvertible(f"smothing_type {kind!r} is none of theirs")


def _number(x: float) -> str:
    return f"{round(x, 6):.6f}".rstrip("0").rstrip(".")


def _loader(c: Ctx, file_widget: str, folder: str, encoder_note: str):
    ipa = c.ref(c.add("IPALoader", main=True, ipadapter_file=c.v(file_widget)))
    c.note(f"the file is listed from {folder} too (IP-Adapter Loader reads models/ipadapter and that folder)")
    c.note(encoder_note)
    c.pipe(0, ipa, None)


def xlabs_loader(c: Ctx):
    _loader(c, "ipadatper", XLABS_FOLDER, f"clip_vision: theirs names {c.v('clip_vision')!r}; IP-Adapter CLIP Vision "
                                          "Loader finds the ViT-L/14 file in models/clip_vision by its shapes")


def instantx_loader(c: Ctx):
    _loader(c, "ipadapter", SHAKKER_FOLDER, "clip_vision: theirs loads google/siglip-so400m-patch14-384 from Hugging "
                                            "Face's cache; here its model.safetensors goes in models/clip_vision, "
                                            "where IP-Adapter CLIP Vision Loader finds it with its pooling head")


def _chain(c: Ctx, adapter_input: str, *, weight, start_at=0.0, end_at=1.0, crop="center", blocks="all",
           custom="", schedule_end=None):
    ipa, _ = c.ipadapter(adapter_input)
    cv = c.clip_vision(adapter_input)
    features = c.ref(c.add("IPAEncodeImage", clip_vision=cv, image=c.src("image"), crop=crop, interpolation="default",
                           sharpening=0.0, encode_batch_size=0))
    embeds = c.ref(c.add("IPAProject", ipadapter=ipa, image_features=features, combine="concat", image_weights=""))
    embeds = c.ref(c.add("IPAWeight", embeds=embeds, weight=weight, blocks=blocks, custom_blocks=custom,
                         start_at=start_at, end_at=end_at, weight_type="linear", embeds_scaling="V only",
                         style_boost=1.0, composition_boost=1.0))
    if schedule_end is not None:
        embeds = c.ref(c.add("IPASchedule", embeds=embeds, curve="linear", weight_end=schedule_end))
    c.out(0, c.ref(c.add("IPAApply", main=True, model=c.src("model"), ipadapter=ipa, embeds=embeds)))


def xlabs_apply(c: Ctx):
    _chain(c, "ip_adapter_flux", weight=c.w("ip_scale"))
    c.note("each row gets its own image term (theirs averages the term over the batch); several images are "
           "concatenated; ip_scale's cap of 1 is gone (λ here goes from -2 to 5)")


def xlabs_apply_advanced(c: Ctx):
    # their loader builds Flux.1's 19 double-block processors whatever the model (nodes.py)
    strengths = _strengths(c.v("smothing_type"), float(c.v("begin_strength")), float(c.v("end_strength")),
                           FLUX1["depth"])
    custom = ", ".join(f"double {i} = {_number(s)}" for i, s in enumerate(strengths))
    _chain(c, "ip_adapter_flux", weight=1.0, blocks="custom", custom=custom)
    c.note(f"their {c.v('smothing_type')} strengths over the 19 double blocks are λ per block (custom_blocks)")


def instantx_apply(c: Ctx):
    _chain(c, "ipadapter_flux", weight=c.w("weight"), start_at=c.w("start_percent"), end_at=c.w("end_percent"),
           crop="squash")
    c.note("every image of the batch counts here (theirs uses the first); crop squash resizes the picture to "
           "384×384 as SigLIP's processor does; dtype is the model's (theirs fp16)")


def instantx_apply_advanced(c: Ctx):
    _chain(c, "ipadapter_flux", weight=c.w("weight_start"), start_at=c.w("start_percent"),
           end_at=c.w("end_percent"), crop="squash", schedule_end=c.w("weight_end"))
    c.note(f"λ goes linearly from weight_start to weight_end over the sampling steps in start..end (λ Schedule); "
           f"theirs counts {c.v('steps')} attention calls per block, which is not a step count")


FLUX_RULES = {
    "LoadFluxIPAdapter": xlabs_loader,
    "ApplyFluxIPAdapter": xlabs_apply,
    "ApplyAdvancedFluxIPAdapter": xlabs_apply_advanced,
    "IPAdapterFluxLoader": instantx_loader,
    "IPAdapterFluxLoaderAdvanced": instantx_loader,
    "ApplyIPAdapterFlux": instantx_apply,
    "ApplyIPAdapterFluxAdvanced": instantx_apply_advanced,
}
