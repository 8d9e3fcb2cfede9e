"""Random-weight model files in the real formats, for host integration tests.

No weights can be downloaded where the tests run, so this module writes files
that ComfyUI's own loaders accept: the key layout and shapes are those of the
released files, the values are random. They are cached (see ``cache_dir``); the
file names carry ``VERSION`` so that a change in a generator invalidates them.

How the files are made: each network is built from ComfyUI's own classes on the
``meta`` device (no memory, no compute), which gives every tensor's name, shape
and owning module; every tensor is then drawn with its own seed (derived from its
name, so the output does not depend on iteration order) and written in fp16 in
the layout ComfyUI's CheckpointSave writes (``process_*_for_saving`` of the model
config), which is the original LDM/SGM layout. Initialisation: LayerNorm and
GroupNorm weights 1, biases 0, ``logit_scale`` ln(100), every other tensor
normal(0, 0.02). comfy.ops layers skip initialisation, so nothing is left to them.

What the files are:

- ``sd15_checkpoint(tiny=False)``: SD1.5 with real shapes (UNet 860M, CLIP-L
  123M, VAE 84M parameters; fp16, ~2.1 GB). Detected as
  ``comfy.supported_models.SD15`` by an unmodified ComfyUI.
- ``sd15_checkpoint(tiny=True)``: the SD1.5 UNet structure (same blocks, same 16
  attn2 layers, context 768, 8 heads) with ``model_channels=TINY_CHANNELS``,
  plus the full CLIP-L and VAE (ComfyUI builds the text encoder and the VAE from
  fixed configs: smaller or missing weights do not load, see the test module).
  ComfyUI matches SD1.5 on ``model_channels == 320``, so an unmodified ComfyUI
  does not recognise this UNet: ``register_tiny_model_configs()`` appends
  ``TinySD15``/``TinySDXL`` (subclasses of SD15/SDXL differing only in
  ``model_channels``) to ``comfy.supported_models.models``. The builders here
  call it, so in-process tests need nothing more; a ComfyUI server started as a
  subprocess needs the custom node that ``write_tiny_config_node`` writes.
- ``sdxl_checkpoint(tiny=True)``: the SDXL UNet structure (transformer depth
  [0,0,2,2,10,10], 70 attn2 layers, context 2048, adm 2816, head size 64) with
  ``model_channels=TINY_CHANNELS``, plus full CLIP-L and CLIP-G (OpenCLIP layout)
  and VAE. The text encoders are most of the file (~1.8 GB); ComfyUI's SDXL text
  encoders have fixed configs too. ``tiny=False`` has real shapes (~7 GB).
- ``clip_vision_vit_h()`` / ``clip_vision_vit_bigg()``: HF
  ``CLIPVisionModelWithProjection`` layout (``vision_model.*``,
  ``visual_projection.weight``), fp16; ComfyUI picks its config from the number
  of layers (ViT-H ~1.26 GB, bigG ~3.7 GB, built only when asked for).
- ``controlnet_sd15(tiny)``: original ControlNet layout (``control_model.*``),
  channels matching the SD1.5 checkpoint of the same ``tiny`` (~0.72 GB full,
  ~10 MB tiny). The tiny one needs the tiny configs too: without them ComfyUI
  falls back to its BASE config (64-channel heads) and fails on a size mismatch.

Run ``python tests/host_models.py [--full]`` to fill the cache ahead of a CI run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

log = logging.getLogger("ipadapter.tests.host_models")

VERSION = "v1"
TINY_CHANNELS = 32
STD = 0.02
SEED = 20240601
CLIP_VISION_H_NAME = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"


def cache_dir() -> Path:
    """``$IPADAPTER_TEST_CACHE`` or ``~/.cache/comfyui-ipadapter/test-models``."""
    env = os.environ.get("IPADAPTER_TEST_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache/comfyui-ipadapter/test-models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_build(stem: str, build) -> Path:
    """Return the cached file ``stem-VERSION.safetensors``, building it first if absent."""
    path = cache_dir() / f"{stem}-{VERSION}.safetensors"
    if path.is_file():
        return path
    start = time.perf_counter()
    tensors = build()
    # A unique temporary name in the same folder, then an atomic rename: parallel
    # test workers may build the same file, and a killed build leaves no half file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"generator": f"ipadapter tests host_models {VERSION}"})
        tmp.chmod(0o644)  # safetensors creates 0600; a shared CI cache may be read by another user
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("built %s (%.2f GB, %d tensors) in %.1f s", path.name, path.stat().st_size / 1e9,
             len(tensors), time.perf_counter() - start)
    return path


def _random_state_dict(module: torch.nn.Module, seed: int, std: float = STD) -> dict[str, torch.Tensor]:
    """Random fp16 values for every entry of a module's state dict (module may be on meta)."""
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    owner = {}
    for mod_name, mod in module.named_modules():
        for name, _ in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            owner[f"{mod_name}.{name}" if mod_name else name] = (mod, name)
    out = {}
    for key, ref in module.state_dict(keep_vars=True).items():
        mod, name = owner[key]
        if not ref.is_floating_point():
            raise ValueError(f"unexpected non-float tensor {key}")
        if name == "logit_scale":
            t = torch.full(ref.shape, math.log(100.0))
        elif isinstance(mod, norms) and name == "weight":
            t = torch.ones(ref.shape)
        elif name == "bias" or name.endswith("_bias"):
            t = torch.zeros(ref.shape)
        else:
            gen = torch.Generator().manual_seed(seed * 7919 + zlib.crc32(key.encode()))
            t = torch.empty(ref.shape).normal_(0.0, std, generator=gen)
        out[key] = t.to(torch.float16)
    return out


