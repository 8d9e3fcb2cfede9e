"""Workflows of ComfyUI_IPAdapter_plus's first generation (before its March 2024 rewrite) convert, without the host.

The graphs here are written from the old schemas (``convert/v1_nodes.py``, read from IPAdapterPlus.py at 6a411dc and
its earlier revisions), in both formats and with the widget counts of older releases; each converted graph equals the
graph of our nodes written out by hand for the same settings (their formulas: v1_rules.py's docstring). The
``first_generation`` scenario of plus_graphs.py also runs in the server (test_workflows_plus.py).
"""
from __future__ import annotations

import copy

import pytest

from ipadapter_ext.ip_adapter_core.convert import convert
from ipadapter_ext.ip_adapter_core.convert.plus_nodes import NODES as THEIR_SCHEMAS
from ipadapter_ext.ip_adapter_core.convert.v1_nodes import V1_ENCODER, V1_NODES, first_generation
from support.plus_graphs import (BASE_SD15, CLIP_H, IMAGES, MODEL, SCENARIOS, apply, canonical, core, encode, n,
                                 project, theirs, to_ui, weight)
from test_convert_flux import OBJECT_INFO as FLUX_INFO

SCALING = {"original": "V only", "linear": "K+V", "channel penalty": "K+mean(V) w/ C penalty"}
# the editor layout of the core nodes these graphs and plus_graphs.py's scenarios use (as test_convert_flux.py's)
OBJECT_INFO = {**FLUX_INFO, **{
    kind: {"input_order": {"required": [name for name, _ in sockets + widgets]},
           "input": {"required": {**{name: [t] for name, t in sockets}, **{name: [t] for name, t in widgets}}},
           "output": [t for _, t in outputs], "output_name": [o for o, _ in outputs]}
    for kind, sockets, widgets, outputs in [
        ("CheckpointLoaderSimple", [], [("ckpt_name", "COMBO")], [("MODEL", "MODEL"), ("CLIP", "CLIP"),
                                                                  ("VAE", "VAE")]),
        ("CLIPVisionLoader", [], [("clip_name", "COMBO")], [("CLIP_VISION", "CLIP_VISION")]),
        ("EmptyLatentImage", [], [("width", "INT"), ("height", "INT"), ("batch_size", "INT")],
         [("LATENT", "LATENT")]),
        ("LoadImage", [], [("image", "COMBO")], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
        ("KSampler", [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                      ("latent_image", "LATENT")],
         [("seed", "INT"), ("steps", "INT"), ("cfg", "FLOAT"), ("sampler_name", "COMBO"), ("scheduler", "COMBO"),
          ("denoise", "FLOAT")], [("LATENT", "LATENT")]),
        ("SaveLatent", [("samples", "LATENT")], [("filename_prefix", "STRING")], []),
        ("CLIPVisionEncode", [("clip_vision", "CLIP_VISION"), ("image", "IMAGE")], [("crop", "COMBO")],
         [("CLIP_VISION_OUTPUT", "CLIP_VISION_OUTPUT")]),
        ("SolidMask", [], [("value", "FLOAT"), ("width", "INT"), ("height", "INT")], [("MASK", "MASK")]),
        ("ImageBatch", [("image1", "IMAGE"), ("image2", "IMAGE")], [], [("IMAGE", "IMAGE")]),
    ]}}


def v1(kind, values=None, links=None, old=0):
    """A node of their first generation in API form (``theirs`` reads every schema the converter knows)."""
    node = theirs(kind, values, links, old)
    node["class_type"] = "IPAdapterEncoder" if kind == V1_ENCODER else kind
    return node


def base_graph():
    g = core("v1-5-pruned-emaonly.safetensors", MODEL)
    g["11"] = n("CLIPVisionLoader", clip_name=CLIP_H)
    g["20"] = v1("IPAdapterModelLoader", {"ipadapter_file": BASE_SD15})
    return g


def ours_base():
    o = core("v1-5-pruned-emaonly.safetensors", MODEL)
    o["11"] = n("CLIPVisionLoader", clip_name=CLIP_H)
    o["40"] = n("IPALoader", ipadapter_file=BASE_SD15)
    return o


# ---------------------------------------------------------------------------- apply nodes, every option

@pytest.mark.parametrize("weight_type", list(SCALING))
@pytest.mark.parametrize("unfold", [False, True])
def test_apply_becomes_the_chain(weight_type, unfold):
    g = base_graph()
    g["30"] = v1("IPAdapterApply", {"weight": 0.8, "weight_type": weight_type, "start_at": 0.1, "end_at": 0.9,
                                    "unfold_batch": unfold},
                 {"ipadapter": ["20", 0], "clip_vision": ["11", 0], "image": ["5", 0], "model": MODEL,
                  "attn_mask": ["6", 1]})
    g["7"]["inputs"]["model"] = ["30", 0]
    o = ours_base()
    o["41"] = encode(["11", 0], ["5", 0])
    o["42"] = project(["40", 0], ["41", 0], "one per frame" if unfold else "concat")
    o["43"] = weight(["42", 0], 0.8, "linear", 0.1, 0.9, SCALING[weight_type])
    o["44"] = apply(MODEL, ["40", 0], ["43", 0], mask=["6", 1])
    o["7"]["inputs"]["model"] = ["44", 0]
    converted, report = convert(g)
    assert report.complete, report.text()
    assert canonical(converted) == canonical(o), report.text()
    ui, ui_report = convert(to_ui(g, OBJECT_INFO))       # the editor's format: positional widgets, a reroute
    assert ui_report.format == "ui" and ui_report.complete, ui_report.text()
    assert {x["type"] for x in ui["nodes"]} >= {"IPALoader", "IPAEncodeImage", "IPAProject", "IPAWeight", "IPAApply"}
    assert not {x["type"] for x in ui["nodes"]} & set(V1_NODES)


@pytest.mark.parametrize("old", range(1, 6))
def test_older_apply_files_get_the_defaults(old):
    """IPAdapterApply's widgets were added one release after another (weight; noise; weight_type; start_at, end_at;
    unfold_batch): a file with the first k of them converts as one with the rest at their defaults."""
    def graph(drop):
        g = base_graph()
        g["30"] = v1("IPAdapterApply", {"weight": 0.6}, {"ipadapter": ["20", 0], "clip_vision": ["11", 0],
                                                         "image": ["5", 0], "model": MODEL}, old=drop)
        g["7"]["inputs"]["model"] = ["30", 0]
        return g
    full, _ = convert(graph(0))
    older, report = convert(graph(old))
    assert canonical(older) == canonical(full)
    assert len(report.converted[-1]["filled"]) == old, report.text()
    ui, _ = convert(to_ui(graph(old), OBJECT_INFO))      # UI files store the prefix positionally
    assert sorted(x["type"] for x in ui["nodes"]) == sorted(
        x["type"] for x in convert(to_ui(graph(0), OBJECT_INFO))[0]["nodes"])


def test_september_2023_apply_takes_clip_vision_output_and_mask():
    g = base_graph()
    g["12"] = n("CLIPVisionEncode", clip_vision=["11", 0], image=["5", 0], crop="center")
    g["30"] = {"class_type": "IPAdapterApply", "inputs": {"model": MODEL, "ipadapter": ["20", 0], "weight": 0.7,
                                                          "clip_vision_output": ["12", 0], "mask": ["6", 1]}}
    g["7"]["inputs"]["model"] = ["30", 0]
    o = ours_base()
    o["12"] = n("CLIPVisionEncode", clip_vision=["11", 0], image=["5", 0], crop="center")
    o["42"] = project(["40", 0], ["12", 0])
    o["43"] = weight(["42", 0], 0.7)
    o["44"] = apply(MODEL, ["40", 0], ["43", 0], mask=["6", 1])
    o["7"]["inputs"]["model"] = ["44", 0]
    converted, report = convert(g)
    assert canonical(converted) == canonical(o), report.text()


def test_september_2023_clip_vision_encode_node():
    g = base_graph()
    g["12"] = {"class_type": "IPAdapterCLIPVisionEncode", "inputs": {"clip_vision": ["11", 0], "image": ["5", 0]}}
    g["30"] = {"class_type": "IPAdapterApply", "inputs": {"model": MODEL, "ipadapter": ["20", 0], "weight": 1.0,
                                                          "clip_vision_output": ["12", 0]}}
    g["7"]["inputs"]["model"] = ["30", 0]
    o = ours_base()
    o["12"] = encode(["11", 0], ["5", 0])
    o["42"] = project(["40", 0], ["12", 0])
    o["43"] = weight(["42", 0])
    o["44"] = apply(MODEL, ["40", 0], ["43", 0])
    o["7"]["inputs"]["model"] = ["44", 0]
    converted, report = convert(g)
    assert report.complete and canonical(converted) == canonical(o), report.text()


def v1_graph(kind, values):
    """One first-generation node with every socket fed (their loader, encoder, a face loader, images, a mask)."""
    g = base_graph()
    g["31"] = v1(V1_ENCODER, {}, {"clip_vision": ["11", 0], "image_1": ["5", 0]})
    g["35"] = v1("InsightFaceLoader")
    feeds = {"IPADAPTER": ["20", 0], "CLIP_VISION": ["11", 0], "IMAGE": ["5", 0], "MODEL": MODEL,
             "EMBEDS": ["31", 0], "INSIGHTFACE": ["35", 0], "MASK": ["6", 1]}
    links = {name: feeds[t] for name, t in V1_NODES[kind].sockets if t in feeds and name != "clip_vision_output"}
    g["30"] = v1(kind, values, links)
    if V1_NODES[kind].outputs[0][1] == "MODEL":
        g["7"]["inputs"]["model"] = ["30", 0]
    return g


V1_OPTIONS = [(kind, w.name, option) for kind, schema in V1_NODES.items() for w in schema.widgets
              for option in (w.options or ((True, False) if isinstance(w.default, bool) else ()))]


@pytest.mark.parametrize("kind,widget,option", V1_OPTIONS, ids=[f"{k}.{w}={o}" for k, w, o in V1_OPTIONS])
def test_every_first_generation_option_converts(kind, widget, option):
    converted, report = convert(v1_graph(kind, {widget: option}))
    assert not report.kept and not report.dropped and "30" not in converted, report.text()
    scalings = [v["inputs"]["embeds_scaling"] for v in converted.values() if v["class_type"] == "IPAWeight"]
    if widget == "weight_type" and kind != "IPAdapterTilesMasked":
        assert scalings == [SCALING[option]], report.text()
    if widget == "unfold_batch":
        combine = [v["inputs"]["combine"] for v in converted.values() if v["class_type"] in ("IPAProject",
                                                                                             "IPAProjectFace")]
        assert combine == ["one per frame" if option else "concat"], report.text()


@pytest.mark.parametrize("kind", sorted(V1_NODES))
def test_every_first_generation_id_converts(kind):
    converted, report = convert(v1_graph(kind, {}))
    assert not report.kept and "30" not in converted, report.text()
    assert not {v["class_type"] for v in converted.values()} & (set(V1_NODES) | {"IPAdapterEncoder"})


def test_noise_becomes_a_noise_negative():
    g = base_graph()
    g["30"] = v1("IPAdapterApply", {"noise": 0.35}, {"ipadapter": ["20", 0], "clip_vision": ["11", 0],
                                                     "image": ["5", 0], "model": MODEL})
    g["7"]["inputs"]["model"] = ["30", 0]
    o = ours_base()
    o["41"] = encode(["11", 0], ["5", 0])
    o["45"] = n("IPANoiseNegative", image=["5", 0], type="shuffle", strength=0.35, blur=0, seed_offset=0)
    o["46"] = encode(["11", 0], ["45", 0])
    o["42"] = project(["40", 0], ["41", 0], negative=["46", 0])
    o["43"] = weight(["42", 0])
    o["44"] = apply(MODEL, ["40", 0], ["43", 0])
    o["7"]["inputs"]["model"] = ["44", 0]
    converted, report = convert(g)
    assert canonical(converted) == canonical(o), report.text()
    assert any("noise" in note for c in report.converted for note in c["notes"])


# ---------------------------------------------------------------------------- the EMBEDS wire

def test_encoder_batch_embeds_and_apply_encoded():
    """Their encoder squares each weight (w·(0.1 + (w - 0.1))); BatchEmbeds concatenates the images; a noise
    negative travels with the wire to the Apply node's Project."""
    g = base_graph()
    g["31"] = v1(V1_ENCODER, {"ipadapter_plus": False, "noise": 0.2, "weight_1": 0.5, "weight_2": 1.0},
                 {"clip_vision": ["11", 0], "image_1": ["5", 0], "image_2": ["6", 0]})
    g["32"] = v1(V1_ENCODER, {}, {"clip_vision": ["11", 0], "image_1": ["6", 0]})
    g["33"] = v1("IPAdapterBatchEmbeds", {}, {"embed1": ["31", 0], "embed2": ["32", 0]})
    g["30"] = v1("IPAdapterApplyEncoded", {"weight": 0.9, "weight_type": "linear"},
                 {"ipadapter": ["20", 0], "embeds": ["31", 0], "model": MODEL})
    g["34"] = v1("IPAdapterApplyEncoded", {}, {"ipadapter": ["20", 0], "embeds": ["33", 0], "model": ["30", 0]})
    g["7"]["inputs"]["model"] = ["34", 0]
    o = ours_base()
    o["50"] = encode(["11", 0], ["5", 0])
    o["51"] = encode(["11", 0], ["6", 0])
    o["52"] = n("IPACombineFeatures", method="concat", features_1=["50", 0], features_2=["51", 0], weight_1=0.25,
                weight_2=1.0, weight_3=1.0, weight_4=1.0, weight_5=1.0)
    o["53"] = n("IPANoiseNegative", image=["5", 0], type="shuffle", strength=0.2, blur=0, seed_offset=0)
    o["54"] = encode(["11", 0], ["53", 0])
    o["55"] = n("IPANoiseNegative", image=["6", 0], type="shuffle", strength=0.2, blur=0, seed_offset=0)
    o["56"] = encode(["11", 0], ["55", 0])
    o["57"] = n("IPACombineFeatures", method="concat", features_1=["54", 0], features_2=["56", 0], weight_1=1.0,
                weight_2=1.0, weight_3=1.0, weight_4=1.0, weight_5=1.0)
    o["60"] = encode(["11", 0], ["6", 0])
    o["61"] = n("IPACombineFeatures", method="concat", features_1=["52", 0], features_2=["60", 0], weight_1=1.0,
                weight_2=1.0, weight_3=1.0, weight_4=1.0, weight_5=1.0)
    o["70"] = project(["40", 0], ["52", 0], negative=["57", 0])
    o["71"] = weight(["70", 0], 0.9, scaling="K+V")
    o["72"] = apply(MODEL, ["40", 0], ["71", 0])
    o["73"] = project(["40", 0], ["61", 0])
    o["74"] = weight(["73", 0])
    o["75"] = apply(["72", 0], ["40", 0], ["74", 0])
    o["7"]["inputs"]["model"] = ["75", 0]
    converted, report = convert(g)
    assert canonical(converted) == canonical(o), report.text()
    # one wire had a noise negative, the other none: the batch says so
    assert any("noise negative" in lost for c in report.converted for lost in c["lost"]), report.text()


def test_save_and_load_embeds_of_either_generation():
    g = base_graph()
    g["31"] = v1(V1_ENCODER, {}, {"clip_vision": ["11", 0], "image_1": ["5", 0]})
    g["32"] = v1("IPAdapterSaveEmbeds", {"filename_prefix": "embeds/IPAdapter"}, {"embeds": ["31", 0]})
    g["33"] = v1("IPAdapterLoadEmbeds", {"embeds": "IPAdapter_00001_.ipadpt"})
    g["30"] = v1("IPAdapterApplyEncoded", {}, {"ipadapter": ["20", 0], "embeds": ["33", 0], "model": MODEL})
    g["7"]["inputs"]["model"] = ["30", 0]
    o = ours_base()
    o["50"] = encode(["11", 0], ["5", 0])
    o["51"] = n("IPASaveFeatures", image_features=["50", 0], filename_prefix="embeds/IPAdapter")
    o["52"] = n("IPALoadFeatures", features_file="IPAdapter_00001_.ipadpt")
    o["53"] = project(["40", 0], ["52", 0], negative=["52", 1])
    o["54"] = weight(["53", 0])
    o["55"] = apply(MODEL, ["40", 0], ["54", 0])
    o["7"]["inputs"]["model"] = ["55", 0]
    converted, report = convert(g)
    assert report.complete, report.text()
    assert canonical(converted) == canonical(o), report.text()


# ---------------------------------------------------------------------------- FaceID, tiles

@pytest.mark.parametrize("faceid_v2", [False, True])
def test_faceid_and_its_face_nodes(faceid_v2):
    g = base_graph()
    g["20"]["inputs"]["ipadapter_file"] = "ip-adapter-faceid-plusv2_sd15.bin"
    g["35"] = v1("InsightFaceLoader", {"provider": "CUDA"})
    g["36"] = v1("PrepImageForInsightFace", {"crop_position": "top", "pad_around": False}, {"image": ["5", 0]})
    g["30"] = v1("IPAdapterApplyFaceID", {"weight": 0.7, "faceid_v2": faceid_v2, "weight_v2": 1.5,
                                          "start_at": 0.2, "weight_type": "channel penalty"},
                 {"ipadapter": ["20", 0], "clip_vision": ["11", 0], "insightface": ["35", 0], "image": ["36", 0],
                  "model": MODEL})
    g["7"]["inputs"]["model"] = ["30", 0]
    o = ours_base()
    o["40"]["inputs"]["ipadapter_file"] = "ip-adapter-faceid-plusv2_sd15.bin"
    o["50"] = n("IPAFaceAnalysisLoader", pack="buffalo_l", provider="CUDA", backend="onnxruntime")
    o["51"] = n("IPAFaceAnalysis", face_analysis=["50", 0], image=["5", 0], choose="most confident", index=0,
                threshold=0.5)
    o["52"] = n("IPAProjectFace", ipadapter=["40", 0], faces=["51", 0], clip_vision=["11", 0], combine="concat",
                faceid_version="v2" if faceid_v2 else "v1", weight_faceidv2=1.5, lora_strength=0.0, image_weights="",
                weight_kolors=1.0)
    o["53"] = weight(["52", 0], 0.7, start=0.2, scaling="K+mean(V) w/ C penalty")
    o["54"] = apply(MODEL, ["40", 0], ["53", 0])
    o["7"]["inputs"]["model"] = ["54", 0]
    converted, report = convert(g)
    assert canonical(converted) == canonical(o), report.text()
    assert not report.kept and not report.dropped, report.text()


def test_tiles_masked_becomes_tiled():
    g = base_graph()
    g["30"] = v1("IPAdapterTilesMasked", {"short_side_tiles": 2},
                 {"ipadapter": ["20", 0], "clip_vision": ["11", 0], "image": ["5", 0], "model": MODEL})
    g["7"]["inputs"]["model"] = ["30", 0]
    converted, report = convert(g)
    tiled = [v for v in converted.values() if v["class_type"] == "IPAApplyTiled"]
    assert len(tiled) == 1 and tiled[0]["inputs"]["weight"] == 0.7 and tiled[0]["inputs"]["batch"] == "together"
    assert any("short_side_tiles" in lost for lost in report.converted[-1]["lost"]), report.text()


# ---------------------------------------------------------------------------- telling the generations apart

def test_the_encoder_generation_is_told_by_its_sockets_and_values():
    assert first_generation("IPAdapterEncoder", ["clip_vision", "image_1", "image_2"], [False, 0.0, 1.0]) == V1_ENCODER
    assert first_generation("IPAdapterEncoder", ["clip_vision", "image"], [True, 0.1]) == V1_ENCODER   # Sept 2023
    assert first_generation("IPAdapterEncoder", ["ipadapter", "image", "mask", "clip_vision"], [1.0]) \
        == "IPAdapterEncoder"
    assert first_generation("IPAdapterEncoder", [], [False, 0.0, 1.0]) == V1_ENCODER    # only the values say
    assert first_generation("IPAdapterEncoder", [], [0.8]) == "IPAdapterEncoder"
    assert first_generation("IPAdapterApply", ["clip_vision"], [1.0]) == "IPAdapterApply"
    # API format: the input names are the widget names too
    assert first_generation("IPAdapterEncoder", ["plus", "noise", "clip_vision", "image"], None) == V1_ENCODER


def test_a_current_encoder_still_converts_as_the_current_one():
    their, ours = SCENARIOS["embeds"]()
    converted, report = convert(copy.deepcopy(their))
    assert canonical(converted) == canonical(ours), report.text()


def test_first_generation_ids_are_in_the_docs_table():
    """docs/converting.md's node-by-node table names every first-generation id (test_docs checks the others)."""
    from support.package_alias import REPO_ROOT
    text = (REPO_ROOT / "docs" / "converting.md").read_text(encoding="utf-8")
    for kind in V1_NODES:
        assert f"`{kind.split(' ')[0]}`" in text, kind
    assert "first generation" in text
    assert IMAGES  # the scenario images exist for the server run


# ---------------------------------------------------------------------------- hostile values

NEWLY_MAPPED = ("IPAdapterTiledBatch", "IPAdapterSaveEmbeds", "IPAdapterLoadEmbeds", "IPAdapterCombineWeights",
                "IPAdapterWeightsFromStrategy", "IPAdapterPromptScheduleFromWeightsStrategy", "IPAdapterWeights")


@pytest.mark.parametrize("kind", sorted(V1_NODES) + list(NEWLY_MAPPED))
def test_hostile_widget_values_end_in_a_kept_node_or_a_value(kind):
    """Every widget of every first-generation rule and of the rules new in this release, set to each hostile value
    (test_convert_flux.py's list), in both formats: the conversion finishes, and the node converts (the value goes
    on; our nodes check it where it enters) or stays with a reason."""
    from test_convert import graph_with
    from test_convert_flux import HOSTILE
    schema = V1_NODES.get(kind) or THEIR_SCHEMAS[kind]
    for widget in schema.widgets:
        for value in HOSTILE:
            g = v1_graph(kind, {}) if kind in V1_NODES else graph_with(kind)
            g["30"]["inputs"][widget.name] = value
            for workflow in (g, to_ui(g, OBJECT_INFO)):
                _, report = convert(copy.deepcopy(workflow))
                assert all(k["reason"] for k in report.kept), (kind, widget.name, value)
                assert any(c["id"] == "30" for c in report.converted + report.kept), report.text()


@pytest.mark.parametrize("interpolation,ours", [("lanczos", "lanczos"), ("nearest-exact", "nearest"),
                                                ("area", "area"), ("bicubic", "bicubic")])
def test_prep_image_of_october_2023_with_its_lower_case_filters(interpolation, ours):
    """PrepImageForClipVision of 27 Sept - 12 Oct 2023: torch's mode names and a fourth widget (add_weight)."""
    g = base_graph()
    g["30"] = {"class_type": "PrepImageForClipVision",
               "inputs": {"image": ["5", 0], "interpolation": interpolation, "crop_position": "top",
                          "sharpening": 0.0, "add_weight": False}}
    g["9"]["inputs"]["images"] = ["30", 0]
    converted, report = convert(g)
    prep = [v for v in converted.values() if v["class_type"] == "IPAPrepareReference"]
    assert [p["inputs"]["interpolation"] for p in prep] == [ours], report.text()
    ui = to_ui(g, OBJECT_INFO)                    # positional: the fourth value is beyond today's widgets
    node = next(x for x in ui["nodes"] if x["type"] == "PrepImageForClipVision")
    node["widgets_values"].append(False)
    out, ui_report = convert(ui)
    assert [x["widgets_values"][0] for x in out["nodes"] if x["type"] == "IPAPrepareReference"] == [ours]

