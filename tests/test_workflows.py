"""The example workflows (workflows/): well-formed editor files, API twins that describe the same graph,
and every workflow run in a real ComfyUI server.

The server is a subprocess (``scripts/comfy_server.py``): ``main.py --cpu --listen 127.0.0.1`` with
``--disable-all-custom-nodes`` except this extension (linked in through an extra_model_paths
``custom_nodes:`` entry), its input/output/temp/user folders in a temporary directory, and a temporary
models folder of symlinks, under the README's file names, to random-weight files of the real shapes
(tests/host_models.py: SD1.5 and SDXL checkpoints, OpenCLIP ViT-H/14, SD1.5 ControlNet; tests/adapter_files.py:
IP-Adapter files, FaceID's as .bin), and a synthetic face pack (tests/support/face_packs.py: buffalo_l's
detector and recogniser as small ONNX graphs that find one face in any picture) in models/insightface. Input images are the repository's ``workflows/input/*.png`` scaled to SIZE×SIZE (a
non-square one to SIZE on its short side). Each workflow runs with KSampler steps = STEPS and EmptyLatentImage
(and ImageScale) RUN_SIZE×RUN_SIZE, IP-Adapter Train with TRAIN_STEPS steps, then once more with every λ (IPAWeight /
IPAApplySimple / IPAApplyTiled / IPAFaceID ``weight``) set to 0: it must finish, save one image per latent frame in the
output folder, and the images differ on every frame. The λ = 0 rerun must take the training
set and the trained adapter from ComfyUI's cache (the server's ``execution_cached`` message), not train again.

What ran for SDXL (07_sdxl_style_composition, 14_sdxl_faceid): the workflow file unchanged (CheckpointLoaderSimple with a
real-shape random SDXL checkpoint: 2.6 B UNet parameters, CLIP-L and CLIP-G, VAE; fp16 file of 6.9 GB; the
SDXL ViT-H IP-Adapter and the ViT-H encoder), at RUN_SIZE×RUN_SIZE and SDXL_STEPS steps, in a second server started with
``--fp8_e4m3fn-unet``: the UNet weights are stored in fp8 (e4m3fn, 2.45 GB) and cast layer by layer to fp32
for the computation (ComfyUI's manual cast on CPU), so activations, attention and the IP-Adapter branch run in
fp32 while the weights lose precision. Text encoders (fp16 storage), VAE, CLIP vision and the adapter are as
ComfyUI loads them by default on CPU. Measured on the 24 GB, 2-core machine shared with other jobs: ComfyUI's
default (fp32 UNet weights, 9.8 GB) was stopped while loading, when free memory fell below 2.5 GB (15 GB
were free at its start); ``--fp16-unet`` (weights as in the file)
ran, peaking at ~10 GB resident, but was killed by the kernel's OOM killer in a full test run when other jobs
grew; with fp8 weights the server peaked at 6.5 GB resident. The SD1.5 workflows run in a server with
ComfyUI's defaults (fp32 weights and computation). If less than SDXL_MIN_FREE_GB of memory is available when
the SDXL server would start, that test is skipped with the reason.

What ran for Flux (15_flux_xlabs): the workflow file unchanged, in a third server, with ComfyUI's own Flux class
at the real width (3072, 24 heads) but one double block and no single block (0.37 B parameters, fp16 file of
0.74 GB; tests/support/host_models.py), the real CLIP-L, Flux's VAE, the OpenAI ViT-L/14 encoder and an XLabs
v2-layout adapter for that one block. T5-XXL's fixed config would build 4.7 B parameters whatever the file holds,
so that server also loads a one-file test node (host_models.write_tiny_t5_node) that shrinks the T5 class to
TINY_T5; the Flux model reads text of that width. Everything else is ComfyUI's: UNETLoader, DualCLIPLoader,
FluxGuidance, KSampler (FLUX_STEPS steps), VAEDecode.

What ran for SD3.5 Large (16_sd35_large), in the same server as Flux: the workflow file unchanged, its checkpoint
ComfyUI's MMDiT of SD3.5 Large's structure with 2 joint blocks 128 wide (an MMDiT's width is 64 per block, so the
real width needs the real 8 B parameters) and SD3's VAE; TripleCLIPLoader with the real-size CLIP-L and CLIP-G and the
shrunk T5 (TINY_T5 keeps T5-XXL's width, 4096, which SD3 joins with CLIP's); the real-size SigLIP so400m/14-384
encoder; an InstantX-layout adapter for those 2 blocks (.bin pickle, as released). KSampler FLUX_STEPS steps.

What ran for Kolors (17_kolors_plus), in the SD1.5 server: ComfyUI has no Kolors model, and MinusZone's Kolors
nodes cannot be installed in the test servers, so every server loads test stand-ins of their three nodes
(tests/support/kolors_host.py: their names, sockets and widgets; a Kolors-shaped UNet of ComfyUI's classes at 64
base channels with encoder_hid_proj, and random ChatGLM3-shaped conditioning). The rest is the workflow file
unchanged: SDXL's VAE, the real-size ViT-L/14 at 336 px (a .bin pickle, as released) and a Kolors-Plus-layout
adapter for that UNet.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
from ipadapter_ext.ip_adapter_core.convert import convert
from support.workflow_servers import MODEL_INPUTS, SIZE, WORKFLOWS, api, comfy_server, family_of, ui, wf
from support.flux_graphs import xlabs_graph

log = logging.getLogger("ipadapter.tests.workflows")
# workflows whose twin in another pack's nodes converts to them (tests/test_convert_flux.py builds the twin)
CONVERTED_TWINS = {"15_flux_xlabs": lambda: xlabs_graph(values={"ip_scale": 0.9})}

STEPS = 2
# the runs' latents and images: RUN_SIZE×RUN_SIZE (the input images stay SIZE on their short side). 128 px is a
# 16×16 latent, every UNet level still 2×2 or more; at 192 px the suite went over its 35-minute budget
RUN_SIZE = 128
LATENT_NODES = ("EmptyLatentImage", "EmptySD3LatentImage")  # img2img and inpainting encode their SIZE input instead
SDXL_STEPS = 1  # one SDXL step (cond and uncond through all 70 patched layers) is ~50 s on a busy 2-core CPU
FLUX_STEPS = 1  # one step of the one-block Flux at its real width (400 tokens) is ~5 s; three runs of it
RUN_ORDER = sorted(WORKFLOWS, key=lambda n: ("sd15", "flux", "sdxl").index(family_of(n)))  # one switch each
LAMBDA_NODES = {"IPAWeight", "IPAApplySimple", "IPAApplyTiled", "IPAFaceID"}
TRAIN_STEPS = 2  # IPATrain steps in the runs (the file says 200)
TRAIN_NODES = {"IPATrainingSet", "IPATrain"}  # upstream of λ: the λ = 0 rerun must take them from ComfyUI's cache
WIDGET_PY_TYPES = {"INT": int, "FLOAT": (int, float), "BOOLEAN": bool, "STRING": str}
def test_every_workflow_has_a_twin_and_inputs():
    assert len(WORKFLOWS) >= 8, WORKFLOWS
    assert sorted(p.stem for p in (REPO / "workflows" / "api").glob("*.json")) == WORKFLOWS
    for name in WORKFLOWS:
        for node in api(name).values():
            for key, value in node["inputs"].items():
                if node["class_type"] in ("LoadImage", "LoadImageMask") and key == "image":
                    assert (REPO / "workflows" / "input" / value).is_file(), (name, value)
                if key in MODEL_INPUTS:
                    assert value in MODEL_INPUTS[key][1], f"{name}: {key}={value} is not a documented model name"
    for png in (REPO / "workflows" / "input").glob("*.png"):
        assert png.stat().st_size < 20_000, png


@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_file_is_well_formed(name):
    """What the editor needs to open the file: ids, link table consistent with the node slots."""
    data = ui(name)
    assert data["version"] == 0.4 and isinstance(data["nodes"], list)
    ids = [n["id"] for n in data["nodes"]]
    assert len(set(ids)) == len(ids) and data["last_node_id"] == max(ids)
    assert data["last_link_id"] == max(link[0] for link in data["links"])
    nodes = {n["id"]: n for n in data["nodes"]}
    for lid, src, src_slot, dst, dst_slot, kind in data["links"]:
        assert lid in nodes[src]["outputs"][src_slot]["links"], (name, lid)
        target = nodes[dst]["inputs"][dst_slot]
        assert target["link"] == lid and target["type"] == kind == nodes[src]["outputs"][src_slot]["type"]
    for n in data["nodes"]:
        assert {"id", "type", "pos", "size", "inputs", "outputs", "widgets_values", "mode", "order"} <= set(n)
        for slot in n["inputs"]:
            assert slot["link"] is None or any(link[0] == slot["link"] for link in data["links"])


# ---------------------------------------------------------------- format checks against the server

@pytest.mark.host
@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_converts_to_its_api_twin(name, servers):
    info = servers.get("sd15").object_info()
    warnings = []
    assert wf.graph(wf.ui_to_api(ui(name), info, warn=warnings.append)) == wf.graph(api(name))
    assert not warnings


@pytest.mark.host
def test_conversion_of_the_editors_own_templates(servers):
    """The editor's templates (comfyui_workflow_templates*) are ground truth for the widget rules
    (seed control widgets, upload buttons, converted widgets, primitives): every widget value must land
    on an input of its type."""
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.find_spec("comfyui_workflow_templates_media_image")
    if spec is None:
        pytest.skip("the editor's template package is not installed")
    info = servers.get("sd15").object_info()
    checked = 0
    site = Path(spec.submodule_search_locations[0]).parent
    for path in sorted(site.glob("comfyui_workflow_templates*/templates/*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if not wf.is_ui_format(data) or data.get("definitions", {}).get("subgraphs") \
                or any(n["type"] not in wf.VIRTUAL_NODES and (n["type"] not in info or info[n["type"]].get(
                    "python_module", "").startswith("comfy_api_nodes")) for n in data["nodes"]):
            continue  # subgraphs, nodes this server lacks, and paid API nodes (their inputs change often)
        for node in wf.ui_to_api(data, info, warn=lambda m: None).values():
            spec_in = {**info[node["class_type"]]["input"].get("required", {}),
                       **(info[node["class_type"]]["input"].get("optional") or {})}
            for key, value in node["inputs"].items():
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                    continue  # a link
                kind = spec_in[key][0]
                opts = spec_in[key][1] if len(spec_in[key]) > 1 and isinstance(spec_in[key][1], dict) else {}
                options = kind if isinstance(kind, list) else opts.get("options") if kind == "COMBO" else None
                where = (path.name, node["class_type"], key, value)
                if options is not None:
                    assert isinstance(value, str) or value in options, where
                    files = [o for o in options + [value] if "." in str(o) or "/" in str(o)]
                    if options and not files:
                        assert value in options, where  # not a list of files: the value must be an option
                elif kind in WIDGET_PY_TYPES:
                    assert isinstance(value, WIDGET_PY_TYPES[kind]), where
                    assert kind == "BOOLEAN" or not isinstance(value, bool), where
        checked += 1
    assert checked >= 20, checked


# ---------------------------------------------------------------- running every workflow

def small(prompt: dict, weight: float | None = None, steps: int = STEPS) -> dict:
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = steps
        if node["class_type"] in (*LATENT_NODES, "ImageScale"):
            node["inputs"].update(width=RUN_SIZE, height=RUN_SIZE)
        if node["class_type"] == "IPATrain":
            node["inputs"]["steps"] = TRAIN_STEPS
        if node["class_type"] == "IPAAttentionMap":  # maps the last of the STEPS steps
            node["inputs"].update(steps=steps, step=steps - 1)
        if weight is not None and node["class_type"] in LAMBDA_NODES:
            node["inputs"]["weight"] = weight
    return prompt


def _frames(prompt: dict) -> int:
    """Images the prompt saves: the latent batch (one per frame in the animation workflow)."""
    return max([n["inputs"]["batch_size"] for n in prompt.values()
                if n["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage")] or [1])


def run_saved(server, prompt) -> tuple[np.ndarray, float, set[str]]:
    """The images the prompt saved in the output folder, one per latent frame, stacked (previews, such as
    Plot Loss Graph's, go to temp and are not counted), the seconds it took, and the ids of the nodes
    ComfyUI took from its cache."""
    start = time.perf_counter()
    entry = server.run(prompt, timeout=3600)
    images = [i for i in comfy_server.images_of(entry) if i.get("type", "output") == "output"]
    assert len(images) == _frames(prompt), images
    paths = [server.output_dir / i["subfolder"] / i["filename"] for i in images]
    assert all(p.is_file() for p in paths), paths
    cached = {str(n) for kind, data in entry.get("status", {}).get("messages", []) if kind == "execution_cached"
              for n in data.get("nodes", [])}
    stack = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return stack, time.perf_counter() - start, cached


@pytest.mark.host
@pytest.mark.slow
@pytest.mark.parametrize("name", RUN_ORDER)
def test_workflow_runs_and_the_image_prompt_acts(name, servers, record_property):
    prompt = api(name)
    assert any(n["class_type"] in LAMBDA_NODES for n in prompt.values())
    server = servers.get(family_of(name))
    try:
        steps = {"sdxl": SDXL_STEPS, "flux": FLUX_STEPS}.get(family_of(name), STEPS)
        image, t1, _ = run_saved(server, small(prompt, steps=steps))
        zero, t0, cached = run_saved(server, small(prompt, weight=0.0, steps=steps))
    except comfy_server.ComfyError as e:
        pytest.fail(f"{name}: {e}\n--- server log ---\n{server.log_tail()}")
    trained = {k for k, n in prompt.items() if n["class_type"] in TRAIN_NODES}
    assert trained <= cached, f"{name}: the λ = 0 rerun trained again (nodes {sorted(trained - cached)} not cached)"
    side = RUN_SIZE if any(n["class_type"] in LATENT_NODES for n in prompt.values()) else SIZE  # else an input's
    assert image.shape == zero.shape == (_frames(prompt), side, side, 3)
    diff = float(np.abs(image.astype(np.int16) - zero).mean())
    log.info("workflow %s: %.1f s, then %.1f s with λ = 0 (ComfyUI's cache reruns only what changed); "
             "mean |difference| %.2f / 255", name, t1, t0, diff)
    record_property("seconds", round(t1 + t0, 1))
    for f in range(image.shape[0]):  # on every frame
        assert not np.array_equal(image[f], zero[f]), f"{name}: the image prompt (λ > 0) changed nothing on frame {f}"
    if name in CONVERTED_TWINS:  # a Flux pack's workflow, converted, is this graph: the same picture, bit for bit
        converted, report = convert(CONVERTED_TWINS[name]())
        assert not report.kept, report.text()
        assert np.array_equal(run_saved(server, small(converted, steps=steps))[0], image), report.text()
