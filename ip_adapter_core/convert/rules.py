"""One rule per node id of ComfyUI_IPAdapter_plus: the nodes of ours that do the same.

The apply nodes of theirs become the modular chain IP-Adapter Encode Image → Project → Weight (λ) →
Apply, with each setting on the node that owns it here; their loaders, encoder, combine, noise and
prepare nodes become ours one for one (the FaceID nodes: ``faceid_rules.py``). Where the maths differ,
the rule says so in a note, and the mapping table of docs/converting.md lists every case ("Node by node"). The formulas
behind each mapping: theirs in IPAdapterPlus.py (``ipadapter_execute``, the node classes) and
CrossAttentionPatch.py; ours in ``blocks.py`` and the nodes. Two deliberate differences stay: our
middle block is patched (theirs registers it under a key ComfyUI never calls), and our default
negative for plus / full-face adapters is the reference's (zero normalised pixels, theirs encodes a
black image).
"""
from __future__ import annotations

from ..prompt.blocks import block_order, layer_lambdas
from .chain import boost, chain, encode, negative_features, weight_and_lists
from .context import Ctx, Unconvertible
from .faceid_rules import FACEID_RULES
from .flux_rules import FLUX_RULES
from .v1_rules import V1_RULES
from .weights_rules import WEIGHTS_RULES
from .limits import MAX_PARAM_ENTRIES

SIMPLE_TYPES = {"standard": "linear", "prompt is more important": "ease out", "style transfer": "style transfer"}
PRESETS = {"LIGHT - SD1.5 only (low strength)": "LIGHT", "STANDARD (medium strength)": "STANDARD",
           "VIT-G (medium strength)": "VIT-G", "PLUS (high strength)": "PLUS", "PLUS FACE (portraits)": "PLUS FACE",
           "FULL FACE - SD1.5 only (portraits stronger)": "FULL FACE"}
# Their IPAdapterUnifiedLoaderCommunity's presets (ostris' composition adapter, Kolors-IP-Adapter-Plus).
COMMUNITY_PRESETS = {"Composition": "COMPOSITION", "Kolors": "KOLORS"}
INTERPOLATIONS = {"LANCZOS": "lanczos", "BICUBIC": "bicubic", "HAMMING": "bilinear", "BILINEAR": "bilinear",
                  "BOX": "area", "NEAREST": "nearest"}
# Their first generation's names (27 Sept - 12 Oct 2023: torch's resize modes, lower case).
OLD_INTERPOLATIONS = {"lanczos": "lanczos", "bicubic": "bicubic", "bilinear": "bilinear", "area": "area",
                      "nearest": "nearest", "nearest-exact": "nearest"}
MIDDLE = "their middle block never acts"
# Node ids of theirs that always stay as they are, with the reason the report gives. None today: every id has a rule
# (a rule still refuses a node whose values have no equivalent here, raising Unconvertible).
NOT_HERE: dict[str, str] = {}


def advanced(c: Ctx, *, batch=False, weight_type=None, style_boost=None, composition_boost=None,
             layer_weights="", features=None, combine=None):
    """IPAdapterAdvanced and its relatives (Batch, MS, Precise*, ClipVisionEnhancer, Embeds)."""
    ipa, _ = c.ipadapter()
    needs_cv = features is None or c.linked("image_negative")
    cv = c.clip_vision() if needs_cv else None
    weight, frame_weights = weight_and_lists(c, batch)
    weight_type = weight_type or c.node.values.get("weight_type", "linear")
    settings = {"style_boost": 1.0, "composition_boost": 1.0}
    if weight_type == "style and composition" and style_boost is None and composition_boost is None:
        # From their apply nodes weight_composition is 1.0, an absolute λ on the composition blocks.
        settings["composition_boost"] = boost(c, "weight_composition", 1.0, weight)
    if style_boost is not None:
        weight_type = "style transfer precise"
        settings["style_boost"] = boost(c, "style_boost", style_boost, weight)
    elif composition_boost is not None:
        weight_type = "composition precise"
        settings["composition_boost"] = boost(c, "composition_boost", composition_boost, weight)
    if features is None:
        features = encode(c, cv, c.src("image"), encode_batch_size=c.node.values.get("encode_batch_size", 0))
    negative = negative_features(c, cv)
    combine = combine or ("one per frame" if batch else c.node.values.get("combine_embeds", "concat"))
    common = dict(model=c.src("model"), ipa=ipa, features=features, negative=negative, combine=combine,
                  start_at=c.w("start_at"), end_at=c.w("end_at"), embeds_scaling=c.v("embeds_scaling"),
                  attn_mask=c.src("attn_mask"), frame_weights=frame_weights)
    if layer_weights.strip():
        return layered(c, layer_weights, weight, weight_type, settings, common)
    return chain(c, weight=weight, weight_type=weight_type, **settings, **common)


