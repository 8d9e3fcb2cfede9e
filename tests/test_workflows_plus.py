"""Converted ComfyUI_IPAdapter_plus workflows in the real server (workflow_servers.py, random real-shape weights).

- The converter's table of our nodes' sockets, widgets and defaults (convert/our_nodes.py) equals the
  server's ``/object_info``.
- The editor route: ``POST /ipadapter/convert`` converts, bad requests get a 400 with the reason and the
  server keeps running.
- Every scenario of plus_graphs.py, laid out as an editor file of theirs (positional widgets, a reroute, a
  note, a group), converted, and turned into a prompt with the server's node catalogue (as the editor's Run
  button does), equals the hand-built graph of ours.
- Their own SD1.5 examples (when at hand, see test_convert.py), converted, run in the server with its model files.
- Each scenario's converted prompt runs in the server. The ``advanced`` one also runs hand-built first, then
  (ComfyUI's cache emptied with ``/free``, so the sampler runs again) converted: the latents Save Latent writes
  (the UNet's output after the sampler) are identical, bit for bit, and so are the images. For the others the
  node-for-node equality of the graphs above says the same without a second run.

This module sorts after test_workflows.py, whose last server is the SDXL one: the SDXL scenario runs first,
then everything on the SD1.5 server (one switch).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from ipadapter_ext.ip_adapter_core.convert import convert
from ipadapter_ext.ip_adapter_core.convert.our_nodes import CONTROL, SPECS
from support.plus_graphs import BASE_SD15, CLIP_H, FAMILY, IMAGES, PLUS_SD15, SCENARIOS, SD15_CKPT, SIZE, canonical, to_ui
from support.workflow_servers import comfy_server, models_of, wf

pytestmark = [pytest.mark.host, pytest.mark.slow]
RUN_ORDER = sorted(SCENARIOS, key=lambda s: (FAMILY[s] != "sdxl", s))


def _prompt_from_ui(server, their) -> tuple[dict, object]:
    info = server.object_info()
    converted, report = convert(to_ui(their, info))
    assert report.format == "ui" and report.complete, report.text()
    return wf.ui_to_api(converted, info), report


def _run(server, prompt):
    entry = server.run(prompt, timeout=3600)
    latents = [i for out in entry["outputs"].values() for i in out.get("latents", [])]
    images = [i for i in comfy_server.images_of(entry) if i.get("type", "output") == "output"]
    assert len(latents) == 1 and images, entry["outputs"]
    latent = load_file(str(server.output_dir / latents[0]["subfolder"] / latents[0]["filename"]))["latent_tensor"]
    pictures = np.stack([np.asarray(Image.open(server.output_dir / i["subfolder"] / i["filename"]))
                         for i in images])
    cached = {str(n) for kind, data in entry.get("status", {}).get("messages", []) if kind == "execution_cached"
              for n in data.get("nodes", [])}
    return latent, pictures, cached


# The converted prompt equals the hand-built graph node for node (asserted for every scenario), so running both
# would check the server's determinism more than the converter: each scenario runs once, converted, and one
# also runs hand-built, for the latents bit for bit.
BIT_FOR_BIT = ("advanced",)


@pytest.mark.parametrize("name", RUN_ORDER)
def test_converted_workflow_runs_and_matches_the_hand_built_one(name, servers, record_property):
    server = servers.get(FAMILY[name])
    their, ours = SCENARIOS[name]()
    prompt, report = _prompt_from_ui(server, their)
    assert canonical(wf.graph(prompt)) == canonical(ours), "the converted editor file is not the hand-built graph"
    servers.link(models_of(prompt, FAMILY[name]))  # what its preset loader looks for
    try:
        start = time.perf_counter()
        if name in BIT_FOR_BIT:
            latent_ours, images_ours, _ = _run(server, ours)
            server.free()
            time.sleep(2)   # the worker empties its cache when it next looks at the queue
        latent_conv, images_conv, cached = _run(server, prompt)
    except comfy_server.ComfyError as e:
        pytest.fail(f"{name}: {e}\n{report.text()}\n--- server log ---\n{server.log_tail()}")
    assert np.isfinite(latent_conv).all() and images_conv.size
    if name in BIT_FOR_BIT:
        sampler = next(k for k, v in prompt.items() if v["class_type"] == "KSampler")
        assert sampler not in cached, "the converted prompt was not sampled again"
        assert latent_conv.shape == latent_ours.shape
        assert np.array_equal(latent_conv, latent_ours), float(np.abs(latent_conv - latent_ours).max())
        assert np.array_equal(images_conv, images_ours)
    record_property("seconds", round(time.perf_counter() - start, 1))


@pytest.fixture
def sd15(servers):
    """Looked up per test: the scenario runs switch between the SD1.5 and the SDXL server."""
    return servers.get("sd15")


def test_our_node_table_matches_the_server(sd15):
    info = sd15.object_info()
    for kind, spec in SPECS.items():
        live = info[kind]
        sockets, widget_types, defaults = [], [], []
        for _, name, cfg in wf.ordered_inputs(live):
            kind_ = "COMBO" if isinstance(cfg[0], list) else cfg[0]
            opts = cfg[1] if len(cfg) > 1 and isinstance(cfg[1], dict) else {}
            if wf.is_widget(cfg):
                widget_types.append((name, kind_))
                if "default" in opts:
                    defaults.append((name, opts["default"]))
            else:
                sockets.append((name, kind_))
        widgets = tuple(CONTROL if w == wf.CONTROL else w for w in wf.widget_slots(live))
        assert spec.sockets == tuple(sockets), kind
        assert spec.widgets == widgets, kind
        assert spec.outputs == tuple(zip(live["output_name"], live["output"])), kind
        assert spec.widget_types == tuple(widget_types) and spec.defaults == tuple(defaults), kind


def _post(server, path, body: bytes):
    req = urllib.request.Request(server.url + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_route_converts_and_refuses_bad_requests(sd15):
    their, ours = SCENARIOS["advanced"]()
    ui = to_ui(their, sd15.object_info())
    status, body = _post(sd15, "/ipadapter/convert", json.dumps({"workflow": ui}).encode())
    assert status == 200 and body["report"]["complete"], body
    types = {n["type"] for n in body["workflow"]["nodes"]}
    assert "IPAApply" in types and not types & {"IPAdapterAdvanced", "IPAdapterModelLoader"}
    assert "IPAdapterAdvanced" in sd15.get("/ipadapter/convert/types")["types"]
    for bad, why in ((b"not json", "JSON"), (b"[1, 2]", "workflow"), (json.dumps({"workflow": {"x": 1}}).encode(),
                                                                     "neither"),
                     (json.dumps({"workflow": ui, "family": "sd3"}).encode(), "family")):
        status, body = _post(sd15, "/ipadapter/convert", bad)
        assert status == 400 and why in body["error"], body
    assert sd15.alive()


RUNNABLE_EXAMPLES = ("advanced", "combine_embeds", "faceid", "faceid_batch", "ideal_faceid_config", "negative_image",
                     "noise_injection", "simple", "tiled", "weight_types", "weighted_embeds",
                     "weights")   # SD1.5, only core nodes besides theirs


@pytest.mark.parametrize("name", RUNNABLE_EXAMPLES)
def test_their_sd15_examples_run_converted(name, sd15, servers):
    """Their own files, converted as shipped, then pointed at this server's random-weight files (their model
    and image names are not here), at SIZE, one latent and 1 step: every sampler of the file runs to an image
    (saved or previewed). The
    FaceID ones find a face in any picture (the synthetic face pack, workflow_servers.py)."""
    from test_convert import their_examples

    folder = their_examples()
    if folder is None:
        pytest.skip("THEIR EXAMPLES NOT RUN: set IPADAPTER_PLUS_EXAMPLES (see test_convert.py)")
    workflow = json.loads((folder / f"ipadapter_{name}.json").read_text(encoding="utf-8"))
    converted, report = convert(workflow)
    assert report.complete, report.text()
    prompt = wf.ui_to_api(converted, sd15.object_info())
    images = iter(IMAGES * 4)
    for node in prompt.values():
        i = node["inputs"]
        if "ckpt_name" in i:
            i["ckpt_name"] = SD15_CKPT
        if "clip_name" in i:
            i["clip_name"] = CLIP_H
        if "ipadapter_file" in i:
            i["ipadapter_file"] = PLUS_SD15 if "plus" in i["ipadapter_file"] else BASE_SD15
        if node["class_type"] == "LoadImage":
            i["image"] = next(images)
        if node["class_type"] == "EmptyLatentImage":
            i.update(width=SIZE, height=SIZE, batch_size=1)
        if node["class_type"] == "KSampler":
            i["steps"] = 1
    servers.link(models_of(prompt, "sd15"))  # what their preset loaders, converted to ours, look for
    samplers = sum(1 for n in prompt.values() if n["class_type"] == "KSampler")
    try:
        entry = sd15.run(prompt, timeout=3600)
    except comfy_server.ComfyError as e:
        pytest.fail(f"{name}: {e}\n{report.text()}\n--- server log ---\n{sd15.log_tail()}")
    shown = comfy_server.images_of(entry)  # saved, or previewed (their faceid_batch ends in a Preview Image)
    assert len(shown) >= samplers, (samplers, shown)