def _prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


# --------------------------------------------------------------------------- UNets

def unet_config(sdxl: bool, channels: int) -> dict:
    """The UNetModel config ComfyUI detects for an SD1.5/SDXL UNet of this width."""
    common = {"use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
              "in_channels": 4, "out_channels": 4, "model_channels": channels,
              "use_temporal_resblock": False, "use_temporal_attention": False}
    if sdxl:
        return {**common, "num_classes": "sequential", "adm_in_channels": 2816, "num_res_blocks": [2, 2, 2],
                "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
                "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
                "context_dim": 2048}
    return {**common, "adm_in_channels": None, "num_res_blocks": [2, 2, 2, 2],
            "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_output": [1] * 9 + [0] * 3,
            "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
            "context_dim": 768}


def register_tiny_model_configs() -> None:
    """Let the running ComfyUI detect the tiny UNets (idempotent).

    ComfyUI's SD15 and SDXL configs require ``model_channels == 320``; the tiny
    configs are subclasses that differ only there, so the loaded model behaves as
    (and is an instance of) SD15/SDXL. Nothing real has 32 channels, so no other
    model can be matched by them.
    """
    import comfy.supported_models as sm  # noqa: PLC0415 - host is optional at import time

    for base in (sm.SD15, sm.SDXL):
        name = "Tiny" + base.__name__
        if any(m.__name__ == name for m in sm.models):
            continue
        cls = type(name, (base,), {"unet_config": {**base.unet_config, "model_channels": TINY_CHANNELS}})
        sm.models.append(cls)
        log.debug("registered %s with ComfyUI", name)


def _model_config(sdxl: bool, channels: int):
    import comfy.supported_models as sm  # noqa: PLC0415

    return (sm.SDXL if sdxl else sm.SD15)(unet_config(sdxl, channels))


def random_unet(sdxl: bool, channels: int, controlnet: bool = False):
    import comfy.ops  # noqa: PLC0415
    from comfy.cldm.cldm import ControlNet  # noqa: PLC0415
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: PLC0415

    cfg = _model_config(sdxl, channels).unet_config  # adds the head settings
    if controlnet:
        cfg = {k: v for k, v in cfg.items() if k != "out_channels"}
        return ControlNet(**cfg, hint_channels=3, device="meta", operations=comfy.ops.disable_weight_init)
    return UNetModel(**cfg, device="meta", operations=comfy.ops.disable_weight_init)


def _vae():
    from comfy.ldm.models.autoencoder import AutoencoderKL  # noqa: PLC0415

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        return AutoencoderKL(ddconfig=ddconfig, embed_dim=4)