def layered(c: Ctx, text: str, weight, weight_type, settings, common):
    """IPAdapterMS ``layer_weights`` "index:value, ...": λ_i = value · weight on block i of theirs (their
    transformer_index, our block_order). Non-precise types become linear there; with a precise type our λ is
    weight × the type's factor × the custom value, so the value is divided by the factor, and blocks where
    the type's factor is 0 go to a second prompt, linear and unrouted, as theirs routes only the other blocks."""
    if c.family is None:
        raise Unconvertible("layer_weights needs to know SD1.5 from SDXL, and the workflow does not say: "
                            "convert it with family sd15 or sdxl")
    order = block_order(c.family)
    try:
        entries = [(int(k), float(v)) for k, v in (x.split(":") for x in text.replace("\n", ",").split(",")
                                                   if x.strip())]
    except ValueError:
        raise Unconvertible(f"layer_weights {text!r}: expected 'index:value, ...'") from None
    precise = weight_type in ("style transfer precise", "composition precise")
    table = layer_lambdas(c.family, weight_type if precise else "linear", style_boost=settings["style_boost"],
                          composition_boost=settings["composition_boost"])
    factor = {key[:2]: mult for key, (mult, _) in table.items()}
    routed, plain = [], []
    for t, value in entries:
        if not 0 <= t < len(order):
            c.lost(f"layer_weights index {t}: this family has blocks 0-{len(order) - 1}; left out")
            continue
        block = order[t]
        if block[0] == "middle":
            if value:
                c.note(f"layer_weights {t}:{value} (the middle block) left out: {MIDDLE}")
            continue
        name = f"{block[0]} {block[1]}"
        if not value:
            continue                      # blocks not named get 0
        if factor[block]:
            routed.append(f"{name} = {_num(value / factor[block])}")
        else:
            plain.append(f"{name} = {_num(value)}")
    if not routed and not plain:
        routed = ["input 1 = 0"] if c.family == "sd15" else ["input 4 = 0"]
    model = common.pop("model")
    if routed:
        model = chain(c, model=model, weight=weight, weight_type=weight_type if precise else "linear",
                      blocks="custom", custom_blocks=", ".join(routed), main=not plain, **settings, **common)
    if plain:
        model = chain(c, model=model, weight=weight, weight_type="linear", blocks="custom",
                      custom_blocks=", ".join(plain), **common)
    return model


def _num(x: float) -> str:
    return f"{round(x, 6):.6f}".rstrip("0").rstrip(".")  # no exponent: custom_blocks reads plain decimals


# ---------------------------------------------------------------------------- apply nodes

def ipadapter_simple(c: Ctx):
    ipa, _ = c.ipadapter()
    cv = c.clip_vision()
    weight_type = SIMPLE_TYPES.get(c.v("weight_type"), "linear")
    if c.linked("attn_mask"):
        features = encode(c, cv, c.src("image"))
        model = chain(c, model=c.src("model"), ipa=ipa, features=features, negative=None, combine="concat",
                      weight=c.w("weight"), weight_type=weight_type, start_at=c.w("start_at"),
                      end_at=c.w("end_at"), embeds_scaling="V only", attn_mask=c.src("attn_mask"))
    else:
        model = c.ref(c.add("IPAApplySimple", main=True, model=c.src("model"), ipadapter=ipa, clip_vision=cv,
                            image=c.src("image"), weight=c.w("weight"), start_at=c.w("start_at"),
                            end_at=c.w("end_at"), weight_type=weight_type, embeds_scaling="V only"))
    c.out(0, model)


def ipadapter_advanced(c: Ctx):
    c.out(0, advanced(c))


def ipadapter_batch(c: Ctx):
    c.out(0, advanced(c, batch=True))


def ipadapter_ms(c: Ctx):
    if c.linked("insightface"):
        c.lost("insightface (only FaceID models use it)")
    c.out(0, advanced(c, layer_weights=c.v("layer_weights") or ""))


def precise_style(c: Ctx, batch=False):
    c.out(0, advanced(c, batch=batch, style_boost=c.v("style_boost")))


def precise_composition(c: Ctx, batch=False):
    c.out(0, advanced(c, batch=batch, composition_boost=c.v("composition_boost")))


