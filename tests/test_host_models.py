"""The random-weight model files load through ComfyUI's own loaders and run.

These tests guard the fixtures (tests/host_models.py), not the extension: they are what lets the
other host tests trust their random checkpoints, encoders and ControlNets. They exercise no code of
ip_adapter_core or nodes and are not counted as its coverage.

Host tests: skipped (loudly, see conftest) without ComfyUI. Once the cache is
filled the tests take a few minutes on a 2-core CPU; those marked ``slow`` build
full-size files (about 2 and 0.7 GB, cached; the 3.7 GB bigG encoder is checked in memory, not written),
and run in the default command too.
"""
from __future__ import annotations

import importlib.util
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from support import host_models as hm
from conftest import HOST

log = logging.getLogger("ipadapter.tests.host_models")

# ComfyUI's attn2 keys (block, number, transformer index) of the real structures.
SD15_ATTN2 = ([("input", n, 0) for n in (1, 2, 4, 5, 7, 8)] + [("middle", 0, 0)]
              + [("output", n, 0) for n in range(3, 12)])
SDXL_ATTN2 = ([("input", n, t) for n in (4, 5) for t in range(2)]
              + [("input", n, t) for n in (7, 8) for t in range(10)]
              + [("output", n, t) for n in (0, 1, 2) for t in range(10)]
              + [("output", n, t) for n in (3, 4, 5) for t in range(2)]
              + [("middle", 0, t) for t in range(10)])


@contextmanager
def timed(what: str):
    start = time.perf_counter()
    yield
    log.info("%s: %.2f s", what, time.perf_counter() - start)


def comfy_nodes():
    """ComfyUI's ``nodes`` module (the repo has a ``nodes`` package of its own)."""
    import nodes  # noqa: PLC0415

    assert Path(nodes.__file__).resolve().parent == HOST, nodes.__file__
    return nodes


def attn2_keys_in_file(path: Path, prefix: str = "model.diffusion_model.") -> set[tuple]:
    names = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}
    keys = set()
    with safe_open(str(path), "pt") as f:
        for k in f.keys():
            if k.startswith(prefix) and k.endswith(".attn2.to_k.weight"):
                part = k[len(prefix):].split(".")
                number = 0 if part[0] == "middle_block" else int(part[1])
                keys.add((names[part[0]], number, int(part[part.index("transformer_blocks") + 1])))
    return keys


@contextmanager
def without_tiny_configs():
    """ComfyUI's model list as shipped (no tiny test configs) for the duration."""
    import comfy.supported_models as sm  # noqa: PLC0415

    saved = list(sm.models)
    sm.models[:] = [m for m in saved if not m.__name__.startswith("Tiny")]
    try:
        yield
    finally:
        sm.models[:] = saved


def load_checkpoint(path: Path):
    import comfy.sd  # noqa: PLC0415

    with timed(f"load {path.name}"):
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path))
    return model, clip, vae


def encode(clip, text: str):
    (cond,) = comfy_nodes().CLIPTextEncode().encode(clip, text)
    return cond


def ksample(model, positive, negative, steps=2, size=32):
    latent = {"samples": torch.zeros(1, 4, size, size)}
    (out,) = comfy_nodes().common_ksampler(model, 0, steps, 5.0, "euler", "normal", positive, negative, latent)
    return out["samples"]


def counting_attn2_patches(model, keys):
    """Clone ``model`` with an attn2 replace patch on each key that records its calls."""
    from comfy.ldm.modules.attention import optimized_attention  # noqa: PLC0415

    seen = set()

    def patch(q, k, v, extra):
        seen.add((extra["block"][0], extra["block"][1], extra["block_index"]))
        return optimized_attention(q, k, v, extra["n_heads"])

    patched = model.clone()
    for key in keys:
        patched.set_model_attn2_replace(patch, *key)
    return patched, seen



