"""Rules for the first generation of ComfyUI_IPAdapter_plus (``v1_nodes.py``: its ids before March 2024).

Their formulas, from IPAdapterPlus.py at 6a411dc (``CrossAttentionPatch.__call__``, ``apply_ipadapter``):
- weight_type ``original`` multiplies the image attention's output by the weight (our V only scaling: λ·Attn),
  ``linear`` multiplies K' and V' (K+V), ``channel penalty`` is Fooocus's K·w·C/1280 with V's mean scaled
  (K+mean(V) w/ C penalty); every block gets the same weight (our weight type linear).
- Several images without ``unfold_batch`` are one prompt of all their tokens (the patch's batch reshape lays
  each image's K'/V' side by side: our combine concat); with it, image k goes to latent k (one per frame).
- An EMBEDS wire carries positive and negative features stacked; the negative is zeros (a black image's states
  for plus adapters) unless ``noise`` > 0 encoded a noised copy of the reference. Here the positive travels on
  the link and a noise negative, when there is one, is recorded for the Apply node that reads the wire.
- ``noise``: an elastic shuffle (σ = 3.5·noise) of the centre crop, flipped both ways, plus Gaussian noise
  (std 0.25·(1 - noise) + 0.05). The nearest node here is IP-Adapter Noise Negative's shuffle; the report says
  that the recipe differs.
"""
from __future__ import annotations

from .chain import chain, encode
from .context import Ctx, Unconvertible
from .faceid_rules import PROVIDERS, face_chain
from .v1_nodes import V1_ENCODER

SCALINGS = {"original": "V only", "linear": "K+V", "channel penalty": "K+mean(V) w/ C penalty"}
NOISE_NOTE = ("noise: their first generation's negative was a noised copy of the reference (an elastic shuffle with "
              "σ = 3.5·noise, flipped both ways, plus Gaussian noise); here IP-Adapter Noise Negative's shuffle at "
              "strength noise: the same idea, other pixels")
FIRST_GEN = "their first generation (before March 2024)"


def scaling(c: Ctx) -> str:
    kind = c.v("weight_type")
    if kind not in SCALINGS:
        raise Unconvertible(f"weight_type {kind!r}: {FIRST_GEN} had only {', '.join(SCALINGS)}")
    return SCALINGS[kind]


def combine(c: Ctx) -> str:
    return "one per frame" if c.v("unfold_batch") is True else "concat"


def noised(c: Ctx, cv, image):
    """The encoded noise negative of ``image`` when ``noise`` > 0 (a linked noise uses the stored value)."""
    amount = c.w("noise")
    value = amount.value if isinstance(amount, tuple) else amount
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0 or image is None:
        return None
    c.note(NOISE_NOTE)
    noisy = c.ref(c.add("IPANoiseNegative", type="shuffle", strength=amount, blur=0, seed_offset=0, image=image))
    return encode(c, cv, noisy)


def negative_of(c: Ctx, name: str):
    """The noise negative recorded for the EMBEDS wire feeding input ``name``, if any."""
    up = c.upstream(name)
    return c.e.facts.get(up[0].id, {}).get("negative") if up is not None else None


def apply(c: Ctx):
    """IPAdapterApply: Encode → Project → Weight → Apply (from Sept 2023 a CLIP_VISION_OUTPUT went straight in)."""
    ipa, _ = c.ipadapter()
    if c.linked("clip_vision_output") and not c.linked("image"):
        features, negative = c.src("clip_vision_output"), None
        c.note("clip_vision_output: ComfyUI's CLIP Vision Encode output goes to Project as it is")
    else:
        cv = c.clip_vision()
        features = encode(c, cv, c.src("image"))
        negative = noised(c, cv, c.src("image"))
    c.out(0, chain(c, model=c.src("model"), ipa=ipa, features=features, negative=negative, combine=combine(c),
                   weight=c.w("weight"), weight_type="linear", start_at=c.w("start_at"), end_at=c.w("end_at"),
                   embeds_scaling=scaling(c), attn_mask=c.src("attn_mask")))


def apply_encoded(c: Ctx):
    ipa, _ = c.ipadapter()
    c.out(0, chain(c, model=c.src("model"), ipa=ipa, features=c.src("embeds"), negative=negative_of(c, "embeds"),
                   combine=combine(c), weight=c.w("weight"), weight_type="linear", start_at=c.w("start_at"),
                   end_at=c.w("end_at"), embeds_scaling=scaling(c), attn_mask=c.src("attn_mask")))


def apply_faceid(c: Ctx):
    """IPAdapterApplyFaceID: its faceid_v2 switch and weight_v2 are FaceID Plus v2's shortcut and its scale."""
    ipa, _ = c.ipadapter()
    cv = c.src("clip_vision")
    if c.v("noise"):
        up = c.upstream("ipadapter")
        name = str(up[0].values.get("ipadapter_file") or "") if up is not None else ""
        if name and "plus" not in name.lower():
            c.note(f"noise {c.v('noise')}: no effect on a FaceID file without CLIP features ({name}), in theirs "
                   "either")
        else:
            c.lost(f"noise {c.v('noise')}: Project Face's negative is the reference's (a zero face embedding, zero "
                   "normalised pixels for Plus); theirs encoded a noised face crop for Plus")
    version = "v2" if c.v("faceid_v2") is True else "v1"
    model, _ = face_chain(c, ipa=ipa, cv=cv, combine=combine(c), faceid_version=version,
                          weight_faceidv2=c.w("weight_v2"), weight_type="linear", embeds_scaling=scaling(c))
    c.note("faceid_v2 applies to FaceID Plus files only (faceid_version on Project Face); their face crop for Plus "
           "was 256 px")
    c.out(0, model)