def enhancer(c: Ctx, batch=False):
    ipa, _ = c.ipadapter()
    cv = c.clip_vision()
    ratio = c.v("enhance_ratio")
    features = c.ref(c.add("IPAEncodeEnhanced", clip_vision=cv, image=c.src("image"),
                           enhance_tiles=c.w("enhance_tiles"), enhance_ratio=round(1 - ratio, 6)))
    c.note("enhance_ratio r becomes 1 - r (ours is the cells' share); with one image theirs adds the cells as a "
           "second image, ours mixes them into the first")
    c.out(0, advanced(c, batch=batch, features=features))


def embeds(c: Ctx, batch=False):
    ipa, _ = c.ipadapter()
    negative = c.src("neg_embed")
    weight, frame_weights = weight_and_lists(c, batch)
    c.out(0, chain(c, model=c.src("model"), ipa=ipa, features=c.src("pos_embed"), negative=negative,
                   combine="one per frame" if batch else "concat", weight=weight, weight_type=c.v("weight_type"),
                   start_at=c.w("start_at"), end_at=c.w("end_at"), embeds_scaling=c.v("embeds_scaling"),
                   attn_mask=c.src("attn_mask"), frame_weights=frame_weights,
                   **_boosts_for(c, c.v("weight_type"), weight)))


def _boosts_for(c: Ctx, weight_type, weight) -> dict:
    if weight_type == "style and composition":
        return {"composition_boost": boost(c, "weight_composition", 1.0, weight)}
    return {}


def style_composition(c: Ctx, batch=False):
    """One patch of theirs, style image on the style blocks and composition image on the composition
    blocks; here two chained prompts, which add, and only one of them has λ ≠ 0 on any block."""
    ipa, _ = c.ipadapter()
    cv = c.clip_vision()
    negative = negative_features(c, cv)
    combine = "one per frame" if batch else c.v("combine_embeds")
    style_image = c.src("image_style")
    composition_image = c.src("image_composition") or style_image
    common = dict(ipa=ipa, negative=negative, combine=combine, start_at=c.w("start_at"), end_at=c.w("end_at"),
                  embeds_scaling=c.v("embeds_scaling"), attn_mask=c.src("attn_mask"))
    model = chain(c, model=c.src("model"), features=encode(c, cv, style_image), weight=c.w("weight_style"),
                  weight_type="strong style transfer" if c.v("expand_style") else "style transfer", main=False,
                  **common)
    model = chain(c, model=model, features=encode(c, cv, composition_image), weight=c.w("weight_composition"),
                  weight_type="composition", **common)
    c.out(0, model)


def tiled(c: Ctx, batch=False):
    ipa, _ = c.ipadapter()
    cv = c.clip_vision()
    key = c.add("IPAApplyTiled", main=True, model=c.src("model"), ipadapter=ipa, clip_vision=cv,
                image=c.src("image"), weight=c.w("weight"), placement="where the tile lies",
                start_at=c.w("start_at"), end_at=c.w("end_at"), tile_size=0, weight_type=c.v("weight_type"),
                batch="one per frame" if batch else "together")
    if batch and c.v("encode_batch_size"):
        c.note("encode_batch_size: IP-Adapter Tiled encodes each tile's images at once")
    c.note("tiles: ours have the side of the reference's short side (a square reference is one tile), theirs "
           "are 256 px after resizing; overlapping tiles share their area here")
    for name, default in (("sharpening", 0.0), ("combine_embeds", "concat"), ("embeds_scaling", "V only")):
        if name in c.node.values and c.v(name) != default:
            c.lost(f"{name} = {c.v(name)} (IP-Adapter Tiled has no such input)")
    for name in ("image_negative", "attn_mask"):
        if c.linked(name):
            c.lost(f"{name} (IP-Adapter Tiled has no such input)")
    for slot in range(3):
        c.out(slot, c.ref(key, slot))


def from_params(c: Ctx):
    """Their params lists (Regional Conditioning, Combine Params) unrolled into one chained prompt per
    entry, all with the node's combine, embeds scaling and negative, in the lists' order."""
    ipa, _ = c.ipadapter()
    cv = c.clip_vision()
    negative = negative_features(c, cv)
    entries, count = params_entries(c, "ipadapter_params")
    if count > MAX_PARAM_ENTRIES:
        raise Unconvertible(f"its params list unrolls to more than {MAX_PARAM_ENTRIES} entries (Combine Params "
                            f"nodes that repeat each other's lists); at most {MAX_PARAM_ENTRIES} are converted")
    if not entries:
        raise Unconvertible("ipadapter_params must come from IPAdapter Regional Conditioning or Combine Params")
    model = c.src("model")
    for k, (region, _) in enumerate(entries):
        r = region.values
        model = chain(c, model=model, ipa=ipa, features=encode(c, cv, region.links.get("image")), negative=negative,
                      combine=c.v("combine_embeds"), weight=r["image_weight"], weight_type=r["weight_type"],
                      start_at=r["start_at"], end_at=r["end_at"], embeds_scaling=c.v("embeds_scaling"),
                      attn_mask=region.links.get("mask"), main=k == len(entries) - 1,
                      **_boosts_for(c, r["weight_type"], r["image_weight"]))
    c.out(0, model)