def test_cache_builds_once_and_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("IPADAPTER_TEST_CACHE", str(tmp_path))
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.ones(2, dtype=torch.float16)}

    first = hm.cached_build("probe", build)
    assert first == hm.cached_build("probe", build) and len(calls) == 1
    assert first.parent == tmp_path and hm.VERSION in first.name
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left over


@pytest.mark.host
def test_builds_are_deterministic(tmp_path, monkeypatch):
    files = []
    for run in ("a", "b"):
        monkeypatch.setenv("IPADAPTER_TEST_CACHE", str(tmp_path / run))
        files.append(hm.controlnet_sd15(tiny=True).read_bytes())
    assert files[0] == files[1]


@pytest.mark.host
@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
@pytest.mark.parametrize("channels", [hm.TINY_CHANNELS, 320], ids=["tiny", "full"])
def test_unet_config_round_trips_through_detection(sdxl, channels):
    """ComfyUI detects the structure we build (on meta: no weights needed)."""
    import comfy.model_detection as md  # noqa: PLC0415
    import comfy.supported_models as sm  # noqa: PLC0415

    hm.register_tiny_model_configs()
    sd = {"model.diffusion_model." + k: v for k, v in hm.random_unet(sdxl, channels).state_dict().items()}
    assert md.detect_unet_config(sd, "model.diffusion_model.") == hm.unet_config(sdxl, channels)
    found = md.model_config_from_unet_config(hm.unet_config(sdxl, channels), sd)
    expected = sm.SDXL if sdxl else sm.SD15
    assert isinstance(found, expected)
    assert (type(found) is expected) == (channels == 320)
    if channels != 320:
        with without_tiny_configs():
            assert md.model_config_from_unet_config(hm.unet_config(sdxl, channels), sd) is None


@pytest.fixture(scope="module")
def sd15_tiny():
    with timed("sd15_checkpoint(tiny=True) (cached after first run)"):
        path = hm.sd15_checkpoint(tiny=True)
    return path, *load_checkpoint(path)


