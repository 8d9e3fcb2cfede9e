"""Workflows of the Flux IP-Adapter packs open with this extension's nodes: XLabs' x-flux-comfyui (Load Flux
IPAdatper, Apply Flux IPAdapter, Apply Advanced Flux IPAdapter) and Shakker-Labs' ComfyUI-IPAdapter-Flux
(InstantX's loader and apply nodes, plain and advanced), where the rest of the graph is core.

- Each apply node becomes Encode Image → Project → Weight (→ λ Schedule) → Apply, equal node for node to the graph
  written here by hand, in both workflow formats; their sampler (XLabs Sampler) stays and the report says why.
- Apply Advanced's per-block strengths are transcribed here from x-flux-comfyui's utils.py (numpy, as theirs).
- Hostile widget values in every Flux rule end in a kept node with a reason, never an exception.
- The converted XLabs graph runs in the Flux workflow server and saves the same picture as workflow 15, which is
  the same graph drawn with our nodes (test_workflows.py runs that one).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from ipadapter_ext.ip_adapter_core.convert import THEIR_NODE_IDS, convert
from ipadapter_ext.ip_adapter_core.convert.flux_nodes import FLUX_NODES
from support.plus_graphs import canonical, n, theirs, to_ui

MODEL = ["1", 0]


def flux_core(model_from, sampler="KSampler"):
    """ComfyUI's Flux nodes around an image prompt (workflow 15's core part)."""
    g = {
        "1": n("UNETLoader", unet_name="flux1-dev.safetensors", weight_dtype="default"),
        "2": n("DualCLIPLoader", clip_name1="clip_l.safetensors", clip_name2="t5xxl_fp16.safetensors", type="flux",
               device="default"),
        "3": n("CLIPTextEncode", text="a cozy reading corner by a window, morning light, film photo", clip=["2", 0]),
        "4": n("FluxGuidance", conditioning=["3", 0], guidance=3.5),
        "5": n("ConditioningZeroOut", conditioning=["3", 0]),
        "6": n("EmptySD3LatentImage", width=1024, height=1024, batch_size=1),
        "7": n("KSampler", seed=42, steps=20, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0,
               model=model_from, positive=["4", 0], negative=["5", 0], latent_image=["6", 0]),
        "8": n("VAELoader", vae_name="ae.safetensors"),
        "9": n("VAEDecode", samples=["7", 0], vae=["8", 0]),
        "10": n("SaveImage", filename_prefix="ipadapter/15_flux_xlabs", images=["9", 0]),
        "13": n("LoadImage", image="ipadapter_style.png"),
    }
    if sampler == "XlabsSampler":   # theirs: model, conditioning, latent, its own settings (not a node of ours)
        g["7"] = n("XlabsSampler", model=model_from, conditioning=["3", 0], neg_conditioning=["5", 0],
                   latent_image=["6", 0], noise_seed=42, steps=20, timestep_to_start_cfg=1, true_gs=3.5,
                   image_to_image_strength=0.0, denoise_strength=1.0)
    return g


def ours(weight=0.9, crop="center", blocks="all", custom="", start=0.0, end=1.0, schedule_end=None,
         file="flux-ip-adapter-v2.safetensors"):
    """The chain written by hand, as workflow 15 draws it (IP-Adapter CLIP Vision Loader finds the encoder)."""
    g = {
        "11": n("IPALoader", ipadapter_file=file),
        "12": n("IPACLIPVisionLoader", ipadapter=["11", 0]),
        "14": n("IPAEncodeImage", clip_vision=["12", 0], image=["13", 0], crop=crop, interpolation="default",
                sharpening=0.0, encode_batch_size=0),
        "16": n("IPAProject", ipadapter=["11", 0], image_features=["14", 0], combine="concat", image_weights=""),
        "17": n("IPAWeight", embeds=["16", 0], weight=weight, blocks=blocks, custom_blocks=custom, start_at=start,
                end_at=end, weight_type="linear", embeds_scaling="V only", style_boost=1.0, composition_boost=1.0),
        "15": n("IPAApply", model=MODEL, ipadapter=["11", 0], embeds=["17", 0]),
    }
    if schedule_end is not None:
        g["18"] = n("IPASchedule", embeds=["17", 0], curve="linear", weight_end=schedule_end,
                    keyframes="0.0:1.0, 0.5:0.6, 1.0:0.2")
        g["15"]["inputs"]["embeds"] = ["18", 0]
    return {**flux_core(["15", 0]), **g}


def xlabs_graph(apply="ApplyFluxIPAdapter", values=None, sampler="KSampler"):
    g = flux_core(["31", 0], sampler)
    g["30"] = theirs("LoadFluxIPAdapter", {"ipadatper": "flux-ip-adapter-v2.safetensors",
                                           "clip_vision": "clip-vit-large-patch14.safetensors"})
    g["31"] = theirs(apply, values, {"model": MODEL, "ip_adapter_flux": ["30", 0], "image": ["13", 0]})
    return g


def instantx_graph(apply="ApplyIPAdapterFlux", values=None, loader="IPAdapterFluxLoader"):
    g = flux_core(["31", 0])
    g["30"] = theirs(loader, {"ipadapter": "ip-adapter.bin"})
    g["31"] = theirs(apply, values, {"model": MODEL, "ipadapter_flux": ["30", 0], "image": ["13", 0]})
    return g


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


@pytest.mark.host
@pytest.mark.slow
def test_a_converted_xlabs_workflow_runs_and_equals_workflow_15(servers):
    """Their loader and apply node, converted, in the Flux server: the same picture as workflow 15 (our chain with
    the same settings), bit for bit."""
    from support.workflow_servers import api
    from test_workflows import run_saved, small

    converted, report = convert(xlabs_graph(values={"ip_scale": 0.9}))
    assert not report.kept, report.text()
    server = servers.get("flux")
    mine, _, _ = run_saved(server, small(converted))
    ref, _, _ = run_saved(server, small(api("15_flux_xlabs")))
    assert np.array_equal(mine, ref)