def params_entries(c: Ctx, name: str) -> tuple[list, int]:
    """(the params list that feeds input ``name``, its length). Each Regional Conditioning and Combine Params
    rule stores its list (rules run after the nodes that feed them), so a list is built once per node: the
    straightforward walk up every input re-read a chain of Combine Params fed twice at each level 2^depth
    times. Lists are cut at MAX_PARAM_ENTRIES + 1 entries; the length saturates there."""
    up = c.upstream(name)
    if up is None:
        return [], 0
    fact = c.e.facts.get(up[0].id, {})
    return fact.get("params", []), fact.get("params_count", 0)


# ---------------------------------------------------------------------------- loaders and helpers

def unified_loader(c: Ctx, presets: dict = PRESETS):
    """IPAdapterUnifiedLoader, and with ``presets`` = COMMUNITY_PRESETS its Community twin (same sockets)."""
    if c.v("preset") not in presets:
        raise Unconvertible(f"preset {c.v('preset')!r} has no equivalent here")
    preset = presets[c.v("preset")]
    key = c.add("IPAUnifiedLoader", main=True, model=c.src("model"), preset=preset)
    if c.linked("ipadapter"):
        c.note("the ipadapter input (a pipeline to reuse) is not needed: ComfyUI caches loaded models")
    c.note("the preset's files are found by their tensors, not by name")
    if preset == "COMPOSITION":
        # ostris' adapter has a plus adapter's tensors: only the name tells them apart
        c.note("COMPOSITION prefers a file whose name holds 'composition' and otherwise takes a plus adapter "
               "(theirs then stops: 'IPAdapter model not found')")
    c.out(0, c.src("model"))    # theirs passes the model through unchanged (it only adds FaceID LoRAs)
    c.pipe(1, c.ref(key, 0), c.ref(key, 1))


def model_loader(c: Ctx):
    key = c.add("IPALoader", main=True, ipadapter_file=c.v("ipadapter_file") or "")
    c.pipe(0, c.ref(key), None)


def encoder(c: Ctx):
    cv = c.clip_vision()
    features = encode(c, cv, c.src("image"), mask=c.src("mask"))
    if c.linked("mask"):
        c.note("mask: theirs multiplies the normalised 224 px pixels, ours blends with the mean colour before "
               "resizing (the same where the mask is flat, different along its edges)")
    if c.linked("weight") or c.v("weight") != 1:
        features = c.ref(c.add("IPACombineFeatures", main=True, method="concat", features_1=features,
                               weight_1=c.w("weight")))
    c.out(0, features)
    c.unconnected(1)   # their neg_embed: here Project's default negative (unconnected negative_features)
    c.note("neg_embed: Project's own default negative (zeros for base adapters, the reference's for plus)")


def combine_embeds(c: Ctx):
    inputs = {f"features_{i}": c.src(f"embed{i}") for i in range(1, 6) if c.linked(f"embed{i}")}
    weights = {f"weight_{i}": 1.0 for i in range(1, 6)}
    if "features_1" not in inputs and inputs:
        first = min(inputs)
        inputs["features_1"] = inputs.pop(first)
    c.out(0, c.ref(c.add("IPACombineFeatures", main=True, method=c.v("method"), **weights, **inputs)))