def tiles_masked(c: Ctx):
    """IPAdapterTilesMasked (experimental, Feb 2024): 224 px tiles across the short side plus the whole image."""
    ipa, _ = c.ipadapter()
    cv = c.clip_vision()
    key = c.add("IPAApplyTiled", main=True, model=c.src("model"), ipadapter=ipa, clip_vision=cv,
                image=c.src("image"), weight=c.w("weight"), placement="where the tile lies",
                start_at=c.w("start_at"), end_at=c.w("end_at"), tile_size=0, weight_type="linear")
    c.note("tiles: ours are squares of the reference's short side, each acting where it lies; theirs cut "
           "short_side_tiles tiles of 224 px across the short side and added the whole image at full weight")
    if c.v("short_side_tiles") != 1:
        c.lost(f"short_side_tiles {c.v('short_side_tiles')}: set tile_size to the reference's short side / "
               f"{c.v('short_side_tiles')} for tiles of that size")
    if c.v("tile_weight") != 0.6 and c.v("short_side_tiles") != 1:
        c.lost(f"tile_weight {c.v('tile_weight')} (IP-Adapter Tiled weighs every tile by weight)")
    if c.v("noise"):
        c.lost(f"noise {c.v('noise')} (IP-Adapter Tiled has no negative image input)")
    if c.v("weight_type") != "original":
        c.lost(f"weight_type {c.v('weight_type')} (IP-Adapter Tiled scales V only)")
    c.out(0, c.ref(key))


def encoder(c: Ctx):
    """IPAdapterEncoder of the first generation: up to four images, each weighted by weight_k² (theirs squares the
    slider: w·(0.1 + (w - 0.1))), their features concatenated; Project picks the features the adapter needs."""
    cv = c.src("clip_vision")
    images = [(k, c.src(f"image_{k}")) for k in range(1, 5) if c.linked(f"image_{k}")]
    if not images:
        raise Unconvertible("image_1 is not connected")
    weights = {k: c.w(f"weight_{k}") for k, _ in images}
    squared = {k: (w * w if not isinstance(w, tuple) else w) for k, w in weights.items()}
    for k, w in weights.items():
        if isinstance(w, tuple):
            c.lost(f"weight_{k} is linked: theirs squares it, the link gives weight_{k} unsquared here")
    features = [encode(c, cv, image) for _, image in images]
    if len(features) == 1 and squared[images[0][0]] == 1:
        out = features[0]
    else:
        inputs = {f"features_{i}": f for i, f in enumerate(features, 1)}
        out = c.ref(c.add("IPACombineFeatures", main=True, method="concat", **inputs,
                          **{f"weight_{i}": round(squared[k], 6) if not isinstance(squared[k], tuple) else squared[k]
                             for i, (k, _) in enumerate(images, 1)}))
    negatives = [noised(c, cv, image) for _, image in images]
    if any(n is not None for n in negatives):
        negative = negatives[0] if len(negatives) == 1 else c.ref(c.add(
            "IPACombineFeatures", method="concat", **{f"features_{i}": n for i, n in enumerate(negatives, 1)}))
        c.e.facts[c.node.id] = {"negative": negative}
    c.note("ipadapter_plus is not needed: Project takes the features its adapter needs")
    c.out(0, out)


def batch_embeds(c: Ctx):
    """IPAdapterBatchEmbeds: the images of both wires, one prompt (their torch.cat on the image axis)."""
    out = c.ref(c.add("IPACombineFeatures", main=True, method="concat", features_1=c.src("embed1"),
                      features_2=c.src("embed2")))
    negatives = [negative_of(c, name) for name in ("embed1", "embed2")]
    if all(n is not None for n in negatives):
        c.e.facts[c.node.id] = {"negative": c.ref(c.add("IPACombineFeatures", method="concat",
                                                        features_1=negatives[0], features_2=negatives[1]))}
    elif any(n is not None for n in negatives):
        c.lost("the noise negative of one wire: the batch gets Project's default negative")
    c.out(0, out)


def insightface_loader(c: Ctx):
    c.out(0, c.ref(c.add("IPAFaceAnalysisLoader", main=True, pack="buffalo_l",
                         provider=PROVIDERS.get(c.v("provider"), "auto"), backend="onnxruntime")))
    c.note("buffalo_l, as their loader; onnxruntime reads the same models/insightface/models/buffalo_l files")


def prep_for_insightface(c: Ctx):
    """PrepImageForInsightFace: a square crop resized to 640 px (580 plus a 30 px white border with pad_around).
    Our Face Analysis finds faces in the picture as it is, at several sizes, so the picture goes straight on."""
    c.note("Face Analysis here searches the whole picture at several sizes: their square crop at crop_position and "
           "the white border are not made, so a face outside their crop is found here too")
    if c.v("sharpening"):
        c.lost(f"sharpening {c.v('sharpening')}")
    c.out(0, c.src("image"))


def clip_vision_encode(c: Ctx):
    """IPAdapterCLIPVisionEncode (September 2023): the reference's CLIP features, as Encode Image gives them."""
    c.out(0, c.ref(c.add("IPAEncodeImage", main=True, clip_vision=c.src("clip_vision"), image=c.src("image"),
                         crop="center", interpolation="default", sharpening=0.0, encode_batch_size=0)))


V1_RULES = {
    "IPAdapterCLIPVisionEncode": clip_vision_encode,
    "IPAdapterApply": apply,
    "IPAdapterApplyEncoded": apply_encoded,
    "IPAdapterApplyFaceID": apply_faceid,
    "IPAdapterTilesMasked": tiles_masked,
    "InsightFaceLoader": insightface_loader,
    "PrepImageForInsightFace": prep_for_insightface,
    "IPAdapterBatchEmbeds": batch_embeds,
    V1_ENCODER: encoder,
}
