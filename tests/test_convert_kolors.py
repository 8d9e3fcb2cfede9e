"""Kolors in the converter (ip_adapter_core/convert): their Kolors nodes become ours, without the host.

- IPAdapterUnifiedLoaderCommunity (Composition, Kolors) becomes IP-Adapter Preset Loader (COMPOSITION, KOLORS) by
  the rule of their IPAdapterUnifiedLoader; a preset it does not know keeps the node, named.
- IPAdapterFaceIDKolors becomes the chain of their IPAdapterFaceID (Face Analysis → Project Face → Weight → Apply)
  with faceid_version v2 and weight_kolors on Project Face; the report says why the face inputs differ.
- Their image_negative of a FaceID node (IPAdapterFaceID, its Batch, IPAdapterFaceIDKolors) feeds Project Face's
  negative_image for a FaceID Plus file (theirs encodes it for the CLIP part of the negative); for another FaceID file
  it is not linked (theirs ignores it too), and where the file is not known here it is reported as not kept.
- Their two Kolors examples (``IPADAPTER_PLUS_EXAMPLES``, see test_convert.py): no node of theirs stays, every
  widget lands where it should (FaceIDv2_Kolors' IPAdapter Noise image in Project Face's negative_image), and the
  Kolors host's nodes (MinusZone's loaders and ChatGLM3 encoders) and the
  other packs' stay as they were.
"""
from __future__ import annotations

import json

import pytest

from ipadapter_ext.ip_adapter_core.convert import THEIR_NODE_IDS, convert
from ipadapter_ext.ip_adapter_core.convert.our_nodes import SPECS
from ipadapter_ext.ip_adapter_core.convert.rules import NOT_HERE, RULES
from support.plus_graphs import MODEL, SDXL_CKPT, apply, canonical, core, encode, n, project, theirs, weight
from test_convert import their_examples

KOLORS_FACEID, KOLORS_PLUS = "IPAdapter_FaceIDv2_Kolors.json", "ipadapter_kolors.json"
FACEID_FILE, PLUS_FILE = "Kolors-IP-Adapter-FaceID-Plus.bin", "Kolors-IP-Adapter-Plus.bin"
CLIP_L336 = "clip-vit-large-patch14-336.bin"
# the examples' nodes of other packs: the Kolors host (ComfyUI-Kolors-MZ) and comfyui_essentials
OTHER_PACKS = {"MZ_KolorsUNETLoader", "MZ_KolorsUNETLoaderV2", "MZ_ChatGLM3Loader", "MZ_ChatGLM3", "MZ_ChatGLM3_V2",
               "ImageRandomTransform+"}


def test_their_kolors_node_ids_have_rules():
    for kind in ("IPAdapterUnifiedLoaderCommunity", "IPAdapterFaceIDKolors"):
        assert kind in RULES and kind not in NOT_HERE, kind


# ---------------------------------------------------------------------------- the community preset loader

def community_graph(kind, preset, reuse=False):
    """Their (community) preset loader feeding IPAdapterAdvanced; ``reuse``: its ipadapter input linked too."""
    g = core(SDXL_CKPT, ["30", 0])
    g["20"] = theirs(kind, {"preset": preset}, {"model": MODEL})
    if reuse:
        g["21"] = theirs("IPAdapterUnifiedLoader", {"preset": "PLUS (high strength)"}, {"model": MODEL})
        g["20"]["inputs"]["ipadapter"] = ["21", 1]
    g["30"] = theirs("IPAdapterAdvanced", {"weight": 0.7}, {"model": ["20", 0], "ipadapter": ["20", 1],
                                                            "image": ["5", 0]})
    return g


