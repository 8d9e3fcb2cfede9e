"""The ComfyUI_IPAdapter_plus workflow converter (ip_adapter_core/convert), without the host.

- Each scenario of tests/plus_graphs.py, converted, equals the graph of our nodes written out by hand.
- Every node id of theirs has a rule or a stated reason to stay; every option value of every node is
  converted at least once and lands on the value written here (from their code, IPAdapterPlus.py);
  older files get the defaults; nodes of other packs and the editor's own are left untouched.
- (λ per layer against their formulas: test_convert_lambda.py; runs in the server: test_workflows_plus.py;
  the editor: test_browser_convert.py.)
- The command line script writes the same graph, prints the report, and exits 1 / 2 as documented.
- Their own 21 example files, when present (``IPADAPTER_PLUS_EXAMPLES``; .ci/run sets it to the copy beside the
  repository in CI, ``../shared/third_party/ComfyUI_IPAdapter_plus/examples``):
  each converts as listed in EXAMPLES (all 21 fully: no node of theirs kept, no link dropped, nothing lost).
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipadapter_ext.ip_adapter_core.convert import THEIR_NODE_IDS, ConversionError, convert
from ipadapter_ext.ip_adapter_core.convert.flux_nodes import FLUX_NODES
from ipadapter_ext.ip_adapter_core.convert.plus_nodes import NODES as THEIR_NODES
from ipadapter_ext.ip_adapter_core.convert.rules import NOT_HERE, RULES
from ipadapter_ext.ip_adapter_core.convert.v1_nodes import V1_NODES
from support.plus_graphs import LATER_PRESET, SCENARIOS, canonical, core, staying_loader, theirs

REPO = Path(__file__).resolve().parent.parent
MODEL = ["1", 0]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_converts_to_the_hand_built_graph(name):
    their, ours = SCENARIOS[name]()
    converted, report = convert(their)
    assert report.format == "api" and not report.kept and not report.dropped, report.text()
    assert canonical(converted) == canonical(ours), report.text()


def test_every_node_id_has_a_rule_or_a_reason():
    """ComfyUI_IPAdapter_plus's 37 node ids, its first generation's 9 (test_convert_v1.py) and the Flux packs' 7
    (test_convert_flux.py)."""
    assert set(THEIR_NODE_IDS) == set(THEIR_NODES) | set(V1_NODES) | set(FLUX_NODES)
    assert len(THEIR_NODE_IDS) == 37 + 9 + 7
    assert set(RULES) | set(NOT_HERE) == set(THEIR_NODE_IDS)
    assert not set(RULES) & set(NOT_HERE)
    assert all(reason for reason in NOT_HERE.values())


# ---------------------------------------------------------------------------- every option value

def graph_with(kind, values=None, extra=None):
    """A small graph around one node of theirs: its MODEL/IPADAPTER/IMAGE/EMBEDS/params sockets linked."""
    g = core("v1-5-pruned-emaonly.safetensors", MODEL)
    g["20"] = theirs("IPAdapterUnifiedLoader", {"preset": "PLUS (high strength)"}, {"model": MODEL})
    g["21"] = theirs("IPAdapterEncoder", {}, {"ipadapter": ["20", 1], "image": ["5", 0]})
    g["22"] = theirs("IPAdapterRegionalConditioning", {}, {"image": ["5", 0]})
    g["23"] = theirs("IPAdapterWeights", {}, {})
    links = {}
    for name, kind_ in THEIR_NODES[kind].sockets:
        src = {"MODEL": MODEL, "IPADAPTER": ["20", 1], "IMAGE": ["5", 0], "EMBEDS": ["21", 0],
               "IPADAPTER_PARAMS": ["22", 0], "WEIGHTS_STRATEGY": ["23", 5]}.get(kind_)
        if src and name not in ("image_negative", "image_composition", "neg_embed") and not name.startswith(
                ("embed2", "embed3", "embed4", "embed5", "params_2", "params_3", "params_4", "params_5")):
            links[name] = src
    g["30"] = theirs(kind, values, links)
    g["30"]["inputs"].update(extra or {})
    if kind == "IPAdapterRegionalConditioning":   # its settings act through From Params
        g["31"] = theirs("IPAdapterFromParams", {}, {"model": MODEL, "ipadapter": ["20", 1],
                                                     "ipadapter_params": ["30", 0]})
    outputs = THEIR_NODES[kind].outputs
    g["7"]["inputs"]["model"] = ["30", 0] if outputs and outputs[0][1] == "MODEL" else MODEL
    return g


def our_nodes(api, kind):
    return [v for k, v in sorted(api.items(), key=lambda kv: int(kv[0])) if v["class_type"] == kind]


SIMPLE_WEIGHT_TYPES = {"standard": "linear", "prompt is more important": "ease out", "style transfer": "style transfer"}
PRESETS = {"LIGHT - SD1.5 only (low strength)": "LIGHT", "STANDARD (medium strength)": "STANDARD",
           "VIT-G (medium strength)": "VIT-G", "PLUS (high strength)": "PLUS", "PLUS FACE (portraits)": "PLUS FACE",
           "FULL FACE - SD1.5 only (portraits stronger)": "FULL FACE",
           "Composition": "COMPOSITION", "Kolors": "KOLORS"}   # the last two: IPAdapterUnifiedLoaderCommunity's
INTERPOLATIONS = {"LANCZOS": "lanczos", "BICUBIC": "bicubic", "HAMMING": "bilinear", "BILINEAR": "bilinear",
                  "BOX": "area", "NEAREST": "nearest"}
TIMINGS = {"linear": "linear", "ease_in": "ease out", "ease_out": "ease in", "ease_in_out": "ease in-out",
           "random": "random"}
TILED = {"IPAdapterTiled", "IPAdapterTiledBatch"}
FACEID_PRESETS = {"FACEID": "FACEID", "FACEID PLUS - SD1.5 only": "FACEID PLUS", "FACEID PLUS V2": "FACEID PLUS V2",
                  "FACEID PORTRAIT (style transfer)": "FACEID PORTRAIT",
                  "FACEID PORTRAIT UNNORM - SDXL only (strong)": "FACEID PORTRAIT UNNORM"}
PROVIDERS = {"CPU": "CPU", "CUDA": "CUDA", "ROCM": "ROCm", "DirectML": "DirectML", "OpenVINO": "OpenVINO",
             "CoreML": "CoreML"}


def expected(kind, widget, option):
    """(our node type, our input, value) the option must land on, or None when the node stays as it is."""
    if kind in NOT_HERE or (kind == "IPAdapterWeights" and (option == "custom" or widget == "method"
                                                           and option != "full batch")):
        return None
    if kind == "IPAdapter" and widget == "weight_type":
        return "IPAApplySimple", "weight_type", SIMPLE_WEIGHT_TYPES[option]
    if widget == "weight_type":
        return ("IPAApplyTiled" if kind in TILED else "IPAWeight"), "weight_type", option
    if widget == "combine_embeds" and "FaceID" in kind:
        return "IPAProjectFace", "combine", "one per frame" if kind.endswith("Batch") else option
    if kind == "IPAdapterUnifiedLoaderFaceID" and widget == "preset":
        return "IPAUnifiedLoaderFaceID", "preset", FACEID_PRESETS[option]
    if widget == "provider":
        return ("IPAUnifiedLoaderFaceID" if kind == "IPAdapterUnifiedLoaderFaceID" else "IPAFaceAnalysisLoader",
                "provider", PROVIDERS[option])
    if widget == "model_name":
        return "IPAFaceAnalysisLoader", "pack", option
    if widget == "combine_embeds":
        return "IPAProject", "combine", "one per frame" if kind.endswith("Batch") else option
    if widget == "embeds_scaling":
        return "IPAWeight", "embeds_scaling", option
    if widget == "preset":
        return "IPAUnifiedLoader", "preset", PRESETS[option]
    if widget == "interpolation":
        return "IPAPrepareReference", "interpolation", INTERPOLATIONS[option]
    if widget == "crop_position":
        return "IPAPrepareReference", "crop_position", option
    if kind == "IPAdapterNoise":
        return "IPANoiseNegative", "type", option
    if kind == "IPAdapterCombineEmbeds":
        return "IPACombineFeatures", "method", option
    if widget == "timing":
        return "IPAFrameWeights", "curve", TIMINGS[option]
    if widget == "method" and kind == "IPAdapterWeights":
        return "IPAFrameWeights", "curve", "linear"
    if widget == "expand_style":
        return "IPAWeight", "weight_type", "strong style transfer" if option else "style transfer"
    raise AssertionError(f"no expectation for {kind}.{widget}")


OPTION_CASES = [(kind, w.name, option) for kind, schema in THEIR_NODES.items() for w in schema.widgets
                for option in (w.options or ((True, False) if isinstance(w.default, bool) else ()))]


def test_option_cases_cover_every_option_of_every_node():
    options = sum(len(w.options or ()) + (2 if isinstance(w.default, bool) else 0)
                  for s in THEIR_NODES.values() for w in s.widgets)
    assert len(OPTION_CASES) == options > 100


@pytest.mark.parametrize("kind,widget,option", OPTION_CASES, ids=[f"{k}.{w}={o}" for k, w, o in OPTION_CASES])
def test_every_option_value_converts(kind, widget, option):
    values = {widget: option}
    if kind == "IPAdapterTiled" and widget == "combine_embeds":
        values["combine_embeds"] = option
    g = graph_with(kind, values)
    converted, report = convert(g)
    want = expected(kind, widget, option)
    if want is None:
        def values(node):
            return {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
        assert converted["30"]["class_type"] == kind and values(converted["30"]) == values(g["30"]), report.text()
        assert any(k["id"] == "30" and k["reason"] for k in report.kept), report.text()
        return
    assert "30" not in converted, report.text()
    our_type, our_input, value = want
    if kind in TILED and widget in ("combine_embeds", "embeds_scaling"):
        # IP-Adapter Tiled has neither; anything but the default is reported as not kept
        rec = next(c for c in report.converted if c["id"] == "30")
        assert (option != THEIR_NODES[kind].widgets[[w.name for w in THEIR_NODES[kind].widgets].index(widget)]
                .default) == any(widget in lost for lost in rec["lost"]), rec
        return
    found = [node["inputs"].get(our_input) for node in our_nodes(converted, our_type)]
    assert value in found, (our_type, our_input, found, report.text())


@pytest.mark.parametrize("kind", sorted(k for k in THEIR_NODES if THEIR_NODES[k].widgets and k not in NOT_HERE))
def test_older_files_get_the_defaults(kind):
    """API prompts and UI files saved by older releases lack the last widgets: the defaults fill them."""
    widgets = THEIR_NODES[kind].widgets
    g = graph_with(kind)
    full, _ = convert(copy.deepcopy(g))
    del g["30"]["inputs"][widgets[-1].name]
    old, report = convert(g)
    rec = next(c for c in report.converted + report.kept if c["id"] == "30")
    if "filled" in rec:
        assert rec["filled"] == [widgets[-1].name]
    assert canonical(old) == canonical(full)


def test_unconvertible_nodes_stay_whole_and_named():
    g = graph_with("IPAdapterAdvanced")
    g["31"] = staying_loader(MODEL)
    g["32"] = theirs("IPAdapterFaceID", {}, {"model": ["31", 0], "ipadapter": ["31", 1], "image": ["5", 0]})
    g["9"]["inputs"]["images"] = ["32", 1]    # their face_image output feeds Save Image
    converted, report = convert(copy.deepcopy(g))
    assert converted["31"] == g["31"] and converted["32"] == g["32"]
    assert {k["type"] for k in report.kept} == {"IPAdapterUnifiedLoader", "IPAdapterFaceID"}
    assert converted["9"]["inputs"]["images"] == ["32", 1]
    assert LATER_PRESET in report.text() and not report.complete


def test_family_is_read_from_the_checkpoint_or_asked():
    g = graph_with("IPAdapterMS", {"layer_weights": "0:1, 15:0.5"})
    _, report = convert(g)
    assert report.family == "sd15"
    g["1"]["inputs"]["ckpt_name"] = "my_model.safetensors"
    _, report = convert(copy.deepcopy(g))
    assert report.family is None and [k["type"] for k in report.kept] == ["IPAdapterMS"]
    converted, report = convert(copy.deepcopy(g), family="sd15")
    assert not report.kept and our_nodes(converted, "IPAWeight")[0]["inputs"]["custom_blocks"] == \
        "input 1 = 1, output 11 = 0.5"
    with pytest.raises(ConversionError, match="family"):
        convert(g, family="sd3")
    with pytest.raises(ConversionError, match="neither"):
        convert({"nodes": "x"})


def test_nodes_of_other_packs_and_the_editor_stay_untouched():
    """A UI file written by hand: their loader and IPAdapter between a node of another pack, a Reroute, a
    PrimitiveNode, a note and a group; only the links into converted nodes change."""
    wf = {
        "last_node_id": 9, "last_link_id": 6, "version": 0.4, "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
        "groups": [{"title": "G", "bounding": [0, 0, 900, 600], "color": "#3f789e", "font_size": 24, "flags": {}}],
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "pos": [0, 0], "size": [300, 100], "mode": 0, "order": 0,
             "inputs": [], "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1, 2]}],
             "widgets_values": ["sd15/realisticVisionV51_v51VAE.safetensors"]},
            {"id": 2, "type": "ImageRandomTransform+", "pos": [0, 200], "size": [300, 100], "mode": 0, "order": 1,
             "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [3]}],
             "widgets_values": [42, "fixed", 0.5], "properties": {"cnr_id": "comfyui_essentials"}},
            {"id": 3, "type": "IPAdapterUnifiedLoader", "pos": [350, 0], "size": [300, 80], "mode": 0, "order": 2,
             "inputs": [{"name": "model", "type": "MODEL", "link": 1}, {"name": "ipadapter", "type": "IPADAPTER",
                                                                        "link": None}],
             "outputs": [{"name": "model", "type": "MODEL", "links": []},
                         {"name": "ipadapter", "type": "IPADAPTER", "links": [4]}],
             "widgets_values": ["PLUS FACE (portraits)"]},
            {"id": 4, "type": "Reroute", "pos": [500, 150], "size": [75, 26], "mode": 0, "order": 3,
             "inputs": [{"name": "", "type": "*", "link": 4}],
             "outputs": [{"name": "", "type": "IPADAPTER", "links": [5]}]},
            {"id": 5, "type": "IPAdapterAdvanced", "title": "my adapter", "color": "#223", "pos": [600, 0],
             "size": [300, 260], "mode": 0, "order": 4,
             "inputs": [{"name": "model", "type": "MODEL", "link": 2}, {"name": "ipadapter", "type": "IPADAPTER",
                                                                        "link": 5},
                        {"name": "image", "type": "IMAGE", "link": 3},
                        {"name": "weight", "type": "FLOAT", "widget": {"name": "weight"}, "link": 7}],
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [6]}],
             "widgets_values": [0.6, "ease out", "concat", 0, 1, "V only"]},
            {"id": 6, "type": "OtherPack.Sampler", "pos": [950, 0], "size": [300, 100], "mode": 0, "order": 5,
             "inputs": [{"name": "model", "type": "MODEL", "link": 6}], "outputs": [], "widgets_values": [7, "x"]},
            {"id": 7, "type": "PrimitiveNode", "pos": [350, 400], "size": [200, 80], "mode": 0, "order": 6,
             "inputs": [], "outputs": [{"name": "FLOAT", "type": "FLOAT", "links": [7],
                                        "widget": {"name": "weight"}}], "widgets_values": [0.6, "fixed"]},
            {"id": 8, "type": "Note", "pos": [0, 400], "size": [200, 80], "mode": 0, "order": 7, "inputs": [],
             "outputs": [], "widgets_values": ["hello"]},
        ],
        "links": [[1, 1, 0, 3, 0, "MODEL"], [2, 1, 0, 5, 0, "MODEL"], [3, 2, 0, 5, 2, "IMAGE"],
                  [4, 3, 1, 4, 0, "IPADAPTER"], [5, 4, 0, 5, 1, "IPADAPTER"], [6, 5, 0, 6, 0, "MODEL"],
                  [7, 7, 0, 5, 3, "FLOAT"]],
    }
    before = copy.deepcopy(wf)
    out, report = convert(wf)
    assert wf == before, "the input must not be modified"
    assert report.format == "ui" and report.complete, report.text()
    old = {x["id"]: x for x in before["nodes"]}
    new = {x["id"]: x for x in out["nodes"]}
    assert 3 not in new and 5 not in new
    for nid in (1, 2, 4, 6, 7, 8):
        a, b = dict(old[nid]), dict(new[nid])
        for d in (a, b):   # link ids and link lists may change, positions move right or down; nothing else may
            d["inputs"] = [{k: v for k, v in i.items() if k != "link"} for i in d.get("inputs") or []]
            d["outputs"] = [{k: v for k, v in o.items() if k != "links"} for o in d.get("outputs") or []]
            d.pop("pos")
        assert a == b, nid
        assert new[nid]["pos"][0] >= old[nid]["pos"][0] and new[nid]["pos"][1] >= old[nid]["pos"][1], nid
    assert (new[1]["pos"], new[2]["pos"], new[8]["pos"]) == (old[1]["pos"], old[2]["pos"], old[8]["pos"])
    assert new[6]["pos"][0] > max(x["pos"][0] + x["size"][0] for x in out["nodes"] if x["type"].startswith("IPA"))
    # their group grew around what it held; the Advanced node's chain has a group of its own, titled after it
    assert out["groups"][0]["title"] == "G" and out["groups"][0]["bounding"][2] > 900
    assert [g["title"] for g in out["groups"][1:]] == ["my adapter"] and out["extra"] == before["extra"]
    links = {link[0]: link for link in out["links"]}
    # the other pack's sampler now gets the model from our Apply, which carries their title and colour
    sampler_link = links[new[6]["inputs"][0]["link"]]
    apply_node = new[sampler_link[1]]
    assert apply_node["type"] == "IPAApply" and apply_node["title"] == "my adapter" and apply_node["color"] == "#223"
    assert sampler_link[5] == "MODEL"
    # the reroute now carries our adapter; the primitive feeds IPAWeight's weight widget
    assert new[links[new[4]["inputs"][0]["link"]][1]]["type"] == "IPAUnifiedLoader"
    weight = next(x for x in out["nodes"] if x["type"] == "IPAWeight")
    primitive_link = next(i["link"] for i in weight["inputs"] if i.get("widget", {}).get("name") == "weight")
    assert links[primitive_link][1] == 7 and weight["widgets_values"][0] == 0.6
    # every link is consistent with both of its ends
    for lid, origin, oslot, target, tslot, _ in out["links"]:
        assert new[target]["inputs"][tslot]["link"] == lid
        assert lid in new[origin]["outputs"][oslot]["links"]
    assert out["last_link_id"] >= max(links) and out["last_node_id"] == max(new)


def test_a_workflow_without_their_nodes_comes_back_unchanged():
    g = core("v1-5-pruned-emaonly.safetensors", MODEL)
    out, report = convert(g)
    assert out == g and not report.changed and "No ComfyUI_IPAdapter_plus" in report.summary()


# ---------------------------------------------------------------------------- their own examples

# Their examples/*.json at commit 9d076a3: how each converts (docs/converting.md, their examples). All 21 fully: no
# node of theirs stays in any, and IPAdapter_FaceIDv2_Kolors.json's image_negative (their IPAdapter Noise) feeds
# Project Face's negative_image (test_convert_kolors.py checks the link).
EXAMPLES = {
    "IPAdapter_FaceIDv2_Kolors.json": "fully", "ipadapter_advanced.json": "fully",
    "ipadapter_clipvision_enhancer.json": "fully", "ipadapter_combine_embeds.json": "fully",
    "ipadapter_cosxl_edit.json": "fully", "ipadapter_faceid.json": "fully",
    "ipadapter_faceid_batch.json": "fully", "ipadapter_ideal_faceid_config.json": "fully",
    "ipadapter_kolors.json": "fully", "ipadapter_negative_image.json": "fully",
    "ipadapter_noise_injection.json": "fully", "ipadapter_portrait.json": "fully",
    "ipadapter_precise_composition.json": "fully", "ipadapter_precise_weight_type.json": "fully",
    "ipadapter_regional_conditioning.json": "fully", "ipadapter_simple.json": "fully",
    "ipadapter_style_composition.json": "fully", "ipadapter_tiled.json": "fully",
    "ipadapter_weight_types.json": "fully", "ipadapter_weighted_embeds.json": "fully",
    "ipadapter_weights.json": "fully",
}


def their_examples() -> Path | None:
    """IPADAPTER_PLUS_EXAMPLES, else the examples of an installed ComfyUI_IPAdapter_plus next to the host."""
    from ipadapter_ext.ip_adapter_core import host

    candidates = [os.environ.get("IPADAPTER_PLUS_EXAMPLES")]
    found = host.find_comfyui()
    if found:
        candidates.append(str(found / "custom_nodes" / "ComfyUI_IPAdapter_plus" / "examples"))
    for c in candidates:
        if c and (Path(c) / "ipadapter_simple.json").is_file():
            return Path(c)
    return None


def test_their_examples_convert_as_documented():
    folder = their_examples()
    if folder is None:
        pytest.skip("THEIR EXAMPLES NOT CHECKED: IPADAPTER_PLUS_EXAMPLES is not set to a folder with "
                    "ComfyUI_IPAdapter_plus's examples/*.json (docs/testing.md; .ci/run sets it in CI)")
    files = sorted(p.name for p in folder.glob("*.json"))
    assert files == sorted(EXAMPLES) and set(EXAMPLES.values()) == {"fully"}
    for name in files:
        workflow = json.loads((folder / name).read_text(encoding="utf-8"))
        out, report = convert(workflow)
        status = ("not at all" if not report.converted else
                  "fully" if report.complete else "partially")
        assert status == EXAMPLES[name], (name, report.text())
        assert not report.kept and not report.dropped, (name, report.text())
        ids = {x["id"] for x in out["nodes"]}
        for link in out["links"]:    # every converted file is consistent
            assert link[1] in ids and link[3] in ids, (name, link)


def test_command_line(tmp_path):
    their, ours = SCENARIOS["regional"]()
    src, dst, rep = tmp_path / "theirs.json", tmp_path / "ours.json", tmp_path / "report.json"
    src.write_text(json.dumps(their))
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "convert_workflow.py"), str(src), str(dst),
                          "--report", str(rep)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Converted 5 ComfyUI_IPAdapter_plus node(s)" in run.stdout and "IPAdapterFromParams" in run.stdout
    assert canonical(json.loads(dst.read_text())) == canonical(ours)
    assert json.loads(rep.read_text())["complete"] is True
    src.write_text("{not json")
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "convert_workflow.py"), str(src), str(dst)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "theirs.json" in bad.stderr
    faceid = core("v1-5-pruned-emaonly.safetensors", MODEL)
    faceid["20"] = staying_loader(MODEL)
    src.write_text(json.dumps(faceid))
    strict = subprocess.run([sys.executable, str(REPO / "scripts" / "convert_workflow.py"), str(src), str(dst),
                             "--strict"], capture_output=True, text=True, timeout=120)
    assert strict.returncode == 2 and "not converted" in strict.stdout


@pytest.mark.parametrize("seed", range(40))
def test_malformed_values_never_break_the_conversion(seed):
    """Widget values of the wrong type (strings, None, lists, huge numbers) in either format: the node that
    cannot be read stays, named in the report; nothing raises."""
    import random

    rng = random.Random(seed)
    name = sorted(SCENARIOS)[seed % len(SCENARIOS)]
    their, _ = SCENARIOS[name]()
    junk = ["", "abc", None, [1], {"a": 1}, 1e300, -5, True]
    for node in their.values():
        if node["class_type"] in THEIR_NODES:
            for key, value in list(node["inputs"].items()):
                if not isinstance(value, list) and rng.random() < 0.3:
                    node["inputs"][key] = rng.choice(junk)
    out, report = convert(their)
    assert isinstance(out, dict) and report.summary()
    for k in report.kept:
        assert k["reason"], k


@pytest.mark.parametrize("kind", sorted(THEIR_NODES))
def test_every_node_id_converts_or_stays_named(kind):
    """Each of their 37 node ids in a graph of theirs: a rule's node is replaced by ours, a node without one
    stays with its reason; no node of theirs is left that the report does not list as kept."""
    g = graph_with(kind)
    converted, report = convert(g)
    kept = {k["id"]: k["reason"] for k in report.kept}
    if kind in NOT_HERE:
        assert converted["30"]["class_type"] == kind and kept["30"] == NOT_HERE[kind]
    else:
        assert "30" not in converted and "30" not in kept, report.text()
        made = next(c["to"] for c in report.converted if c["id"] == "30")
        assert set(made) <= {v["class_type"] for v in converted.values()}
    left = {nid for nid, v in converted.items() if v["class_type"] in THEIR_NODES}
    assert left == set(kept), report.text()