def _checkpoint(sdxl: bool, channels: int) -> dict[str, torch.Tensor]:
    import comfy.sd1_clip  # noqa: PLC0415
    import comfy.sdxl_clip  # noqa: PLC0415

    config = _model_config(sdxl, channels)
    with torch.device("meta"):
        te = comfy.sdxl_clip.SDXLClipModel(device="meta") if sdxl else comfy.sd1_clip.SD1ClipModel(device="meta")
    seed = SEED + (2 if sdxl else 1)
    sd = config.process_unet_state_dict_for_saving(_random_state_dict(random_unet(sdxl, channels), seed))
    sd.update(config.process_vae_state_dict_for_saving(_random_state_dict(_vae(), seed + 10)))
    sd.update(config.process_clip_state_dict_for_saving(_random_state_dict(te, seed + 20)))
    if not sdxl:
        # Released SD1.5 files carry this buffer (ComfyUI's saver adds it for SDXL only).
        sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return {k: v.contiguous() for k, v in sd.items()}


def sd15_checkpoint(tiny: bool = True) -> Path:
    """Single-file SD1.5 checkpoint (UNet + CLIP-L + VAE, LDM layout, fp16)."""
    if tiny:
        register_tiny_model_configs()
    channels = TINY_CHANNELS if tiny else 320
    return cached_build(f"sd15-{'tiny' if tiny else 'full'}", lambda: _checkpoint(False, channels))


def sdxl_checkpoint(tiny: bool = True) -> Path:
    """Single-file SDXL checkpoint (UNet + CLIP-L + CLIP-G + VAE, SGM layout, fp16)."""
    if tiny:
        register_tiny_model_configs()
    channels = TINY_CHANNELS if tiny else 320
    return cached_build(f"sdxl-{'tiny' if tiny else 'full'}", lambda: _checkpoint(True, channels))


def controlnet_sd15(tiny: bool = True) -> Path:
    """SD1.5 ControlNet in the original ``control_model.*`` layout, fp16."""
    if tiny:
        register_tiny_model_configs()
    channels = TINY_CHANNELS if tiny else 320
    return cached_build(f"controlnet-sd15-{'tiny' if tiny else 'full'}",
                   lambda: _prefixed(_random_state_dict(random_unet(False, channels, controlnet=True), SEED + 3),
                                     "control_model."))


# --------------------------------------------------------------------------- CLIP vision

def _clip_vision(config_name: str, seed: int) -> dict[str, torch.Tensor]:
    import json  # noqa: PLC0415

    import comfy.clip_model  # noqa: PLC0415
    import comfy.ops  # noqa: PLC0415

    config = json.loads((Path(comfy.clip_model.__file__).parent / config_name).read_text())
    with torch.device("meta"):
        model = comfy.clip_model.CLIPVisionModelProjection(config, torch.float32, "meta", comfy.ops.manual_cast)
    return _random_state_dict(model, seed)


def clip_vision_vit_h() -> Path:
    """OpenCLIP ViT-H/14 vision tower with projection (HF layout, fp16, ~1.26 GB)."""
    return cached_build("clip-vision-vit-h", lambda: _clip_vision("clip_vision_config_h.json", SEED + 4))


def clip_vision_vit_bigg_state_dict() -> dict[str, torch.Tensor]:
    """The tensors of ``clip_vision_vit_bigg()``'s file, in memory: the suite's one bigG test loads them
    without writing 3.7 GB that no other test reads (the file code is ViT-H's, which the suite writes)."""
    return _clip_vision("clip_vision_config_g.json", SEED + 5)


def clip_vision_vit_bigg() -> Path:
    """OpenCLIP ViT-bigG/14 vision tower with projection (HF layout, fp16, ~3.7 GB)."""
    return cached_build("clip-vision-vit-bigg", clip_vision_vit_bigg_state_dict)


# --------------------------------------------------------------------------- Flux

# The workflow tests' Flux.1 [dev]: ComfyUI's own Flux class at the real width (3072, 24 heads of 128: its model
# detection fixes 24 heads) with one double block and no single block (0.37 B parameters instead of 12 B), reading
# text of TINY_T5's width. Its text encoders: the real CLIP-L and a T5 of the T5-XXL structure shrunk to TINY_T5
# (T5-XXL's 4.7 B parameters do not fit this machine); the server learns the shrunk T5 from the test node that
# write_tiny_t5_node writes. The VAE is Flux's (16 latent channels) at its real size.
FLUX_DOUBLE, FLUX_SINGLE = 1, 0
# T5-XXL's width (4096: SD3's TripleCLIPLoader joins it with CLIP-L/G padded to 4096) with one tiny layer
TINY_T5 = {"d_ff": 128, "d_kv": 32, "d_model": 4096, "num_heads": 2, "num_layers": 1, "num_decoder_layers": 1}


