"""Workflows of the Flux IP-Adapter packs open with this extension's nodes: XLabs' x-flux-comfyui (Load Flux
IPAdatper, Apply Flux IPAdapter, Apply Advanced Flux IPAdapter) and Shakker-Labs' ComfyUI-IPAdapter-Flux
(InstantX's loader and apply nodes, plain and advanced), where the rest of the graph is core.

- Each apply node becomes Encode Image → Project → Weight (→ λ Schedule) → Apply, equal node for node to the graph
  written here by hand, in both workflow formats; their sampler (XLabs Sampler) stays and the report says why.
- Apply Advanced's per-block strengths are transcribed here from x-flux-comfyui's utils.py (numpy, as theirs).
- Hostile widget values in every Flux rule end in a kept node with a reason, never an exception.
- The converted XLabs graph runs in the Flux workflow server and saves the same picture as workflow 15, which is
  the same graph drawn with our nodes: tests/test_workflows.py runs it beside workflow 15 (one server start).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from ipadapter_ext.ip_adapter_core.convert import THEIR_NODE_IDS, convert
from ipadapter_ext.ip_adapter_core.convert.flux_nodes import FLUX_NODES
from support.flux_graphs import instantx_graph, ours, xlabs_graph
from support.plus_graphs import canonical, to_ui

def test_every_flux_pack_node_id_is_known():
    assert set(FLUX_NODES) <= set(THEIR_NODE_IDS) and len(FLUX_NODES) == 7


def test_xlabs_apply_becomes_the_chain_of_workflow_15():
    converted, report = convert(xlabs_graph(values={"ip_scale": 0.9}))
    assert canonical(converted) == canonical(ours()), report.text()
    assert report.summary().startswith("Converted 2 x-flux-comfyui node(s)")
    assert not report.kept and "models/xlabs/ipadapters" in report.text()


# their utils.py strength models, with numpy as theirs (not the converter's code)
def their_strengths(kind, start, finish, size=19):
    half = size // 2
    ramp = [(start + (finish - start) * (i / (half - 1))) for i in range(half)]
    if kind == "Linear":
        return [(start + (finish - start) * (i / (size - 1))) for i in range(size)]
    if kind == "First half":
        return ramp + [finish] * (size - half)
    if kind == "Second half":
        return [start] * (size - half) + ramp
    return [start + (finish - start) * (1 / (1 + np.exp(-(i - size / 2) * 8 / size)) - 0.5) for i in range(size)]


@pytest.mark.parametrize("kind", ["Linear", "First half", "Second half", "Sigmoid"])
def test_xlabs_advanced_strengths_become_lambda_per_block(kind):
    converted, report = convert(xlabs_graph("ApplyAdvancedFluxIPAdapter", {"begin_strength": 0.2,
                                                                          "end_strength": 1.1,
                                                                          "smothing_type": kind}))
    weight = next(v for v in converted.values() if v["class_type"] == "IPAWeight")["inputs"]
    assert weight["weight"] == 1.0 and weight["blocks"] == "custom"
    entries = dict(e.split(" = ") for e in weight["custom_blocks"].split(", "))
    got = [float(entries[f"double {i}"]) for i in range(19)]
    assert np.allclose(got, their_strengths(kind, 0.2, 1.1), atol=1e-6), (got, report.text())
    assert canonical(converted) == canonical(ours(weight=1.0, blocks="custom", custom=weight["custom_blocks"]))


def test_instantx_nodes_become_the_chain_with_its_settings():
    converted, report = convert(instantx_graph(values={"weight": 0.7, "start_percent": 0.1, "end_percent": 0.8}))
    assert canonical(converted) == canonical(ours(0.7, "squash", start=0.1, end=0.8, file="ip-adapter.bin"))
    assert "first" in report.text() and "siglip" in report.text().lower()
    converted, report = convert(instantx_graph("ApplyIPAdapterFluxAdvanced",
                                               {"weight_start": 0.3, "weight_end": 1.2, "steps": 12,
                                                "start_percent": 0.0, "end_percent": 0.9},
                                               loader="IPAdapterFluxLoaderAdvanced"))
    assert canonical(converted) == canonical(ours(0.3, "squash", end=0.9, schedule_end=1.2, file="ip-adapter.bin"))
    assert "counts 12 attention calls" in report.text()


def test_their_sampler_stays_and_the_report_says_why():
    g = xlabs_graph(sampler="XlabsSampler")
    converted, report = convert(g)
    model = converted["7"]["inputs"].pop("model")
    assert converted[model[0]]["class_type"] == "IPAApply"      # the sampler stays, fed by our model
    assert converted["7"]["class_type"] == "XlabsSampler" and converted["7"]["inputs"] == \
        {k: v for k, v in g["7"]["inputs"].items() if k != "model"}
    assert any("XlabsSampler (x-flux-comfyui) stays" in note for note in report.as_dict()["notes"])
    assert "use KSampler" in report.text()


OBJECT_INFO = {   # the editor layout of the core nodes these graphs use (test_workflows_plus checks ours)
    kind: {"input_order": {"required": [name for name, _ in sockets + widgets]},
           "input": {"required": {**{name: [t] for name, t in sockets}, **{name: [t] for name, t in widgets}}},
           "output": [t for _, t in outputs], "output_name": [o for o, _ in outputs]}
    for kind, sockets, widgets, outputs in [
        ("UNETLoader", [], [("unet_name", "COMBO"), ("weight_dtype", "COMBO")], [("MODEL", "MODEL")]),
        ("DualCLIPLoader", [], [("clip_name1", "COMBO"), ("clip_name2", "COMBO"), ("type", "COMBO"),
                                ("device", "COMBO")], [("CLIP", "CLIP")]),
        ("CLIPTextEncode", [("clip", "CLIP")], [("text", "STRING")], [("CONDITIONING", "CONDITIONING")]),
        ("FluxGuidance", [("conditioning", "CONDITIONING")], [("guidance", "FLOAT")],
         [("CONDITIONING", "CONDITIONING")]),
        ("ConditioningZeroOut", [("conditioning", "CONDITIONING")], [], [("CONDITIONING", "CONDITIONING")]),
        ("EmptySD3LatentImage", [], [("width", "INT"), ("height", "INT"), ("batch_size", "INT")],
         [("LATENT", "LATENT")]),
        ("KSampler", [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                      ("latent_image", "LATENT")],
         [("seed", "INT"), ("steps", "INT"), ("cfg", "FLOAT"), ("sampler_name", "COMBO"), ("scheduler", "COMBO"),
          ("denoise", "FLOAT")], [("LATENT", "LATENT")]),
        ("VAELoader", [], [("vae_name", "COMBO")], [("VAE", "VAE")]),
        ("VAEDecode", [("samples", "LATENT"), ("vae", "VAE")], [], [("IMAGE", "IMAGE")]),
        ("SaveImage", [("images", "IMAGE")], [("filename_prefix", "STRING")], []),
        ("LoadImage", [], [("image", "COMBO")], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    ]}


@pytest.mark.parametrize("graph", ["xlabs", "xlabs advanced", "instantx", "instantx advanced"])
def test_the_editor_format_converts_like_the_api_format(graph):
    api = {"xlabs": lambda: xlabs_graph(values={"ip_scale": 0.5}),
           "xlabs advanced": lambda: xlabs_graph("ApplyAdvancedFluxIPAdapter", {"smothing_type": "Sigmoid"}),
           "instantx": instantx_graph,
           "instantx advanced": lambda: instantx_graph("ApplyIPAdapterFluxAdvanced",
                                                       loader="IPAdapterFluxLoaderAdvanced")}[graph]()
    ui = to_ui(api, OBJECT_INFO, reroute_input=("ip_adapter_flux", "ipadapter_flux"))
    converted_ui, report = convert(ui)
    assert report.format == "ui" and len(report.converted) == 2 and not report.kept, report.text()
    types = {node["type"] for node in converted_ui["nodes"]}
    assert {"IPALoader", "IPACLIPVisionLoader", "IPAEncodeImage", "IPAProject", "IPAWeight", "IPAApply"} <= types
    assert not types & set(FLUX_NODES)


HOSTILE = [None, "", "x" * 100_000, float("nan"), float("inf"), -1e308, [1, 2], {"a": 1}, True, 10 ** 30]


@pytest.mark.parametrize("kind", sorted(FLUX_NODES))
def test_hostile_widget_values_end_in_a_kept_node_or_a_value(kind):
    """Every widget of every Flux rule, set to each hostile value: conversion finishes, and the node either
    converts (the value goes on; our nodes check it where it enters) or stays with a reason."""
    for widget in FLUX_NODES[kind].widgets:
        for value in HOSTILE:
            if kind.startswith(("Load", "IPAdapterFlux")):
                g = xlabs_graph() if kind == "LoadFluxIPAdapter" else instantx_graph(loader=kind)
                g["30"]["inputs"][widget.name] = value
            else:
                g = xlabs_graph(kind) if "Flux" in kind and kind.endswith("FluxIPAdapter") else instantx_graph(kind)
                g["31"]["inputs"][widget.name] = value
            converted, report = convert(copy.deepcopy(g))
            for k in report.kept:
                assert k["reason"], (kind, widget.name, value)
            assert len(report.converted) + len(report.kept) == 2


def test_the_converter_and_the_lambda_tables_import_without_torch():
    """Pure data, as the editor's route and the command line need it: Flux's rows did not bring torch in."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.path.insert(0, 'tests'); from support.package_alias import install; install(); "
            "import ipadapter_ext.ip_adapter_core.convert, ipadapter_ext.ip_adapter_core.prompt.blocks; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