def noise(c: Ctx):
    c.note("noise: the same formulas with other random draws; shuffle here moves pixels only")
    c.out(0, c.ref(c.add("IPANoiseNegative", main=True, type=c.v("type"), strength=c.w("strength"),
                         blur=int(c.v("blur")) // 2, seed_offset=0, image=c.src("image_optional"))))


def prep_image(c: Ctx):
    interp = c.v("interpolation")
    if interp == "HAMMING":
        c.lost("interpolation HAMMING: no such filter here, bilinear used")
    if c.v("crop_position") == "pad":
        c.note("pad: ours letterboxes with the encoder's mean colour, theirs with black")
    c.note("resizing: ours in float, theirs through an 8-bit PIL image; sharpening: ours a fixed kernel blend")
    c.out(0, c.ref(c.add("IPAPrepareReference", main=True, image=c.src("image"),
                         interpolation=INTERPOLATIONS.get(interp) or OLD_INTERPOLATIONS.get(interp, "bicubic"),
                         crop_position=c.v("crop_position"),
                         sharpening=c.w("sharpening"))))


def save_embeds(c: Ctx):
    """Their features files (pickles, .ipadpt) become ours (safetensors, .ipafeatures); Load Features reads both."""
    c.add("IPASaveFeatures", main=True, image_features=c.src("embeds"), filename_prefix=c.v("filename_prefix"))
    c.note("the file is written as safetensors (.ipafeatures), not a pickle (.ipadpt); IP-Adapter Load Features "
           "reads both")
    up = c.upstream("embeds")
    if up is not None and c.e.facts.get(up[0].id, {}).get("negative") is not None:
        c.lost("the noise negative on the wire is not saved (their first generation stacked it into the file)")


def load_embeds(c: Ctx):
    """Their .ipadpt files load through IP-Adapter Load Features: torch's weights-only unpickler, tensors only."""
    key = c.add("IPALoadFeatures", main=True, features_file=c.v("embeds"))
    c.e.facts[c.node.id] = {"negative": c.ref(key, 1)}   # a first-generation file also holds the negative
    c.note("the file is read with torch's weights-only unpickler and must hold one tensor (their files do)")
    c.out(0, c.ref(key, 0))


def regional(c: Ctx):
    """Its params go to IPAdapterFromParams (which reads this node's values); its conditionings get the
    mask as core Conditioning (Set Mask) does: mask, strength = prompt_weight, bounds off."""
    c.e.facts[c.node.id] = {"params": [(c.node, 0)], "params_count": 1}
    for slot, name in ((1, "positive"), (2, "negative")):
        if c.linked("mask") and c.linked(name) and c.used(slot):
            c.out(slot, c.ref(c.add("ConditioningSetMask", conditioning=c.src(name), mask=c.src("mask"),
                                    strength=c.w("prompt_weight"), set_cond_area="default")))
        else:
            c.out(slot, c.src(name))
    c.out(0, None)


def combine_params(c: Ctx):
    entries, count = [], 0
    for i in range(1, 6):
        sub, n = params_entries(c, f"params_{i}")
        entries += sub[:MAX_PARAM_ENTRIES + 1 - len(entries)]
        count = min(count + n, MAX_PARAM_ENTRIES + 1)
    c.e.facts[c.node.id] = {"params": entries, "params_count": count}
    c.out(0, None)


RULES = {
    "IPAdapter": ipadapter_simple,
    "IPAdapterAdvanced": ipadapter_advanced,
    "IPAdapterBatch": ipadapter_batch,
    "IPAdapterMS": ipadapter_ms,
    "IPAdapterPreciseStyleTransfer": precise_style,
    "IPAdapterPreciseStyleTransferBatch": lambda c: precise_style(c, batch=True),
    "IPAdapterPreciseComposition": precise_composition,
    "IPAdapterPreciseCompositionBatch": lambda c: precise_composition(c, batch=True),
    "IPAdapterClipVisionEnhancer": enhancer,
    "IPAdapterClipVisionEnhancerBatch": lambda c: enhancer(c, batch=True),
    "IPAdapterEmbeds": embeds,
    "IPAdapterEmbedsBatch": lambda c: embeds(c, batch=True),
    "IPAdapterStyleComposition": style_composition,
    "IPAdapterStyleCompositionBatch": lambda c: style_composition(c, batch=True),
    "IPAdapterTiled": tiled,
    "IPAdapterTiledBatch": lambda c: tiled(c, batch=True),
    "IPAdapterSaveEmbeds": save_embeds,
    "IPAdapterLoadEmbeds": load_embeds,
    "IPAdapterFromParams": from_params,
    "IPAdapterUnifiedLoader": unified_loader,
    "IPAdapterUnifiedLoaderCommunity": lambda c: unified_loader(c, COMMUNITY_PRESETS),
    "IPAdapterModelLoader": model_loader,
    "IPAdapterEncoder": encoder,
    "IPAdapterCombineEmbeds": combine_embeds,
    "IPAdapterNoise": noise,
    "PrepImageForClipVision": prep_image,
    "IPAdapterRegionalConditioning": regional,
    "IPAdapterCombineParams": combine_params,
    **FACEID_RULES,
    **WEIGHTS_RULES,
    **V1_RULES,
    **FLUX_RULES,
}