def flux_unet_config() -> dict:
    return dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=TINY_T5["d_model"],
                hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=FLUX_DOUBLE, depth_single_blocks=FLUX_SINGLE,
                axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[])


def _flux_model() -> dict[str, torch.Tensor]:
    import comfy.ops  # noqa: PLC0415
    from comfy.ldm.flux.model import Flux  # noqa: PLC0415

    cfg = {k: v for k, v in flux_unet_config().items() if k != "image_model"}
    with torch.device("meta"):
        model = Flux(**cfg, operations=comfy.ops.disable_weight_init)
    return {k: v.contiguous() for k, v in _random_state_dict(model, SEED + 30).items()}


def flux_dev() -> Path:
    """Flux.1 [dev] diffusion model (UNETLoader layout: no prefix), fp16, 1 double block (~0.74 GB)."""
    return cached_build("flux-dev-1block-t5w4096", _flux_model)


def _flux_vae() -> dict[str, torch.Tensor]:
    from comfy.ldm.models.autoencoder import AutoencodingEngine  # noqa: PLC0415

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        vae = AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
            decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig})
    return _random_state_dict(vae, SEED + 31)


def flux_vae() -> Path:
    """Flux's VAE (ae.safetensors layout, 16 latent channels), fp16 (~0.17 GB)."""
    return cached_build("flux-vae", _flux_vae)


def _clip_l_text() -> dict[str, torch.Tensor]:
    import comfy.sd1_clip  # noqa: PLC0415

    with torch.device("meta"):
        te = comfy.sd1_clip.SDClipModel(device="meta")
    sd = _random_state_dict(te.transformer, SEED + 32)
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return sd


def clip_l_text() -> Path:
    """CLIP-L text encoder as Flux's clip_l.safetensors (``text_model.*``), fp16 (~0.25 GB)."""
    return cached_build("clip-l-text", _clip_l_text)


def tiny_t5_config() -> dict:
    import json  # noqa: PLC0415

    import comfy.text_encoders.sd3_clip as sc  # noqa: PLC0415

    real = json.loads((Path(sc.__file__).parent / "t5_config_xxl.json").read_text())
    return {**real, **TINY_T5}


def _t5_tiny() -> dict[str, torch.Tensor]:
    import comfy.ops  # noqa: PLC0415
    from comfy.text_encoders.t5 import T5  # noqa: PLC0415

    with torch.device("meta"):
        model = T5(tiny_t5_config(), torch.float16, "meta", comfy.ops.disable_weight_init)
    return _random_state_dict(model, SEED + 33)


def t5xxl_tiny() -> Path:
    """A T5 of T5-XXL's structure at TINY_T5's size, in t5xxl_fp16.safetensors' layout."""
    return cached_build("t5xxl-tiny-w4096", _t5_tiny)


def write_tiny_t5_node(custom_nodes: Path) -> Path:
    """A one-file custom node that makes the server's T5-XXL text encoder the TINY_T5 one (tests only: its
    fixed config would build 4.7 B parameters whatever the file holds)."""
    path = Path(custom_nodes) / "ipadapter_test_tiny_t5.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by tests/support/host_models.py: the workflow tests' Flux and SD3.5 read a shrunk T5-XXL.\n"
        "import json, os, tempfile\n"
        "import comfy.sd1_clip\n"
        "import comfy.text_encoders.sd3_clip as sc\n"
        "import comfy.text_encoders.t5\n"
        f"CONFIG = {json.dumps(json.dumps(tiny_t5_config()))}\n"
        "_path = os.path.join(tempfile.mkdtemp(prefix='tiny-t5-'), 'config.json')\n"
        "open(_path, 'w').write(CONFIG)\n"
        "class TinyT5XXLModel(sc.T5XXLModel):\n"
        "    def __init__(self, device='cpu', layer='last', layer_idx=None, dtype=None, attention_mask=False, "
        "model_options={}):\n"
        "        comfy.sd1_clip.SDClipModel.__init__(self, device=device, layer=layer, layer_idx=layer_idx, "
        "textmodel_json_config=_path, dtype=dtype, special_tokens={'end': 1, 'pad': 0}, "
        "model_class=comfy.text_encoders.t5.T5, enable_attention_masks=attention_mask, "
        "return_attention_masks=attention_mask, model_options={**model_options, 'model_name': 't5xxl'})\n"
        "sc.T5XXLModel = TinyT5XXLModel\n"
        "NODE_CLASS_MAPPINGS = {}\n")
    return path