@pytest.mark.host
def test_tiny_sd15_checkpoint(sd15_tiny):
    import comfy.supported_models as sm  # noqa: PLC0415

    path, model, clip, vae = sd15_tiny
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        assert {f.get_slice(k).get_dtype() for k in keys} == {"F16", "I64"}
    for prefix in ("model.diffusion_model.", "cond_stage_model.transformer.text_model.", "first_stage_model."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert isinstance(model.model.model_config, sm.SD15)
    assert model.model.diffusion_model.model_channels == hm.TINY_CHANNELS
    assert attn2_keys_in_file(path) == set(SD15_ATTN2)

    with timed("tiny SD1.5 CLIP-L encode x2"):
        positive, negative = encode(clip, "a photo of a cat"), encode(clip, "")
    assert positive[0][0].shape == (1, 77, 768) and positive[0][0].isfinite().all()
    assert not torch.allclose(positive[0][0], negative[0][0])

    patched, seen = counting_attn2_patches(model, SD15_ATTN2)
    with timed("tiny SD1.5 2-step KSampler at 32x32 latent, 16 attn2 patches"):
        samples = ksample(patched, positive, negative)
    assert seen == set(SD15_ATTN2)
    assert samples.shape == (1, 4, 32, 32) and samples.isfinite().all()

    with timed("tiny SD1.5 VAE decode 32x32 latent"):
        image = vae.decode(samples)
    assert image.shape == (1, 256, 256, 3) and image.isfinite().all() and image.std() > 0


@pytest.mark.host
def test_tiny_sd15_controlnet(sd15_tiny):
    import comfy.controlnet  # noqa: PLC0415

    _, model, clip, _ = sd15_tiny
    path = hm.controlnet_sd15(tiny=True)
    with timed("load tiny controlnet"):
        control = comfy.controlnet.load_controlnet(str(path))
    assert isinstance(control, comfy.controlnet.ControlNet)
    positive, negative = encode(clip, "a cat"), encode(clip, "")
    hint = torch.linspace(0, 1, 256 * 256 * 3).reshape(1, 256, 256, 3)
    cpos, cneg = comfy_nodes().ControlNetApplyAdvanced().apply_controlnet(positive, negative, control, hint,
                                                                         1.0, 0.0, 1.0)
    with timed("tiny SD1.5 2-step KSampler with and without ControlNet"):
        plain, controlled = ksample(model, positive, negative), ksample(model, cpos, cneg)
    assert controlled.isfinite().all() and not torch.allclose(plain, controlled)


@pytest.mark.host
def test_tiny_sdxl_checkpoint():
    import comfy.supported_models as sm  # noqa: PLC0415

    with timed("sdxl_checkpoint(tiny=True) (cached after first run)"):
        path = hm.sdxl_checkpoint(tiny=True)
    log.info("tiny SDXL file: %.2f GB", path.stat().st_size / 1e9)
    assert attn2_keys_in_file(path) == set(SDXL_ATTN2)
    model, clip, vae = load_checkpoint(path)
    assert isinstance(model.model.model_config, sm.SDXL)
    with timed("tiny SDXL CLIP-L + CLIP-G encode x2"):
        positive, negative = encode(clip, "a photo of a cat"), encode(clip, "")
    assert positive[0][0].shape == (1, 77, 2048) and positive[0][1]["pooled_output"].shape == (1, 1280)
    assert positive[0][0].isfinite().all() and positive[0][1]["pooled_output"].isfinite().all()
    patched, seen = counting_attn2_patches(model, SDXL_ATTN2)
    with timed("tiny SDXL 2-step KSampler at 32x32 latent, 70 attn2 patches"):
        samples = ksample(patched, positive, negative)
    assert seen == set(SDXL_ATTN2) and samples.isfinite().all()
    with timed("tiny SDXL VAE decode"):
        assert vae.decode(samples).isfinite().all()


def check_clip_vision(source: Path | dict, width: int, layers: int, projection: int, images: int):
    """``source``: a file (loaded by ``comfy.clip_vision.load``) or its tensors (``load_clipvision_from_sd``,
    what ``load`` calls for this layout)."""
    import comfy.clip_vision  # noqa: PLC0415
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # noqa: PLC0415

    # The file has exactly the HF CLIPVisionModelWithProjection layout.
    config = CLIPVisionConfig(hidden_size=width, num_hidden_layers=layers, projection_dim=projection,
                              intermediate_size={1280: 5120, 1664: 8192}[width], num_attention_heads=16,
                              patch_size=14, image_size=224, hidden_act="gelu")
    with torch.device("meta"):
        reference = CLIPVisionModelWithProjection(config).state_dict()
    reference = {k: tuple(v.shape) for k, v in reference.items() if not k.endswith("position_ids")}
    name = source.name if isinstance(source, Path) else "the tensors"
    if isinstance(source, Path):
        with safe_open(str(source), "pt") as f:
            assert {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()} == reference
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    else:
        assert {k: tuple(v.shape) for k, v in source.items()} == reference
        assert {v.dtype for v in source.values()} == {torch.float16}

    with timed(f"load {name}"):
        vision = comfy.clip_vision.load(str(source)) if isinstance(source, Path) else \
            comfy.clip_vision.load_clipvision_from_sd(source)
    assert len(vision.model.vision_model.encoder.layers) == layers
    # A plain ramp and its mirror: different images must give different embeds.
    ramp = torch.linspace(0, 1, 224 * 224 * 3).reshape(1, 224, 224, 3)
    batch = torch.cat([ramp, ramp.flip(1), torch.zeros_like(ramp)][:images])
    with timed(f"encode {images} image(s) with {name}"), torch.inference_mode():  # as ComfyUI runs nodes
        out = vision.encode_image(batch)
    embeds, hidden = out["image_embeds"].float(), out["penultimate_hidden_states"].float()
    assert embeds.shape == (images, projection) and hidden.shape == (images, 257, width)
    assert embeds.isfinite().all() and hidden.isfinite().all()
    assert hidden.std(dim=1).min() > 0.1  # tokens differ from each other
    if images > 1:
        cos = torch.nn.functional.cosine_similarity(embeds[0], embeds[-1], dim=0)
        log.info("cosine of image_embeds of two different images: %.3f", cos)
        assert cos < 0.99


@pytest.mark.host
def test_clip_vision_vit_h():
    with timed("clip_vision_vit_h() (cached after first run)"):
        path = hm.clip_vision_vit_h()
    check_clip_vision(path, width=1280, layers=32, projection=1024, images=2)


@pytest.mark.host
def test_models_dir_and_tiny_config_node(tmp_path):
    root = hm.models_dir(tmp_path / "models", tiny=True)
    expected = {"checkpoints/sd15_random.safetensors", f"clip_vision/{hm.CLIP_VISION_H_NAME}",
                "controlnet/control_sd15_random.safetensors"}
    files = {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}
    assert files == expected
    assert all((root / f).is_symlink() and (root / f).resolve().is_file() for f in files)
    assert (root / "ipadapter").is_dir() and not any((root / "ipadapter").iterdir())
    assert hm.models_dir(tmp_path / "models", tiny=True) == root  # idempotent

    node = hm.write_tiny_config_node(tmp_path / "custom_nodes")
    spec = importlib.util.spec_from_file_location("ipadapter_test_tiny_models", node)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers again: must stay idempotent
    import comfy.supported_models as sm  # noqa: PLC0415

    assert module.NODE_CLASS_MAPPINGS == {}
    assert sorted(m.__name__ for m in sm.models if m.__name__.startswith("Tiny")) == ["TinySD15", "TinySDXL"]


# ----------------------------------------------------------------------------- full size


@pytest.mark.host
@pytest.mark.slow
def test_full_sd15_checkpoint_and_controlnet():
    import comfy.controlnet  # noqa: PLC0415
    import comfy.supported_models as sm  # noqa: PLC0415

    with timed("sd15_checkpoint(tiny=False) (cached after first run)"):
        path = hm.sd15_checkpoint(tiny=False)
    with without_tiny_configs():  # an unmodified ComfyUI
        model, clip, vae = load_checkpoint(path)
    assert type(model.model.model_config) is sm.SD15
    assert attn2_keys_in_file(path) == set(SD15_ATTN2)
    positive, negative = encode(clip, "a cat"), encode(clip, "")
    with timed("full SD1.5 1-step KSampler at 32x32 latent (cfg: batch 2)"):
        plain = ksample(model, positive, negative, steps=1)
    assert plain.isfinite().all()

    with timed("controlnet_sd15(tiny=False) (cached after first run)"):
        cpath = hm.controlnet_sd15(tiny=False)
    with without_tiny_configs():
        control = comfy.controlnet.load_controlnet(str(cpath))
    hint = torch.linspace(0, 1, 256 * 256 * 3).reshape(1, 256, 256, 3)
    cpos, cneg = comfy_nodes().ControlNetApplyAdvanced().apply_controlnet(positive, negative, control, hint,
                                                                         1.0, 0.0, 1.0)
    with timed("full SD1.5 1-step KSampler with ControlNet"):
        controlled = ksample(model, cpos, cneg, steps=1)
    assert controlled.isfinite().all() and not torch.allclose(plain, controlled)
    with timed("full SD1.5 VAE decode"):
        assert vae.decode(controlled).isfinite().all()


@pytest.mark.host
@pytest.mark.slow
def test_clip_vision_vit_bigg():
    """In memory: no other test reads a bigG file, and its 3.7 GB were the largest single cost in the suite's disk."""
    with timed("clip_vision_vit_bigg_state_dict()"):
        sd = hm.clip_vision_vit_bigg_state_dict()
    check_clip_vision(sd, width=1664, layers=48, projection=1280, images=1)