@pytest.mark.parametrize("preset,ours", [("Composition", "COMPOSITION"), ("Kolors", "KOLORS")])
def test_community_loader_becomes_the_preset_loader(preset, ours):
    want = core(SDXL_CKPT, ["44", 0])
    want["40"] = n("IPAUnifiedLoader", model=MODEL, preset=ours)
    want["41"] = encode(["40", 1], ["5", 0])
    want["42"] = project(["40", 0], ["41", 0])
    want["43"] = weight(["42", 0], 0.7)
    want["44"] = apply(MODEL, ["40", 0], ["43", 0])
    converted, report = convert(community_graph("IPAdapterUnifiedLoaderCommunity", preset))
    assert report.complete and canonical(converted) == canonical(want), report.text()
    notes = next(c["notes"] for c in report.converted if c["id"] == "20")
    assert any("'composition'" in note for note in notes) == (ours == "COMPOSITION"), notes


def test_community_loader_takes_the_unified_loaders_path():
    """The same graph, notes and reused-pipeline input as their IPAdapterUnifiedLoader gives; only the preset
    differs (and COMPOSITION's note on file names)."""
    community, c_report = convert(community_graph("IPAdapterUnifiedLoaderCommunity", "Kolors", reuse=True))
    unified, u_report = convert(community_graph("IPAdapterUnifiedLoader", "PLUS (high strength)", reuse=True))
    kolors = [v for v in community.values() if v["class_type"] == "IPAUnifiedLoader" and
              v["inputs"]["preset"] == "KOLORS"]
    assert len(kolors) == 1
    kolors[0]["inputs"]["preset"] = "PLUS"
    assert canonical(community) == canonical(unified)
    c_notes, u_notes = (next(c["notes"] for c in r.converted if c["id"] == "20") for r in (c_report, u_report))
    assert c_notes == u_notes and any("ipadapter input" in note for note in c_notes), c_notes


def test_an_unknown_community_preset_stays_named():
    g = community_graph("IPAdapterUnifiedLoaderCommunity", "Style (a later release)")
    converted, report = convert(g)
    kept = {k["id"]: k["reason"] for k in report.kept}
    assert "'Style (a later release)'" in kept["20"] and converted["20"] == g["20"], report.text()


# ---------------------------------------------------------------------------- FaceID Kolors

def test_faceid_kolors_becomes_the_face_chain():
    """Every widget: weight_faceidv2 as they pass it, weight_kolors (here from a primitive) on Project Face,
    faceid_version v2; their face_image output is Face Analysis' face_crops, as for IPAdapterFaceID."""
    their = core(SDXL_CKPT, ["30", 0])
    their["11"] = n("CLIPVisionLoader", clip_name=CLIP_L336)
    their["12"] = n("PrimitiveFloat", value=0.6)
    their["13"] = n("PreviewImage", images=["30", 1])
    their["20"] = theirs("IPAdapterModelLoader", {"ipadapter_file": FACEID_FILE})
    their["21"] = theirs("IPAdapterInsightFaceLoader", {"provider": "CUDA", "model_name": "antelopev2"})
    their["30"] = theirs("IPAdapterFaceIDKolors",
                         {"weight": 0.8, "weight_faceidv2": 1.2, "weight_type": "ease in",
                          "combine_embeds": "norm average", "start_at": 0.1, "end_at": 0.9, "embeds_scaling": "K+V"},
                         {"model": MODEL, "ipadapter": ["20", 0], "image": ["5", 0], "clip_vision": ["11", 0],
                          "insightface": ["21", 0], "weight_kolors": ["12", 0]})
    want = core(SDXL_CKPT, ["45", 0])
    want["11"], want["12"] = their["11"], their["12"]
    want["13"] = n("PreviewImage", images=["42", 1])
    want["40"] = n("IPALoader", ipadapter_file=FACEID_FILE)
    want["41"] = n("IPAFaceAnalysisLoader", pack="antelopev2", provider="CUDA", backend="onnxruntime")
    want["42"] = n("IPAFaceAnalysis", face_analysis=["41", 0], image=["5", 0], choose="most confident", index=0,
                   threshold=0.5)
    want["43"] = n("IPAProjectFace", ipadapter=["40", 0], faces=["42", 0], clip_vision=["11", 0],
                   combine="norm average", faceid_version="v2", weight_faceidv2=1.2, lora_strength=0.0,
                   image_weights="", weight_kolors=["12", 0])
    want["44"] = weight(["43", 0], 0.8, "ease in", 0.1, 0.9, "K+V")
    want["45"] = apply(MODEL, ["40", 0], ["44", 0])
    converted, report = convert(their)
    assert report.complete and canonical(converted) == canonical(want), report.text()
    notes = " ".join(next(c["notes"] for c in report.converted if c["id"] == "30"))
    assert "raw embedding" in notes and "square box" in notes and "face_image" in notes, notes
    assert "lora_strength" not in notes, notes     # Kolors FaceID Plus has no LoRA to speak of


