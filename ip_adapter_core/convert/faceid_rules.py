"""The rules for ComfyUI_IPAdapter_plus's FaceID nodes (``rules.py`` has the others, and the chain they share).

Their IPAdapterFaceID (and its Batch, and IPAdapterFaceIDKolors) become IP-Adapter Face Analysis → Project Face →
Weight → Apply; their FaceID preset loader and InsightFace loader become ours one for one. What differs is said in
notes: the LoRA is the one inside the FaceID file, merged by IP-Adapter Apply (theirs loads the separate
_lora.safetensors), the face analysis runs on onnxruntime over the same pack files (theirs needs the insightface
package), and Kolors FaceID Plus gets the face inputs of Kolors' own pipeline (theirs tencent's). Their
image_negative feeds Project Face's negative_image for FaceID Plus files (one path for all three nodes).
"""
from __future__ import annotations

from .context import Ctx, Unconvertible

FACEID_PRESETS = {"FACEID": "FACEID", "FACEID PLUS - SD1.5 only": "FACEID PLUS", "FACEID PLUS V2": "FACEID PLUS V2",
                  "FACEID PORTRAIT (style transfer)": "FACEID PORTRAIT",
                  "FACEID PORTRAIT UNNORM - SDXL only (strong)": "FACEID PORTRAIT UNNORM"}
# their providers -> ours (onnxruntime's, by the same names)
PROVIDERS = {"CPU": "CPU", "CUDA": "CUDA", "ROCM": "ROCm", "DirectML": "DirectML", "OpenVINO": "OpenVINO",
             "CoreML": "CoreML"}
CHOICE = "faces: the most confident face of each picture, as theirs; "
# {neg}: the default negative's part, said only when no image_negative replaces it
FACES = CHOICE + ("Plus crops faces at 224 px for CLIP as the reference (theirs 256 on SDXL){neg}")
FACES_NEGATIVE = " and its negative encodes zero normalised pixels (theirs a black image)"
# Deliberate: Kolors FaceID Plus was trained on the inputs of Kolors' own pipeline, not on those theirs gives it.
KOLORS_FACES = CHOICE + ("on purpose ours gives Kolors FaceID Plus the inputs of Kolors' own pipeline, insightface's "
                         "raw embedding and the face's square box resized to 336 px{neg}, where theirs gives it the "
                         "normalised embedding and an aligned 336 px crop{their_neg}")
KOLORS_NEGATIVES = {"neg": " (its negative: zero CLIP states)", "their_neg": " (its negative: a black image)"}
NEGATIVE = ("image_negative → Project Face's negative_image: its CLIP states become the negative's CLIP part (the "
            "face part stays a zero embedding), as theirs; of a batch ours encodes the first picture")
# Their LoRA comes from the separate _lora.safetensors, loaded by their FaceID preset loader at lora_strength (0.6
# by default) onto its MODEL output; with their model loader none is loaded unless the graph has a LoRA loader.


def face_analysis(c: Ctx):
    """Their face analysis for a FaceID node: its insightface input, else their FaceID preset loader's, else a
    Face Analysis Loader of buffalo_l added here (theirs stops with 'insightface model is required')."""
    if c.linked("insightface"):
        return c.src("insightface")
    face = c.e.facts.get(("face", c.ipadapter()[0]))
    if face is not None:
        return face["analysis"]
    c.note("insightface: not connected (theirs refuses to run); a Face Analysis Loader (buffalo_l) was added")
    return c.ref(c.add("IPAFaceAnalysisLoader", pack="buffalo_l", provider="auto", backend="onnxruntime"))


def faceid(c: Ctx, batch=False, kolors=False):
    """IPAdapterFaceID (Batch), IPAdapterFaceIDKolors: Face Analysis → Project Face → Weight → Apply. Kolors' node
    adds weight_kolors, and its model always adds its ID tokens back (their is_faceidv2): faceid_version v2."""
    ipa, cv = c.ipadapter()
    if c.linked("clip_vision"):
        cv = c.src("clip_vision")
    model, analysis = face_chain(c, ipa=ipa, cv=cv, combine="one per frame" if batch else c.v("combine_embeds"),
                                 faceid_version="v2" if kolors else "auto", weight_faceidv2=c.w("weight_faceidv2"),
                                 weight_type=c.v("weight_type"), embeds_scaling=c.v("embeds_scaling"),
                                 weight_kolors=c.w("weight_kolors") if kolors else 1.0, kolors=kolors,
                                 negative_image=image_negative(c, kolors))
    c.out(0, model)
    c.out(1, c.ref(analysis, 1))
    if kolors and c.used(1):
        c.note("face_image: Face Analysis' face_crops, aligned at 224 px (theirs: the aligned 336 px crops it encodes)")