def clip_vision_vit_l() -> Path:
    """OpenAI CLIP ViT-L/14 vision tower with projection (HF layout, fp16, ~0.6 GB): XLabs' encoder."""
    return cached_build("clip-vision-vit-l", lambda: _clip_vision("clip_vision_config_vitl.json", SEED + 34))


# --------------------------------------------------------------------------- SD3.5 Large

# The workflow tests' SD3.5 Large: ComfyUI's MMDiT of SD3.5 Large's structure (RMS q/k norms, heads of 64, T5-width
# context, pooled 2048) with SD3_DEPTH joint blocks; an MMDiT's width is 64 · depth, so the real width needs the real
# depth (8 B parameters): this one is 2 blocks 128 wide. Its checkpoint holds the model and SD3's VAE (Flux's
# architecture); text comes from TripleCLIPLoader: CLIP-L, CLIP-G (real size) and the shrunk T5 above.
SD3_DEPTH = 2


def _sd3_config():
    import comfy.supported_models as sm  # noqa: PLC0415

    return sm.SD3(dict(in_channels=16, out_channels=16, patch_size=2, depth=SD3_DEPTH, input_size=None,
                       adm_in_channels=2048, pos_embed_max_size=192, num_patches=192 ** 2, qk_norm="rms",
                       pos_embed_scaling_factor=None, x_block_self_attn_layers=[],
                       context_embedder_config={"target": "torch.nn.Linear",
                                                "params": {"in_features": 4096, "out_features": 64 * SD3_DEPTH}}))


def _sd35_checkpoint() -> dict[str, torch.Tensor]:
    import comfy.ops  # noqa: PLC0415
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper  # noqa: PLC0415

    config = _sd3_config()
    cfg = {k: v for k, v in config.unet_config.items() if k not in ("num_patches",)}
    with torch.device("meta"):
        model = OpenAISignatureMMDITWrapper(**cfg, device="meta", operations=comfy.ops.disable_weight_init)
    sd = config.process_unet_state_dict_for_saving(_random_state_dict(model, SEED + 40))
    sd.update(config.process_vae_state_dict_for_saving(_flux_vae()))
    return {k: v.contiguous() for k, v in sd.items()}


def sd35_checkpoint() -> Path:
    """SD3.5 Large-structured checkpoint (2 joint blocks 128 wide + SD3's VAE), fp16 (~0.2 GB)."""
    return cached_build("sd35-2block", _sd35_checkpoint)


def _clip_g_text() -> dict[str, torch.Tensor]:
    import comfy.sdxl_clip  # noqa: PLC0415

    with torch.device("meta"):
        te = comfy.sdxl_clip.SDXLClipG(device="meta")
    return _random_state_dict(te.transformer, SEED + 41)


def clip_g_text() -> Path:
    """OpenCLIP ViT-bigG text encoder as SD3's clip_g.safetensors (``text_model.*``), fp16 (~1.4 GB)."""
    return cached_build("clip-g-text", _clip_g_text)


def clip_vision_siglip() -> Path:
    """google/siglip-so400m-patch14-384's vision tower as ComfyUI's sigclip_vision_patch14_384 (fp16, ~0.86 GB):
    the SD3.5 adapter's encoder."""
    return cached_build("clip-vision-siglip-384", lambda: _clip_vision("clip_vision_siglip_384.json", SEED + 42))


# --------------------------------------------------------------------------- Kolors

