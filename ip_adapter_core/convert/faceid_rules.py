"""The rules for ComfyUI_IPAdapter_plus's FaceID nodes (``rules.py`` has the others, and the chain they share).

Their IPAdapterFaceID (and its Batch) become IP-Adapter Face Analysis → Project Face → Weight → Apply; their
FaceID preset loader and InsightFace loader become ours one for one. What differs is said in notes: the LoRA
is the one inside the FaceID file, merged by IP-Adapter Apply (theirs loads the separate _lora.safetensors), and
the face analysis runs on onnxruntime over the same pack files (theirs needs the insightface package).
"""
from __future__ import annotations

from .context import Ctx, Unconvertible

FACEID_PRESETS = {"FACEID": "FACEID", "FACEID PLUS - SD1.5 only": "FACEID PLUS", "FACEID PLUS V2": "FACEID PLUS V2",
                  "FACEID PORTRAIT (style transfer)": "FACEID PORTRAIT",
                  "FACEID PORTRAIT UNNORM - SDXL only (strong)": "FACEID PORTRAIT UNNORM"}
# their providers -> ours (onnxruntime's, by the same names)
PROVIDERS = {"CPU": "CPU", "CUDA": "CUDA", "ROCM": "ROCm", "DirectML": "DirectML", "OpenVINO": "OpenVINO",
             "CoreML": "CoreML"}
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


def faceid(c: Ctx, batch=False):
    """IPAdapterFaceID (Batch): Face Analysis → Project Face → Weight → Apply."""
    ipa, cv = c.ipadapter()
    if c.linked("clip_vision"):
        cv = c.src("clip_vision")
    if c.linked("image_negative"):
        c.lost("image_negative: Project Face uses the reference's negative (a zero face embedding)")
    model, analysis = face_chain(c, ipa=ipa, cv=cv, combine="one per frame" if batch else c.v("combine_embeds"),
                                 faceid_version="auto", weight_faceidv2=c.w("weight_faceidv2"),
                                 weight_type=c.v("weight_type"), embeds_scaling=c.v("embeds_scaling"))
    c.out(0, model)
    c.out(1, c.ref(analysis, 1))


def face_chain(c: Ctx, *, ipa, cv, combine, faceid_version, weight_faceidv2, weight_type, embeds_scaling):
    """Face Analysis → Project Face → Weight → Apply for a FaceID node of either generation; returns (the Apply
    node's MODEL ref, the Face Analysis node's key)."""
    fact = c.e.facts.get(("face", ipa))
    if fact is not None:
        lora = fact["lora_strength"]
    else:
        lora = 0.0
        c.note("lora_strength 0: theirs loads no LoRA from the FaceID file (a LoRA loader in the graph stays, and "
               "is not applied twice); set lora_strength on Project Face to use the one in the file")
    analysis = c.add("IPAFaceAnalysis", face_analysis=face_analysis(c), image=c.src("image"), choose="most confident",
                     index=0, threshold=0.5)
    embeds = c.ref(c.add("IPAProjectFace", ipadapter=ipa, faces=c.ref(analysis), clip_vision=cv, combine=combine,
                         faceid_version=faceid_version, weight_faceidv2=weight_faceidv2, lora_strength=lora,
                         image_weights=""))
    embeds = c.ref(c.add("IPAWeight", embeds=embeds, weight=c.w("weight"), blocks="all", custom_blocks="",
                         start_at=c.w("start_at"), end_at=c.w("end_at"), weight_type=weight_type,
                         embeds_scaling=embeds_scaling, style_boost=1.0, composition_boost=1.0))
    model = c.ref(c.add("IPAApply", main=True, model=c.src("model"), ipadapter=ipa, embeds=embeds,
                        attn_mask=c.src("attn_mask")))
    c.note("faces: the most confident face of each picture, as theirs; Plus crops faces at 224 px for CLIP as the "
           "reference (theirs 256 on SDXL) and its negative encodes zero normalised pixels (theirs a black image)")
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
    "IPAdapterUnifiedLoaderFaceID": faceid_preset_loader,
    "IPAdapterInsightFaceLoader": insightface_loader,
}