def test_faceid_kolors_without_a_used_face_image_says_nothing_of_it():
    g = core(SDXL_CKPT, ["30", 0])
    g["20"] = theirs("IPAdapterModelLoader", {"ipadapter_file": FACEID_FILE})
    g["30"] = theirs("IPAdapterFaceIDKolors", {}, {"model": MODEL, "ipadapter": ["20", 0], "image": ["5", 0]})
    converted, report = convert(g)
    face = next(v for v in converted.values() if v["class_type"] == "IPAProjectFace")["inputs"]
    assert (face["faceid_version"], face["weight_faceidv2"], face["weight_kolors"]) == ("v2", 1.0, 1.0)
    notes = " ".join(next(c["notes"] for c in report.converted if c["id"] == "30"))
    assert "face_image" not in notes and "insightface: not connected" in notes, notes


# ---------------------------------------------------------------------------- image_negative of their FaceID nodes

def negative_graph(kind, loader):
    """Their FaceID node ``kind`` fed by ``loader`` (their model loader or FaceID preset loader, node 20), with an
    image_negative from their IPAdapter Noise (node 25)."""
    g = core(SDXL_CKPT, ["30", 0])
    g["20"] = loader
    g["25"] = theirs("IPAdapterNoise", {"type": "gaussian", "strength": 0.6, "blur": 0}, {})
    ipa = ["20", 1] if loader["class_type"] == "IPAdapterUnifiedLoaderFaceID" else ["20", 0]
    g["30"] = theirs(kind, {}, {"model": MODEL, "ipadapter": ipa, "image": ["5", 0], "image_negative": ["25", 0]})
    return g


def converted_negative(g):
    """(what feeds Project Face's negative_image, the noise node that replaced theirs, report, notes of node 30)."""
    converted, report = convert(g)
    face = next(v for v in converted.values() if v["class_type"] == "IPAProjectFace")["inputs"]
    noise = [k for k, v in converted.items() if v["class_type"] == "IPANoiseNegative"]
    notes = " ".join(next(c["notes"] for c in report.converted if c["id"] == "30"))
    return face.get("negative_image"), noise, report, notes


def model_loader(name):
    return theirs("IPAdapterModelLoader", {"ipadapter_file": name})


@pytest.mark.parametrize("kind,loader", [
    ("IPAdapterFaceIDKolors", model_loader(FACEID_FILE)),
    ("IPAdapterFaceIDKolors", model_loader("kolors_face.bin")),     # Kolors' one FaceID file is FaceID Plus
    ("IPAdapterFaceID", model_loader("ip-adapter-faceid-plusv2_sdxl.bin")),
    ("IPAAdapterFaceIDBatch", model_loader("ip-adapter-faceid-plus_sd15.bin")),
    ("IPAdapterFaceID", theirs("IPAdapterUnifiedLoaderFaceID", {"preset": "FACEID PLUS V2"}, {"model": MODEL})),
], ids=["kolors", "kolors-renamed", "faceid-plusv2", "batch-plus", "preset-plus-v2"])
def test_image_negative_of_faceid_plus_feeds_negative_image(kind, loader):
    """ipadapter_execute: for FaceID Plus img_uncond_embeds encodes image_negative (penultimate states), then
    get_image_embeds_faceid_plus pairs them with a zero face embedding: Project Face's negative_image."""
    linked, noise, report, notes = converted_negative(negative_graph(kind, loader))
    assert report.complete and len(noise) == 1 and linked == [noise[0], 0], report.text()
    assert "negative_image" in notes and "zero normalised pixels" not in notes and "zero CLIP" not in notes, notes


