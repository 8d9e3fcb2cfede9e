"""The ComfyUI servers the workflow and browser tests drive: one at a time (memory), SD1.5 workflows with
ComfyUI's defaults, SDXL with SDXL_FLAGS, Flux with the shrunk T5 node (host_models.write_tiny_t5_node); a
models folder of symlinks, under the README's file names, to random-weight files of the real shapes (made the
first time a server needs them); the repository's input images scaled to SIZE on their short side. Shared by the test session (conftest.py ``servers``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from support.repo_scripts import script

REPO = Path(__file__).resolve().parents[2]
comfy_server = script("comfy_server")
wf = script("workflow_format")

WORKFLOWS = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
SDXL = {"07_sdxl_style_composition", "14_sdxl_faceid"}
FLUX = {"15_flux_xlabs", "16_sd35_large"}  # the transformers, in the server with the shrunk T5 (host_models)


def family_of(name: str) -> str:
    """The server a workflow runs in: "sdxl", "flux" (Flux and SD3.5) or "sd15" (and Kolors' small UNet)."""
    return "sdxl" if name in SDXL else "flux" if name in FLUX else "sd15"


SIZE = 192  # the workflows' input images are scaled to it (their latents too, by the workflow tests)
SDXL_FLAGS = ("--fp8_e4m3fn-unet",)
SDXL_MIN_FREE_GB = 8.0
# input name -> (models subfolder, {file name in the workflows -> how to make a random file of that kind})
MODEL_INPUTS = {
    "ckpt_name": ("checkpoints", {"v1-5-pruned-emaonly.safetensors": ("sd15_checkpoint", False),
                                  "sd_xl_base_1.0.safetensors": ("sdxl_checkpoint", False),
                                  "sd3.5_large.safetensors": ("sd35_checkpoint",)}),
    "control_net_name": ("controlnet", {"control_v11p_sd15_canny_fp16.safetensors": ("controlnet_sd15", False)}),
    "clip_name": ("clip_vision", {"CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors": ("clip_vision_vit_h",),
                                  "clip-vit-large-patch14.safetensors": ("clip_vision_vit_l",),
                                  "sigclip_vision_patch14_384.safetensors": ("clip_vision_siglip",),
                                  "clip-vit-large-patch14-336.bin": ("clip_vision_vit_l_336_bin",)}),
    # Flux (host_models: one double block at the real width, CLIP-L, a shrunk T5-XXL, Flux's VAE)
    "unet_name": ("diffusion_models", {"flux1-dev.safetensors": ("flux_dev",),
                                       # Kolors (tests/support/kolors_host.py's stand-in of MinusZone's loader)
                                       "diffusion_pytorch_model.fp16.safetensors": ("kolors_unet",)}),
    # DualCLIPLoader (Flux: clip_l, t5xxl) and TripleCLIPLoader (SD3.5: clip_g, clip_l, t5xxl)
    "clip_name1": ("text_encoders", {"clip_l.safetensors": ("clip_l_text",)}),
    "clip_name2": ("text_encoders", {"t5xxl_fp16.safetensors": ("t5xxl_tiny",),
                                     "clip_g.safetensors": ("clip_g_text",)}),
    "clip_name3": ("text_encoders", {"t5xxl_fp16.safetensors": ("t5xxl_tiny",)}),
    "vae_name": ("vae", {"ae.safetensors": ("flux_vae",), "sdxl_vae.safetensors": ("sdxl_vae",)}),
    "chatglm3_checkpoint": ("LLM", {"chatglm3-8bit.safetensors": ("chatglm3_stub",)}),
    "ipadapter_file": ("ipadapter", {**{f"{v}.safetensors": ("adapter", v) for v in
                                        ("ip-adapter_sd15", "ip-adapter-plus_sd15", "ip-adapter_sdxl_vit-h",
                                         "ip-adapter-full-face_sd15")},
                                     **{f"{v}.bin": ("adapter", v, "bin") for v in  # released as .bin only
                                        ("ip-adapter-faceid-plusv2_sd15", "ip-adapter-faceid_sdxl")},
                                     # XLabs' v2 layout for the one-block Flux above
                                     "flux-ip-adapter-v2.safetensors": ("xlabs_flux",),
                                     # InstantX's layout for the two-block SD3.5, Kolors Plus for the small Kolors
                                     "sd3.5_large_ip-adapter.bin": ("sd35_adapter",),
                                     "Kolors-IP-Adapter-Plus.bin": ("kolors_plus",)}),
    # a face pack is a folder: models/insightface/models/<pack>/ (synthetic ONNX graphs, tests/support/face_packs.py)
    "pack": ("insightface/models", {"buffalo_l": ("face_pack",)}),
}
# what a preset loader finds by itself in the model folders: (node, preset, family) -> [(MODEL_INPUTS key, value)]
PRESET_MODELS = {
    ("IPAUnifiedLoaderFaceID", "FACEID", "sdxl"): [("ipadapter_file", "ip-adapter-faceid_sdxl.bin"),
                                                   ("pack", "buffalo_l")],
    ("IPAUnifiedLoaderFaceID", "FACEID PLUS V2", "sd15"): [("ipadapter_file", "ip-adapter-faceid-plusv2_sd15.bin"),
                                                           ("clip_name", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
                                                           ("pack", "buffalo_l")],
    ("IPAUnifiedLoader", "FULL FACE", "sd15"): [("ipadapter_file", "ip-adapter-full-face_sd15.safetensors"),
                                               ("clip_name", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")],
    ("IPAUnifiedLoader", "STANDARD", "sd15"): [("ipadapter_file", "ip-adapter_sd15.safetensors"),
                                              ("clip_name", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")],
    ("IPAUnifiedLoader", "PLUS", "sd15"): [("ipadapter_file", "ip-adapter-plus_sd15.safetensors"),
                                          ("clip_name", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")],
    ("IPAUnifiedLoader", "STANDARD", "sdxl"): [("ipadapter_file", "ip-adapter_sdxl_vit-h.safetensors"),
                                              ("clip_name", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")],
}
# in the synthetic pack's detector frame (640): one face whatever the picture, as tests/test_host_faceid.py
FACE_LANDMARKS = [[300, 300], [340, 300], [320, 325], [305, 345], [335, 345]]


def ui(name):
    return wf.load(REPO / "workflows" / f"{name}.json")


def api(name):
    return wf.load(REPO / "workflows" / "api" / f"{name}.json")


def models_of(prompt: dict, family: str) -> set[tuple[str, str]]:
    """The (MODEL_INPUTS key, value) pairs an API prompt needs: the files its inputs name, and those its preset
    loaders find by themselves (PRESET_MODELS)."""
    needed = set()
    for node in prompt.values():
        needed |= {(k, v) for k, v in node["inputs"].items() if k in MODEL_INPUTS and isinstance(v, str)}
        needed |= set(PRESET_MODELS.get((node["class_type"], node["inputs"].get("preset"), family), ()))
    return needed


def _model_file(recipe, adapter_file) -> Path:
    from support import host_models  # noqa: PLC0415 - needs the host on sys.path (conftest)

    if recipe[0] == "adapter":
        return adapter_file(*recipe[1:])
    if recipe[0] == "face_pack":
        return _face_pack()
    if recipe[0] == "xlabs_flux":
        return _xlabs_flux()
    if recipe[0] in ("sd35_adapter", "kolors_plus"):
        return _pickled_adapter(recipe[0])
    return getattr(host_models, recipe[0])(*recipe[1:])


def _face_pack() -> Path:
    """buffalo_l's detector and recogniser as synthetic graphs (one face found in any picture), written once
    into the host-models cache (a few MB)."""
    from support import host_models  # noqa: PLC0415
    from support.face_packs import face_at, write_pack  # noqa: PLC0415 - needs onnx (requirements-test.txt)

    root = host_models.cache_dir() / "insightface"
    folder = root / "models" / "buffalo_l"
    if not (folder / "w600k_r50.onnx").is_file():
        write_pack(root, faces=[face_at(16, 20, 20, FACE_LANDMARKS, (280, 270, 360, 370))], landmarks=None)
    return folder


def _xlabs_flux() -> Path:
    """XLabs' flux-ip-adapter-v2 layout for the workflow tests' one-block Flux (fp16, ~0.15 GB), cached."""
    from safetensors.torch import save_file  # noqa: PLC0415

    from support import host_models  # noqa: PLC0415
    from support.flux_models import xlabs_state_dict  # noqa: PLC0415

    path = host_models.cache_dir() / f"xlabs-flux-v2-1block-{host_models.VERSION}.safetensors"
    if not path.is_file():
        tmp = path.with_suffix(".tmp")
        save_file(xlabs_state_dict("v2", double=host_models.FLUX_DOUBLE, hidden=3072), str(tmp))
        tmp.chmod(0o644)  # as host_models.cached_build: a shared CI cache may be read by another user
        tmp.replace(path)
    return path


def _pickled_adapter(kind: str) -> Path:
    """The SD3.5 adapter (InstantX's layout, for host_models' two-block SD3.5: a Resampler 256 wide, 64 tokens) or
    Kolors-IP-Adapter-Plus (for its 64-channel Kolors UNet: a Resampler 256 wide), as the released .bin pickles are
    ({"image_proj": ..., "ip_adapter": ...}), fp16, cached."""
    import torch  # noqa: PLC0415

    from support import host_models  # noqa: PLC0415

    path = host_models.cache_dir() / f"{kind}-{host_models.VERSION}.bin"
    if not path.is_file():
        if kind == "sd35_adapter":
            from support.sd3_models import sd3_adapter_state_dict  # noqa: PLC0415

            depth = host_models.SD3_DEPTH
            flat = sd3_adapter_state_dict(depth, 64 * depth, dim=256, heads=4, queries=64, depth=4)
        else:
            from support.kolors_models import plus_state_dict  # noqa: PLC0415

            flat = plus_state_dict(host_models.KOLORS_CHANNELS, dim=256, heads=4)
        sections: dict = {}
        for key, value in flat.items():
            head, _, tail = key.partition(".")
            sections.setdefault(head, {})[tail] = value
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(sections, str(tmp))
        tmp.chmod(0o644)
        tmp.replace(path)
    return path


class Servers:
    """One ComfyUI server at a time (memory): SD1.5 workflows with defaults, SDXL with SDXL_FLAGS. The model
    files a server's workflows need are linked (built, the first time) just before it starts."""

    def __init__(self, root: Path, config: Path, adapter_file):
        self.root, self.config, self.current, self.key = root, config, None, None
        self.adapter_file = adapter_file  # variant -> a random adapter file of the session (conftest)

    def get(self, key, all_models: bool = False):
        """The server for ``key`` ("sd15" or "sdxl"), started if needed; ``all_models``: every workflow's
        model files are listed too (the browser tests open every workflow in one editor)."""
        if all_models:
            self._link_models(WORKFLOWS)
        if self.key != key:
            self.close()
            if key == "sdxl":
                free = _available_gb()
                if free < SDXL_MIN_FREE_GB:
                    pytest.skip(f"SDXL workflow needs ~{SDXL_MIN_FREE_GB} GB free memory, {free:.1f} GB available")
            self._link_models([n for n in WORKFLOWS if family_of(n) == key])
            work = self.root / key
            shutil.copytree(self.root / "input", work / "input", dirs_exist_ok=True)
            from support import host_models, kolors_host  # noqa: PLC0415

            # the stand-ins of MinusZone's Kolors nodes in every server (the editor opens the Kolors workflow too)
            nodes = (kolors_host.write_node(self.root / "test_nodes"),)
            if key == "flux":  # the shrunk T5-XXL (host_models.write_tiny_t5_node)
                nodes += (host_models.write_tiny_t5_node(self.root / "test_nodes"),)
            self.current = comfy_server.LocalServer(cpu=True, isolate=True, workdir=work,
                                                    extra_model_paths=[self.config], extra_nodes=nodes,
                                                    extra_args=SDXL_FLAGS if key == "sdxl" else ())
            self.key = key
        return self.current

    def _link_models(self, names):
        self.link(set().union(*[models_of(api(n), family_of(n)) for n in names]))

    def link(self, needed):
        """Link the model files of these (MODEL_INPUTS key, value) pairs (built the first time)."""
        models = self.root / "models"
        for key, value in sorted(needed):
            folder, recipes = MODEL_INPUTS[key]
            link = models / folder / value
            if not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(_model_file(recipes[value], self.adapter_file))

    def close(self):
        if self.current is not None:
            self.current.stop()
            self.current, self.key = None, None


def _available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def make_servers(root: Path, adapter_file) -> "Servers":
    """Servers over ``root``: a models folder (links made as servers need them), the input images scaled."""
    models = root / "models"
    config = root / "models.yaml"
    config.write_text("ipadapter_workflow_tests:\n  base_path: " + json.dumps(str(models)) + "\n"
                      + "".join(f"  {f}: {f}\n" for f in ("checkpoints", "controlnet", "clip_vision", "ipadapter",
                                                           "insightface", "diffusion_models", "text_encoders", "vae",
                                                           "LLM")))
    (root / "input").mkdir()
    for png in (REPO / "workflows" / "input").glob("*.png"):
        img = Image.open(png)
        img = img.convert("RGB") if img.mode == "P" else img  # palette PNGs (the face photo) resize in RGB
        nearest = img.mode == "L"  # masks stay hard-edged
        # square inputs to SIZE×SIZE; others keep their aspect ratio (the tiled workflow's wide reference)
        size = (SIZE, SIZE) if img.width == img.height else (SIZE * img.width // min(img.size),
                                                              SIZE * img.height // min(img.size))
        img.resize(size, Image.NEAREST if nearest else Image.LANCZOS).save(root / "input" / png.name)
    return Servers(root, config, adapter_file)