def faceid_plus(c: Ctx, kolors=False) -> bool | None:
    """Whether the adapter feeding this FaceID node is a FaceID Plus file (it reads CLIP features too), from their
    preset loader's preset or their model loader's file name (as theirs reads 'plus' in it); None: not known here.
    Kolors' only FaceID file is FaceID Plus, so their Kolors node reads one unless a name says otherwise."""
    up = c.upstream("ipadapter")
    if up is not None and up[0].type == "IPAdapterUnifiedLoaderFaceID":
        return "PLUS" in str(up[0].values.get("preset") or "")
    name = str(up[0].values.get("ipadapter_file") or "").lower() if up is not None else ""
    if name:
        return "plus" in name or "kolors" in name
    return True if kolors else None


def image_negative(c: Ctx, kolors=False):
    """Their image_negative, for Project Face's negative_image: FaceID Plus encodes it for the CLIP part of the
    negative (ipadapter_execute's img_uncond_embeds); other FaceID files have no CLIP part and theirs ignores it."""
    if not c.linked("image_negative"):
        return None
    plus = faceid_plus(c, kolors)
    if plus:
        c.note(NEGATIVE)
        return c.src("image_negative")
    if plus is False:
        c.note("image_negative: no effect on a FaceID file without CLIP features, in theirs either (its negative "
               "is a zero face embedding)")
    else:
        c.lost("image_negative: not kept, as the adapter's file is not known here; for a FaceID Plus file connect "
               "it to Project Face's negative_image (other FaceID files ignore it, in theirs too)")
    return None


def face_chain(c: Ctx, *, ipa, cv, combine, faceid_version, weight_faceidv2, weight_type, embeds_scaling,
               weight_kolors=1.0, kolors=False, negative_image=None):
    """Face Analysis → Project Face → Weight → Apply for a FaceID node of either generation; returns (the Apply
    node's MODEL ref, the Face Analysis node's key). ``kolors``: their Kolors node (other notes);
    ``negative_image``: what feeds Project Face's negative_image (their image_negative, FaceID Plus only)."""
    fact = c.e.facts.get(("face", ipa))
    if fact is not None:
        lora = fact["lora_strength"]
    else:
        lora = 0.0
        if not kolors:   # Kolors FaceID Plus carries no LoRA: nothing to say
            c.note("lora_strength 0: theirs loads no LoRA from the FaceID file (a LoRA loader in the graph stays, and "
                   "is not applied twice); set lora_strength on Project Face to use the one in the file")
    analysis = c.add("IPAFaceAnalysis", face_analysis=face_analysis(c), image=c.src("image"), choose="most confident",
                     index=0, threshold=0.5)
    embeds = c.ref(c.add("IPAProjectFace", ipadapter=ipa, faces=c.ref(analysis), clip_vision=cv, combine=combine,
                         faceid_version=faceid_version, weight_faceidv2=weight_faceidv2, lora_strength=lora,
                         image_weights="", weight_kolors=weight_kolors, negative_image=negative_image))
    embeds = c.ref(c.add("IPAWeight", embeds=embeds, weight=c.w("weight"), blocks="all", custom_blocks="",
                         start_at=c.w("start_at"), end_at=c.w("end_at"), weight_type=weight_type,
                         embeds_scaling=embeds_scaling, style_boost=1.0, composition_boost=1.0))
    model = c.ref(c.add("IPAApply", main=True, model=c.src("model"), ipadapter=ipa, embeds=embeds,
                        attn_mask=c.src("attn_mask")))
    linked = negative_image is not None     # then their image_negative makes the CLIP negative in both
    if kolors:
        c.note(KOLORS_FACES.format(**{k: "" if linked else v for k, v in KOLORS_NEGATIVES.items()}))
    else:
        c.note(FACES.format(neg="" if linked else FACES_NEGATIVE))
    return model, analysis


def faceid_preset_loader(c: Ctx):
    preset = c.v("preset")
    if preset not in FACEID_PRESETS:
        raise Unconvertible(f"preset {preset!r} has no equivalent here")
    key = c.add("IPAUnifiedLoaderFaceID", main=True, model=c.src("model"), preset=FACEID_PRESETS[preset],
                provider=PROVIDERS.get(c.v("provider"), "auto"))
    ipa = c.ref(key, 0)
    c.e.facts[("face", ipa)] = {"analysis": c.ref(key, 2), "lora_strength": c.w("lora_strength")}
    c.note("the LoRA is the one inside the FaceID file, merged by IP-Adapter Apply at their lora_strength (theirs "
           "loads the separate _lora.safetensors from models/loras onto this node's MODEL output)")
    c.out(0, c.src("model"))
    c.pipe(1, ipa, c.ref(key, 1))


def insightface_loader(c: Ctx):
    c.out(0, c.ref(c.add("IPAFaceAnalysisLoader", main=True, pack=c.v("model_name"),
                         provider=PROVIDERS.get(c.v("provider"), "auto"), backend="onnxruntime")))
    c.note("onnxruntime reads the same models/insightface/models/<pack> files; the insightface package is not used")


FACEID_RULES = {
    "IPAdapterFaceID": faceid,
    "IPAAdapterFaceIDBatch": lambda c: faceid(c, batch=True),
    "IPAdapterFaceIDKolors": lambda c: faceid(c, kolors=True),
    "IPAdapterUnifiedLoaderFaceID": faceid_preset_loader,
    "IPAdapterInsightFaceLoader": insightface_loader,
}