@pytest.mark.parametrize("loader", [
    model_loader("ip-adapter-faceid_sd15.bin"),
    model_loader("ip-adapter-faceid-portrait_sd15.bin"),
    theirs("IPAdapterUnifiedLoaderFaceID", {"preset": "FACEID PORTRAIT (style transfer)"}, {"model": MODEL}),
], ids=["faceid", "portrait", "preset-portrait"])
def test_image_negative_of_other_faceid_files_is_not_linked(loader):
    """Theirs ignores image_negative without CLIP features (img_uncond_embeds = zeros): nothing lost, a note."""
    linked, _, report, notes = converted_negative(negative_graph("IPAdapterFaceID", loader))
    assert linked is None and report.complete, report.text()
    assert "image_negative: no effect" in notes, notes


def test_image_negative_of_an_unknown_faceid_file_is_reported():
    """An adapter whose file the converter cannot tell (a preset loader that names no FaceID file): not linked, and
    reported as not kept, with where to connect it."""
    g = negative_graph("IPAdapterFaceID", theirs("IPAdapterUnifiedLoader", {"preset": "PLUS (high strength)"},
                                                 {"model": MODEL}))
    g["30"]["inputs"]["ipadapter"] = ["20", 1]
    linked, _, report, _ = converted_negative(g)
    record = next(c for c in report.converted if c["id"] == "30")
    assert linked is None and not report.complete, report.text()
    assert [lost.split(":")[0] for lost in record["lost"]] == ["image_negative"], record
    assert "negative_image" in record["lost"][0], record


# ---------------------------------------------------------------------------- their two Kolors examples

@pytest.fixture(scope="module")
def examples():
    folder = their_examples()
    if folder is None:
        pytest.skip("THEIR KOLORS EXAMPLES NOT CHECKED: IPADAPTER_PLUS_EXAMPLES is not set to a folder with "
                    "ComfyUI_IPAdapter_plus's examples/*.json (docs/testing.md; .ci/run sets it in CI)")
    return folder


def convert_example(folder, name):
    workflow = json.loads((folder / name).read_text(encoding="utf-8"))
    out, report = convert(workflow)
    return workflow, out, report


class Graph:
    """A UI file read for the tests: nodes by id, what feeds an input, widget values by name (our nodes)."""

    def __init__(self, workflow):
        self.nodes = {node["id"]: node for node in workflow["nodes"]}
        self.links = {link[0]: link for link in workflow["links"]}

    def source(self, node, name):
        """The node that feeds input ``name`` of ``node`` (None: unconnected)."""
        link = next((i.get("link") for i in node.get("inputs") or [] if i["name"] == name), None)
        return None if link is None else self.nodes[self.links[link][1]]

    @staticmethod
    def widgets(node) -> dict:
        return dict(zip(SPECS[node["type"]].widgets, node["widgets_values"]))


def unlinked(node) -> dict:
    """A node without its link ids and position (a conversion renumbers links and moves nodes aside)."""
    out = dict(node)
    out["inputs"] = [{k: v for k, v in i.items() if k != "link"} for i in node.get("inputs") or []]
    out["outputs"] = [{k: v for k, v in o.items() if k != "links"} for o in node.get("outputs") or []]
    out.pop("pos", None)
    return out


@pytest.mark.parametrize("name", [KOLORS_FACEID, KOLORS_PLUS])
def test_kolors_examples_keep_no_node_of_theirs(examples, name):
    workflow, out, report = convert_example(examples, name)
    assert report.converted and not report.kept and not report.dropped, report.text()
    assert not {node["type"] for node in out["nodes"]} & set(THEIR_NODE_IDS), report.text()
    others = [node for node in workflow["nodes"] if node["type"] in OTHER_PACKS]
    after = {node["id"]: node for node in out["nodes"]}
    assert others and all(unlinked(after[node["id"]]) == unlinked(node) for node in others)


