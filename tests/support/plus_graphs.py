"""Test workflows in ComfyUI_IPAdapter_plus's formats, and the graphs of our nodes a user would build by hand.

Their nodes are written from that extension's node schemas (``ip_adapter_core/convert/plus_nodes.py``,
read from its ``INPUT_TYPES``: positional widget order, defaults): ``theirs(type, values, links)`` makes an
API-format node with every widget (``old=k`` leaves out the last k widgets, as files saved by older
releases do). ``to_ui`` lays an API graph out as an editor file (positional ``widgets_values``, links
with types, a group, a note, a reroute in front of one adapter link) from their schemas and the server's
``/object_info``. Each scenario pairs a graph of theirs with the graph of ours written out by hand here,
node by node, for the same settings; ``canonical`` compares graphs whatever their node ids.

The core nodes around the IP-Adapter part are the same in both graphs of a scenario: a checkpoint, two
prompts, an empty latent, KSampler → VAE Decode → Save Image, and Save Latent so the runs can compare
the UNet's output exactly.
"""
from __future__ import annotations

import copy

from ipadapter_ext.ip_adapter_core.convert.graph import THEIR_NODES
from ipadapter_ext.ip_adapter_core.convert.v1_nodes import V1_ENCODER, first_generation as schema_key

SIZE = 128  # latents and masks of the scenario runs: a 16×16 latent (192 px made the suite overrun its budget)
SD15_CKPT, SDXL_CKPT = "v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"
CLIP_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
PLUS_SD15, BASE_SD15, BASE_SDXL = ("ip-adapter-plus_sd15.safetensors", "ip-adapter_sd15.safetensors",
                                   "ip-adapter_sdxl_vit-h.safetensors")
IMAGES = ("ipadapter_reference.png", "ipadapter_style.png", "ipadapter_composition.png", "ipadapter_forest.png")
MODEL = ["1", 0]


def n(kind, **inputs):
    return {"class_type": kind, "inputs": inputs}


def theirs(kind, values=None, links=None, old=0):
    """A node of theirs in API form: every widget (their defaults unless given), minus the last ``old``."""
    widgets = THEIR_NODES[kind].widgets
    keep = widgets[:len(widgets) - old] if old else widgets
    inputs = {w.name: w.default for w in keep}
    inputs.update(values or {})
    for name in [w.name for w in widgets[len(keep):]]:
        inputs.pop(name, None)
    inputs.update(links or {})
    return {"class_type": kind, "inputs": inputs}


# A preset their loader does not offer today, as a later release of theirs could add: the loader stays (every node id
# of theirs has a rule now, so a node that stays is one whose values have no equivalent here).
LATER_PRESET = "MEGA (a later release)"


def staying_loader(model_from) -> dict:
    """Their preset loader with LATER_PRESET: a node of theirs that stays, with an IPADAPTER output."""
    return theirs("IPAdapterUnifiedLoader", {"preset": LATER_PRESET}, {"model": model_from})