def clip_vision_vit_l_336_bin() -> Path:
    """OpenAI CLIP ViT-L/14 at 336 px (577 positions), Kolors' encoder, saved as the released pytorch_model.bin is
    (a pickle; fp16, ~0.6 GB): the popular extension's Kolors example names it clip-vit-large-patch14-336.bin."""
    path = cache_dir() / f"clip-vision-vit-l-336-{VERSION}.bin"
    if not path.is_file():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(_clip_vision("clip_vision_config_vitl_336.json", SEED + 43), str(tmp))
        tmp.chmod(0o644)
        os.replace(tmp, path)
    return path


# Kolors' UNet (FAMILIES.md §2) at 64 base channels: SDXL's blocks, cross-attention 2048, a 5632-wide vector input,
# and the text projection (ChatGLM3's 4096 -> 2048) that MinusZone's loader adds (tests/support/kolors_host.py).
KOLORS_CHANNELS = 64


def kolors_unet_config() -> dict:
    return {**unet_config(True, KOLORS_CHANNELS), "adm_in_channels": 5632}


def _kolors_unet() -> dict[str, torch.Tensor]:
    import comfy.ops  # noqa: PLC0415
    import comfy.supported_models as sm  # noqa: PLC0415
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: PLC0415

    cfg = sm.SDXL(kolors_unet_config()).unet_config
    model = UNetModel(**cfg, device="meta", operations=comfy.ops.disable_weight_init)
    model.encoder_hid_proj = torch.nn.Linear(4096, 2048, device="meta")
    return {k: v.contiguous() for k, v in _random_state_dict(model, SEED + 45).items()}


def kolors_unet() -> Path:
    """A Kolors-shaped UNet (KOLORS_CHANNELS base channels, encoder_hid_proj), ComfyUI's key layout, fp16 (~0.1 GB):
    what the test stand-in of MinusZone's Kolors UNet loader reads."""
    return cached_build("kolors-unet-64ch", _kolors_unet)


def chatglm3_stub() -> Path:
    """The file the test stand-in of MinusZone's ChatGLM3 loader is given: one tensor (its text is random)."""
    return cached_build("chatglm3-stub", lambda: {"stub": torch.zeros(1)})


def sdxl_vae() -> Path:
    """SDXL's VAE as a separate sdxl_vae.safetensors (4 latent channels), fp16 (~0.17 GB)."""
    return cached_build("sdxl-vae", lambda: _random_state_dict(_vae(), SEED + 44))


# --------------------------------------------------------------------------- folders

def models_dir(tmp_path: Path, *, tiny: bool = True, sdxl: bool = False) -> Path:
    """A ComfyUI models folder of symlinks to the cached files under stable names."""
    root = Path(tmp_path)
    links = {
        "checkpoints/sd15_random.safetensors": sd15_checkpoint(tiny),
        f"clip_vision/{CLIP_VISION_H_NAME}": clip_vision_vit_h(),
        "controlnet/control_sd15_random.safetensors": controlnet_sd15(tiny),
    }
    if sdxl:
        links["checkpoints/sdxl_random.safetensors"] = sdxl_checkpoint(tiny)
    for sub in ("checkpoints", "clip_vision", "controlnet", "ipadapter"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for rel, target in links.items():
        link = root / rel
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return root


def write_tiny_config_node(custom_nodes: Path) -> Path:
    """Write a one-file custom node that registers the tiny configs in a ComfyUI server.

    For tests that start ComfyUI as a subprocess with the tiny checkpoints: list
    ``custom_nodes`` under ``custom_nodes:`` in the extra_model_paths.yaml given
    with ``--extra-model-paths-config`` (or put the file in the host's own folder).
    """
    path = Path(custom_nodes) / "ipadapter_test_tiny_models.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by tests/host_models.py: lets ComfyUI detect the tiny random test UNets.\n"
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from support import host_models\n"
        "sys.path.pop(0)\n"
        "host_models.register_tiny_model_configs()\n"
        "NODE_CLASS_MAPPINGS = {}\n")
    return path


if __name__ == "__main__":
    # Pre-fill the cache (e.g. in a CI cache step): conftest locates the host.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import conftest  # noqa: F401,E402

    logging.basicConfig(level=logging.INFO)
    full = "--full" in sys.argv
    for tiny in ([True, False] if full else [True]):
        sd15_checkpoint(tiny)
        controlnet_sd15(tiny)
    sdxl_checkpoint(True)
    clip_vision_vit_h()
    if full:
        clip_vision_vit_bigg()