def test_faceid_kolors_example_maps_every_widget(examples):
    """Their widgets [1, 0.95, 0.85, 'linear', 'average', 0, 1, 'V only'] (weight, weight_faceidv2, weight_kolors,
    weight_type, combine_embeds, start_at, end_at, embeds_scaling); image_negative, from their IPAdapter Noise
    ['gaussian', 0.6, 0], is IP-Adapter Noise Negative's image in Project Face's negative_image."""
    workflow, out, report = convert_example(examples, KOLORS_FACEID)
    g = Graph(out)
    apply_node = g.source(g.nodes[99], "model")                      # their KSampler
    assert apply_node["type"] == "IPAApply"
    assert g.source(apply_node, "model")["type"] == "MZ_KolorsUNETLoaderV2"
    assert g.widgets(g.source(apply_node, "ipadapter")) == {"ipadapter_file": FACEID_FILE}
    weight_node = g.source(apply_node, "embeds")
    assert g.widgets(weight_node) == {"weight": 1, "blocks": "all", "custom_blocks": "", "start_at": 0, "end_at": 1,
                                      "weight_type": "linear", "embeds_scaling": "V only", "style_boost": 1.0,
                                      "composition_boost": 1.0}
    face = g.source(weight_node, "embeds")
    assert g.widgets(face) == {"combine": "average", "faceid_version": "v2", "weight_faceidv2": pytest.approx(0.95),
                               "lora_strength": 0.0, "image_weights": "", "weight_kolors": 0.85}
    assert g.source(face, "clip_vision")["widgets_values"] == [CLIP_L336]
    analysis = g.source(face, "faces")
    assert g.widgets(analysis)["choose"] == "most confident"
    assert g.source(analysis, "image")["type"] == "ImageBatch"
    assert g.widgets(g.source(analysis, "face_analysis")) == {"pack": "antelopev2", "provider": "CPU",
                                                              "backend": "onnxruntime"}
    noise = g.source(face, "negative_image")
    assert noise is not None and noise["type"] == "IPANoiseNegative", report.text()
    assert g.widgets(noise) == {"type": "gaussian", "strength": 0.6, "blur": 0, "seed_offset": 0}
    assert g.source(noise, "image") is None                          # their image_optional is unconnected too
    assert report.complete and all(not c["lost"] for c in report.converted), report.text()
    assert "Kolors' own pipeline" in report.text() and "raw embedding" in report.text(), report.text()


def test_advanced_on_a_kolors_model_example_maps_every_widget(examples):
    """IPAdapterAdvanced [1, 'style transfer precise', 'concat', 0, 1, 'V only'] on Kolors-IP-Adapter-Plus, loaded
    by their model loader (which refused Kolors file names before)."""
    _, out, report = convert_example(examples, KOLORS_PLUS)
    assert report.complete, report.text()
    g = Graph(out)
    apply_node = g.source(g.nodes[79], "model")                      # their KSampler
    assert apply_node["type"] == "IPAApply"
    assert g.source(apply_node, "model")["type"] == "MZ_KolorsUNETLoader"
    assert g.widgets(g.source(apply_node, "ipadapter")) == {"ipadapter_file": PLUS_FILE}
    weight_node = g.source(apply_node, "embeds")
    assert g.widgets(weight_node) == {"weight": 1, "blocks": "all", "custom_blocks": "", "start_at": 0, "end_at": 1,
                                      "weight_type": "style transfer precise", "embeds_scaling": "V only",
                                      "style_boost": 1.0, "composition_boost": 1.0}
    proj = g.source(weight_node, "embeds")
    assert g.widgets(proj) == {"combine": "concat", "image_weights": ""}
    assert g.source(proj, "negative_features") is None
    features = g.source(proj, "image_features")
    assert g.source(features, "clip_vision")["widgets_values"] == [CLIP_L336]
    assert g.source(features, "image")["widgets_values"][0] == "cga_pixels.png"