def core(ckpt, model_from, batch=1, prefix="plus", steps=2):
    """The core part of a scenario; ``model_from`` feeds the KSampler."""
    return {
        "1": n("CheckpointLoaderSimple", ckpt_name=ckpt),
        "2": n("CLIPTextEncode", text="a house in a forest", clip=["1", 1]),
        "3": n("CLIPTextEncode", text="blurry", clip=["1", 1]),
        "4": n("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=batch),
        "5": n("LoadImage", image=IMAGES[0]),
        "6": n("LoadImage", image=IMAGES[1]),
        "7": n("KSampler", model=model_from, seed=3, steps=steps, cfg=5.0, sampler_name="euler",
               scheduler="normal", positive=["2", 0], negative=["3", 0], latent_image=["4", 0], denoise=1.0),
        "8": n("VAEDecode", samples=["7", 0], vae=["1", 2]),
        "9": n("SaveImage", images=["8", 0], filename_prefix=prefix),
        "10": n("SaveLatent", samples=["7", 0], filename_prefix=f"{prefix}_latent"),
    }


# Ours, by hand: the chain Encode → Project → Weight → Apply with every widget written out.
def encode(cv, image, mask=None, batch=0):
    e = n("IPAEncodeImage", clip_vision=cv, image=image, crop="center", interpolation="default", sharpening=0.0,
          encode_batch_size=batch)
    if mask is not None:
        e["inputs"]["mask"] = mask
    return e


def project(ipa, features, combine="concat", negative=None):
    p = n("IPAProject", ipadapter=ipa, image_features=features, combine=combine, image_weights="")
    if negative is not None:
        p["inputs"]["negative_features"] = negative
    return p


def weight(embeds, w=1.0, weight_type="linear", start=0.0, end=1.0, scaling="V only", sb=1.0, cb=1.0,
           blocks="all", custom=""):
    return n("IPAWeight", embeds=embeds, weight=w, blocks=blocks, custom_blocks=custom, start_at=start,
             end_at=end, weight_type=weight_type, embeds_scaling=scaling, style_boost=sb, composition_boost=cb)


def apply(model, ipa, embeds, mask=None):
    a = n("IPAApply", model=model, ipadapter=ipa, embeds=embeds)
    if mask is not None:
        a["inputs"]["attn_mask"] = mask
    return a


# ---------------------------------------------------------------------------- scenarios

def simple_old():
    """IPAdapter (an old file without weight_type) on the PLUS preset."""
    their = core(SD15_CKPT, ["21", 0])
    their["20"] = theirs("IPAdapterUnifiedLoader", {"preset": "PLUS (high strength)"}, {"model": MODEL})
    their["21"] = theirs("IPAdapter", {"weight": 0.8, "start_at": 0.1, "end_at": 0.9},
                         {"model": ["20", 0], "ipadapter": ["20", 1], "image": ["5", 0]}, old=1)
    ours = core(SD15_CKPT, ["41", 0])
    ours["40"] = n("IPAUnifiedLoader", model=MODEL, preset="PLUS")
    ours["41"] = n("IPAApplySimple", model=MODEL, ipadapter=["40", 0], clip_vision=["40", 1], image=["5", 0],
                   weight=0.8, start_at=0.1, end_at=0.9, weight_type="linear", embeds_scaling="V only")
    return their, ours


def advanced():
    """Model loader + core CLIP vision loader, Prep, Advanced with a negative image and a mask."""
    their = core(SD15_CKPT, ["24", 0])
    their["11"] = n("SolidMask", value=0.75, width=SIZE, height=SIZE)
    their["20"] = theirs("IPAdapterModelLoader", {"ipadapter_file": PLUS_SD15})
    their["21"] = n("CLIPVisionLoader", clip_name=CLIP_H)
    their["22"] = theirs("PrepImageForClipVision", {"interpolation": "LANCZOS", "crop_position": "top",
                                                     "sharpening": 0.15}, {"image": ["5", 0]})
    their["24"] = theirs("IPAdapterAdvanced", {"weight": 0.9, "weight_type": "ease in", "combine_embeds": "average",
                                               "start_at": 0.1, "end_at": 0.95, "embeds_scaling": "K+V"},
                         {"model": MODEL, "ipadapter": ["20", 0], "image": ["22", 0], "image_negative": ["6", 0],
                          "attn_mask": ["11", 0], "clip_vision": ["21", 0]})
    ours = core(SD15_CKPT, ["46", 0])
    ours["11"] = their["11"]
    ours["21"] = their["21"]
    ours["40"] = n("IPALoader", ipadapter_file=PLUS_SD15)
    ours["41"] = n("IPAPrepareReference", image=["5", 0], interpolation="lanczos", crop_position="top",
                   sharpening=0.15)
    ours["42"] = encode(["21", 0], ["41", 0])
    ours["43"] = encode(["21", 0], ["6", 0])
    ours["44"] = project(["40", 0], ["42", 0], "average", negative=["43", 0])
    ours["45"] = weight(["44", 0], 0.9, "ease in", 0.1, 0.95, "K+V")
    ours["46"] = apply(MODEL, ["40", 0], ["45", 0], mask=["11", 0])
    return their, ours


def embeds():
    """Encoder ×3 (one a noise negative), Combine Embeds, Embeds with style and composition."""
    their = core(SD15_CKPT, ["26", 0])
    their["20"] = theirs("IPAdapterUnifiedLoader", {"preset": "STANDARD (medium strength)"}, {"model": MODEL})
    their["21"] = theirs("IPAdapterEncoder", {"weight": 0.7}, {"ipadapter": ["20", 1], "image": ["5", 0]})
    their["22"] = theirs("IPAdapterEncoder", {"weight": 1.0}, {"ipadapter": ["20", 1], "image": ["6", 0]})
    their["23"] = theirs("IPAdapterCombineEmbeds", {"method": "norm average"},
                         {"embed1": ["21", 0], "embed2": ["22", 0]})
    their["24"] = theirs("IPAdapterNoise", {"type": "dissolve", "strength": 0.4, "blur": 5},
                         {"image_optional": ["5", 0]})
    their["25"] = theirs("IPAdapterEncoder", {}, {"ipadapter": ["20", 1], "image": ["24", 0]})
    their["26"] = theirs("IPAdapterEmbeds", {"weight": 0.8, "weight_type": "style and composition",
                                             "embeds_scaling": "K+mean(V) w/ C penalty"},
                         {"model": MODEL, "ipadapter": ["20", 1], "pos_embed": ["23", 0], "neg_embed": ["25", 0]})
    ours = core(SD15_CKPT, ["50", 0])
    ours["40"] = n("IPAUnifiedLoader", model=MODEL, preset="STANDARD")
    ours["41"] = encode(["40", 1], ["5", 0])
    ours["42"] = n("IPACombineFeatures", method="concat", features_1=["41", 0], weight_1=0.7,
                   **{f"weight_{i}": 1.0 for i in range(2, 6)})
    ours["43"] = encode(["40", 1], ["6", 0])
    ours["44"] = n("IPACombineFeatures", method="norm average", features_1=["42", 0], features_2=["43", 0],
                   **{f"weight_{i}": 1.0 for i in range(1, 6)})
    ours["45"] = n("IPANoiseNegative", type="dissolve", strength=0.4, blur=2, seed_offset=0, image=["5", 0])
    ours["46"] = encode(["40", 1], ["45", 0])
    ours["47"] = project(["40", 0], ["44", 0], negative=["46", 0])
    ours["48"] = weight(["47", 0], 0.8, "style and composition", scaling="K+mean(V) w/ C penalty", cb=1.25)
    ours["50"] = apply(MODEL, ["40", 0], ["48", 0])
    return their, ours


def regional():
    """Two Regional Conditioning nodes, Combine Params, From Params."""
    their = core(SD15_CKPT, ["25", 0])
    their["11"] = n("SolidMask", value=1.0, width=SIZE, height=SIZE)
    their["12"] = n("SolidMask", value=0.5, width=SIZE, height=SIZE)
    their["20"] = theirs("IPAdapterModelLoader", {"ipadapter_file": BASE_SD15})
    their["21"] = theirs("IPAdapterRegionalConditioning", {"image_weight": 0.9, "prompt_weight": 0.8,
                                                           "weight_type": "ease out", "start_at": 0.0,
                                                           "end_at": 0.8},
                         {"image": ["5", 0], "mask": ["11", 0], "positive": ["2", 0], "negative": ["3", 0]})
    their["22"] = theirs("IPAdapterRegionalConditioning", {"image_weight": 0.6, "weight_type": "weak input"},
                         {"image": ["6", 0], "mask": ["12", 0]})
    their["23"] = theirs("IPAdapterCombineParams", {}, {"params_1": ["21", 0], "params_2": ["22", 0]})
    their["25"] = theirs("IPAdapterFromParams", {"combine_embeds": "add", "embeds_scaling": "K+V w/ C penalty"},
                         {"model": MODEL, "ipadapter": ["20", 0], "ipadapter_params": ["23", 0]})
    their["7"]["inputs"].update(positive=["21", 1], negative=["21", 2])
    ours = core(SD15_CKPT, ["53", 0])
    ours["11"], ours["12"] = their["11"], their["12"]
    ours["7"]["inputs"].update(positive=["41", 0], negative=["42", 0])
    ours["40"] = n("IPALoader", ipadapter_file=BASE_SD15)
    ours["41"] = n("ConditioningSetMask", conditioning=["2", 0], mask=["11", 0], strength=0.8,
                   set_cond_area="default")
    ours["42"] = n("ConditioningSetMask", conditioning=["3", 0], mask=["11", 0], strength=0.8,
                   set_cond_area="default")
    ours["43"] = n("IPACLIPVisionLoader", ipadapter=["40", 0])
    ours["44"] = encode(["43", 0], ["5", 0])
    ours["45"] = project(["40", 0], ["44", 0], "add")
    ours["46"] = weight(["45", 0], 0.9, "ease out", 0.0, 0.8, "K+V w/ C penalty")
    ours["47"] = apply(MODEL, ["40", 0], ["46", 0], mask=["11", 0])
    ours["48"] = encode(["43", 0], ["6", 0])
    ours["49"] = project(["40", 0], ["48", 0], "add")
    ours["50"] = weight(["49", 0], 0.6, "weak input", scaling="K+V w/ C penalty")
    ours["53"] = apply(["47", 0], ["40", 0], ["50", 0], mask=["12", 0])
    return their, ours


def batch():
    """IPAdapter Weights (ease_in = our ease out) feeding IPAdapter Batch over two frames, PLUS preset."""
    their = core(SD15_CKPT, ["24", 0], batch=2)
    their["11"] = n("ImageBatch", image1=["5", 0], image2=["6", 0])
    their["20"] = theirs("IPAdapterUnifiedLoader", {"preset": "PLUS (high strength)"}, {"model": MODEL})
    their["21"] = theirs("IPAdapterWeights", {"weights": "1.0, 0.3", "timing": "ease_in", "frames": 2})
    their["24"] = theirs("IPAdapterBatch", {"weight_type": "reverse in-out", "encode_batch_size": 1},
                         {"model": ["20", 0], "ipadapter": ["20", 1], "image": ["11", 0], "weight": ["21", 0]})
    ours = core(SD15_CKPT, ["48", 0], batch=2)
    ours["11"] = their["11"]
    ours["40"] = n("IPAUnifiedLoader", model=MODEL, preset="PLUS")
    ours["41"] = n("IPAFrameWeights", frames=2, curve="ease out", start_weight=1.0, end_weight=0.3, seed=0)
    ours["44"] = encode(["40", 1], ["11", 0], batch=1)
    ours["45"] = project(["40", 0], ["44", 0], "one per frame")
    ours["46"] = n("IPAFrames", embeds=["45", 0], frames_per_image=1, transition_frames=0, transition="linear",
                   frame_weights=["41", 0])
    ours["47"] = weight(["46", 0], 1.0, "reverse in-out")
    ours["48"] = apply(MODEL, ["40", 0], ["47", 0])
    return their, ours


def variety():
    """Tiled, ClipVision Enhancer, Precise Style Transfer and Precise Composition chained on one model."""
    their = core(SD15_CKPT, ["24", 0])
    their["20"] = theirs("IPAdapterUnifiedLoader", {"preset": "PLUS (high strength)"}, {"model": MODEL})
    their["21"] = theirs("IPAdapterTiled", {"weight": 0.7, "weight_type": "weak output"},
                         {"model": ["20", 0], "ipadapter": ["20", 1], "image": ["5", 0]})
    their["22"] = theirs("IPAdapterClipVisionEnhancer", {"enhance_tiles": 2, "enhance_ratio": 0.75,
                                                         "weight": 0.5, "weight_type": "ease in-out"},
                         {"model": ["21", 0], "ipadapter": ["20", 1], "image": ["6", 0]})
    their["23"] = theirs("IPAdapterPreciseStyleTransfer", {"weight": 0.8, "style_boost": 2.0},
                         {"model": ["22", 0], "ipadapter": ["20", 1], "image": ["6", 0]})
    their["24"] = theirs("IPAdapterPreciseComposition", {"weight": 0.5, "composition_boost": 0.25},
                         {"model": ["23", 0], "ipadapter": ["20", 1], "image": ["5", 0]})
    ours = core(SD15_CKPT, ["56", 0])
    ours["40"] = n("IPAUnifiedLoader", model=MODEL, preset="PLUS")
    ours["41"] = n("IPAApplyTiled", model=MODEL, ipadapter=["40", 0], clip_vision=["40", 1], image=["5", 0],
                   weight=0.7, placement="where the tile lies", start_at=0.0, end_at=1.0, tile_size=0,
                   weight_type="weak output", batch="together")
    ours["42"] = n("IPAEncodeEnhanced", clip_vision=["40", 1], image=["6", 0], enhance_tiles=2, enhance_ratio=0.25)
    ours["43"] = project(["40", 0], ["42", 0])
    ours["44"] = weight(["43", 0], 0.5, "ease in-out")
    ours["45"] = apply(["41", 0], ["40", 0], ["44", 0])
    ours["46"] = encode(["40", 1], ["6", 0])
    ours["47"] = project(["40", 0], ["46", 0])
    ours["48"] = weight(["47", 0], 0.8, "style transfer precise", sb=2.5)
    ours["49"] = apply(["45", 0], ["40", 0], ["48", 0])
    ours["50"] = encode(["40", 1], ["5", 0])
    ours["51"] = project(["40", 0], ["50", 0])
    ours["52"] = weight(["51", 0], 0.5, "composition precise", cb=0.5)
    ours["56"] = apply(["49", 0], ["40", 0], ["52", 0])
    return their, ours


def sdxl():
    """SDXL: Style & Composition (expand_style) then Mad Scientist with layer_weights."""
    their = core(SDXL_CKPT, ["22", 0], steps=1)
    their["20"] = theirs("IPAdapterUnifiedLoader", {"preset": "STANDARD (medium strength)"}, {"model": MODEL})
    their["21"] = theirs("IPAdapterStyleComposition", {"weight_style": 1.1, "weight_composition": 0.9,
                                                       "expand_style": True, "combine_embeds": "concat"},
                         {"model": ["20", 0], "ipadapter": ["20", 1], "image_style": ["6", 0],
                          "image_composition": ["5", 0]})
    their["22"] = theirs("IPAdapterMS", {"weight": 0.5, "weight_type": "linear",
                                         "layer_weights": "0:0.5, 3:1.2, 4:0.7, 6:1.0, 10:0.3"},
                         {"model": ["21", 0], "ipadapter": ["20", 1], "image": ["5", 0]})
    ours = core(SDXL_CKPT, ["55", 0], steps=1)
    ours["40"] = n("IPAUnifiedLoader", model=MODEL, preset="STANDARD")
    ours["41"] = encode(["40", 1], ["6", 0])
    ours["42"] = project(["40", 0], ["41", 0])
    ours["43"] = weight(["42", 0], 1.1, "strong style transfer")
    ours["44"] = apply(MODEL, ["40", 0], ["43", 0])
    ours["45"] = encode(["40", 1], ["5", 0])
    ours["46"] = project(["40", 0], ["45", 0])
    ours["47"] = weight(["46", 0], 0.9, "composition")
    ours["48"] = apply(["44", 0], ["40", 0], ["47", 0])
    ours["50"] = encode(["40", 1], ["5", 0])
    ours["51"] = project(["40", 0], ["50", 0])
    ours["52"] = weight(["51", 0], 0.5, "linear", blocks="custom",
                        custom="input 4 = 0.5, input 8 = 1.2, output 1 = 1, output 5 = 0.3")
    ours["55"] = apply(["48", 0], ["40", 0], ["52", 0])
    return their, ours


def first_generation():
    """Their first generation (before March 2024), as an old file stores it: Apply with a noise negative, a
    channel penalty and a mask; the old Encoder (two images, squared weights) into Apply Encoded, chained."""
    their = core(SD15_CKPT, ["24", 0])
    their["11"] = n("SolidMask", value=0.75, width=SIZE, height=SIZE)
    their["20"] = theirs("IPAdapterModelLoader", {"ipadapter_file": BASE_SD15})
    their["21"] = n("CLIPVisionLoader", clip_name=CLIP_H)
    their["22"] = theirs("IPAdapterApply", {"weight": 0.8, "noise": 0.3, "weight_type": "channel penalty",
                                            "start_at": 0.0, "end_at": 0.9, "unfold_batch": False},
                         {"ipadapter": ["20", 0], "clip_vision": ["21", 0], "image": ["5", 0], "model": MODEL,
                          "attn_mask": ["11", 0]})
    their["23"] = theirs(V1_ENCODER, {"ipadapter_plus": False, "noise": 0.0, "weight_1": 0.8, "weight_2": 1.0},
                         {"clip_vision": ["21", 0], "image_1": ["5", 0], "image_2": ["6", 0]})
    their["23"]["class_type"] = "IPAdapterEncoder"
    their["24"] = theirs("IPAdapterApplyEncoded", {"weight": 0.6, "weight_type": "original", "unfold_batch": True},
                         {"ipadapter": ["20", 0], "embeds": ["23", 0], "model": ["22", 0]})
    ours = core(SD15_CKPT, ["52", 0])
    ours["11"] = their["11"]
    ours["21"] = their["21"]
    ours["40"] = n("IPALoader", ipadapter_file=BASE_SD15)
    ours["41"] = encode(["21", 0], ["5", 0])
    ours["42"] = n("IPANoiseNegative", image=["5", 0], type="shuffle", strength=0.3, blur=0, seed_offset=0)
    ours["43"] = encode(["21", 0], ["42", 0])
    ours["44"] = project(["40", 0], ["41", 0], negative=["43", 0])
    ours["45"] = weight(["44", 0], 0.8, end=0.9, scaling="K+mean(V) w/ C penalty")
    ours["46"] = apply(MODEL, ["40", 0], ["45", 0], mask=["11", 0])
    ours["47"] = encode(["21", 0], ["5", 0])
    ours["48"] = encode(["21", 0], ["6", 0])
    ours["49"] = n("IPACombineFeatures", method="concat", features_1=["47", 0], features_2=["48", 0], weight_1=0.64,
                   weight_2=1.0, weight_3=1.0, weight_4=1.0, weight_5=1.0)
    ours["50"] = project(["40", 0], ["49", 0], "one per frame")
    ours["51"] = weight(["50", 0], 0.6)
    ours["52"] = apply(["46", 0], ["40", 0], ["51", 0])
    return their, ours


SCENARIOS = {"simple_old": simple_old, "advanced": advanced, "embeds": embeds, "regional": regional,
             "batch": batch, "variety": variety, "sdxl": sdxl, "first_generation": first_generation}
FAMILY = {name: ("sdxl" if name == "sdxl" else "sd15") for name in SCENARIOS}


# ---------------------------------------------------------------------------- comparing and laying out

def canonical(api: dict) -> list:
    """The graph as a sorted list of node signatures, each naming its inputs' sources' signatures: equal for
    two graphs exactly when they are the same up to node ids (floats to 9 digits)."""
    memo = {}

    def value(v):
        return round(v, 9) if isinstance(v, float) else v

    def sig(nid, depth=0):
        if nid not in memo:
            node = api[nid]
            parts = []
            for k, v in sorted(node["inputs"].items()):
                if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                    parts.append((k, sig(v[0], depth + 1), v[1]))
                else:
                    parts.append((k, "=", repr(value(v))))
            memo[nid] = (node["class_type"], tuple(parts))
        return memo[nid]

    return sorted(repr(sig(nid)) for nid in api)


def to_ui(api: dict, object_info: dict, reroute_input=("ipadapter",)) -> dict:
    """An editor file of the API graph: their nodes by their schemas, others by ``object_info``; a group
    around everything, a note, and a Reroute in front of the first link into an input named in
    ``reroute_input``."""
    api = copy.deepcopy(api)
    ids = sorted(api, key=int)
    nodes, links, link_id = [], [], 0
    sockets, outputs = {}, {}
    for nid in ids:
        kind = schema_key(api[nid]["class_type"], list(api[nid]["inputs"]), None)
        if kind in THEIR_NODES:
            sockets[nid] = list(THEIR_NODES[kind].sockets)
            widgets = [w.name for w in THEIR_NODES[kind].widgets]
            outputs[nid] = list(THEIR_NODES[kind].outputs)
            extras = {}
        else:
            spec = object_info[kind]
            sockets[nid], widgets = [], []
            for section in ("required", "optional"):
                for name in (spec.get("input_order") or {}).get(section, []):
                    cfg = spec["input"][section][name]
                    is_widget = isinstance(cfg[0], list) or cfg[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
                    (widgets if is_widget else sockets[nid]).append(name if is_widget else (name, cfg[0]))
            outputs[nid] = list(zip(spec["output_name"], spec["output"]))
            extras = {"seed": "fixed"} if kind == "KSampler" else {"image": "image"} if kind == "LoadImage" else {}
        values = []
        defaults = {w.name: w.default for w in THEIR_NODES[kind].widgets} if kind in THEIR_NODES else {}
        for w in widgets:
            value = api[nid]["inputs"].get(w)
            if isinstance(value, list):   # a widget fed by a link keeps its slot (the editor stores a value)
                value = defaults.get(w)
            if w in api[nid]["inputs"]:
                values.append(value)
            if w in extras:
                values.append(extras[w])
        stored = api[nid]["class_type"]      # the id the file stores (the schema key may differ: V1_ENCODER)
        nodes.append({"id": int(nid), "type": stored, "pos": [300 * (len(nodes) % 6), 260 * (len(nodes) // 6)],
                      "size": [280, 200], "flags": {}, "order": len(nodes), "mode": 0,
                      "inputs": [{"name": s, "type": t, "link": None} for s, t in sockets[nid]],
                      "outputs": [{"name": o, "type": t, "links": []} for o, t in outputs[nid]],
                      "properties": {"Node name for S&R": stored}, "widgets_values": values})
    by_id = {str(x["id"]): x for x in nodes}
    next_id = max(int(i) for i in ids) + 1
    rerouted = False
    for nid in ids:
        for name, v in api[nid]["inputs"].items():
            if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)):
                continue
            src, slot = v
            kind = outputs[src][slot][1]
            target = by_id[nid]
            index = next((i for i, s in enumerate(target["inputs"]) if s["name"] == name), None)
            if index is None:   # a widget fed by a link
                target["inputs"].append({"name": name, "type": kind, "widget": {"name": name}, "link": None})
                index = len(target["inputs"]) - 1
            if name in reroute_input and not rerouted:
                rerouted = True
                rid = next_id
                next_id += 1
                nodes.append({"id": rid, "type": "Reroute", "pos": [0, -200], "size": [75, 26], "flags": {},
                              "order": len(nodes), "mode": 0, "inputs": [{"name": "", "type": "*", "link": None}],
                              "outputs": [{"name": "", "type": kind, "links": []}],
                              "properties": {"showOutputText": False, "horizontal": False}})
                link_id += 1
                links.append([link_id, int(src), slot, rid, 0, kind])
                src, slot = str(rid), 0
                by_id[src] = nodes[-1]
            link_id += 1
            links.append([link_id, int(src), slot, int(nid), index, kind])
    for lid, src, slot, tgt, tslot, _ in links:
        by_id[str(tgt)]["inputs"][tslot]["link"] = lid
        by_id[str(src)]["outputs"][slot]["links"].append(lid)
    nodes.append({"id": next_id, "type": "Note", "pos": [0, -400], "size": [300, 100], "flags": {}, "order": 0,
                  "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": ["made by the tests"]})
    return {"last_node_id": next_id, "last_link_id": link_id, "nodes": nodes, "links": links,
            "groups": [{"title": "everything", "bounding": [-50, -450, 2000, 1200], "color": "#3f789e",
                        "font_size": 24, "flags": {}}],
            "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4}
