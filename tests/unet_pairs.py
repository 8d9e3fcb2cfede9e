"""One set of UNet weights in two hosts: diffusers' ``UNet2DConditionModel`` and ComfyUI's
``UNetModel`` (inside a ``ModelPatcher``) built on the *same tensors*, plus the small part of
a diffusers pipeline that its own IP-Adapter loading needs.

Memory: the fp32 weights (SD1.5 3.4 GB, SDXL 10.3 GB) are held once. They are drawn once into
a raw float32 file in the test cache (``host_models.cache_dir()``), one tensor at a time, and
memory-mapped read-only (``torch.from_file``, a private mapping): both UNets are built on
``meta`` and *assigned* views of that one mapping. The pages are clean file pages, so on a
machine shared with other jobs the kernel can drop and re-read them instead of killing the
test; later runs skip the drawing.
"""
from __future__ import annotations

import logging
import os
import time
import zlib
from pathlib import Path

import torch

from unet_configs import sd15_config, sdxl_config

log = logging.getLogger("ipadapter.tests")

CONFIGS = {"sd15": sd15_config, "sdxl": sdxl_config}
WEIGHTS_VERSION = "v1"
ALIGN = 16  # floats: every tensor starts on a 64-byte boundary of the file


def _layout(module: torch.nn.Module):
    """[(key, shape, offset in floats)] in state-dict order, and the total float count."""
    out, offset = [], 0
    for key, t in module.state_dict(keep_vars=True).items():
        out.append((key, tuple(t.shape), offset))
        offset += -(-t.numel() // ALIGN) * ALIGN
    return out, offset


def _owners(module: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {f"{m_name}.{p_name}" if m_name else p_name: m
            for m_name, m in module.named_modules() for p_name, _ in m.named_parameters(recurse=False)}


def _draw(key, shape, owner, weights_shape, seed) -> torch.Tensor:
    """PyTorch's default initialisation, as diffusers leaves it: Linear/Conv weights and biases
    U(±1/sqrt(fan_in)), norm weights 1 and biases 0; each tensor from its own seed."""
    if isinstance(owner, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
        return torch.ones(shape) if key.endswith("weight") else torch.zeros(shape)
    fan_in = 1
    for d in weights_shape[1:]:
        fan_in *= d
    gen = torch.Generator().manual_seed(seed * 7919 + zlib.crc32(key.encode()))
    bound = fan_in ** -0.5
    return torch.empty(shape).uniform_(-bound, bound, generator=gen)


def _weights_file(family: str, seed: int, meta_unet) -> tuple[Path, list, int]:
    from host_models import cache_dir

    layout, total = _layout(meta_unet)
    path = cache_dir() / f"unet-{family}-diffusers-fp32-seed{seed}-{WEIGHTS_VERSION}.f32"
    if path.is_file() and path.stat().st_size == total * 4:
        return path, layout, total
    t0 = time.perf_counter()
    owners = _owners(meta_unet)
    sd = meta_unet.state_dict(keep_vars=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for key, shape, offset in layout:
                weight_key = key.rsplit(".", 1)[0] + ".weight"
                t = _draw(key, shape, owners[key], tuple(sd[weight_key].shape), seed)
                f.seek(offset * 4)
                t.numpy().tofile(f)
            f.truncate(total * 4)
        tmp.chmod(0o644)
        os.replace(tmp, path)  # parallel workers may build the same file
    finally:
        tmp.unlink(missing_ok=True)
    log.info("drew %s (%.1f GB) in %.1fs", path.name, total * 4 / 1e9, time.perf_counter() - t0)
    return path, layout, total


def diffusers_unet(family: str, seed: int = 0):
    """diffusers' UNet of the real SD1.5 / SDXL structure, fp32, PyTorch-default random
    weights (fixed seed) mapped from the test cache (drawn there on first use)."""
    from diffusers import UNet2DConditionModel

    t0 = time.perf_counter()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**CONFIGS[family]())
    path, layout, total = _weights_file(family, seed, unet)
    flat = torch.from_file(str(path), shared=False, size=total, dtype=torch.float32)
    sd = {}
    for key, shape, offset in layout:
        n = 1
        for d in shape:
            n *= d
        sd[key] = flat[offset:offset + n].view(shape)
    unet.load_state_dict(sd, strict=True, assign=True)
    unet.eval().requires_grad_(False)
    log.info("mapped diffusers %s UNet in %.1fs", family, time.perf_counter() - t0)
    return unet


def comfy_model_sharing(unet):
    """A ComfyUI ModelPatcher whose UNet uses ``unet``'s tensors (no copy).

    ComfyUI detects the model from the diffusers keys as it does for a diffusers-format
    file (``unet_config_from_diffusers_unet`` -> ``model_config_from_unet_config``: SD15 or
    SDXL), builds its ``BaseModel`` on meta, and ``load_state_dict(assign=True)`` puts the
    diffusers tensors in place under ComfyUI's names.
    """
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.utils

    sd = unet.state_dict()
    unet_config = comfy.model_detection.unet_config_from_diffusers_unet(sd)
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config)
    assert model_config is not None, "ComfyUI did not recognise the diffusers UNet"
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="meta")
    key_map = comfy.utils.unet_to_diffusers(model_config.unet_config)  # diffusers key -> ComfyUI key
    missing = sorted(set(sd) - set(key_map))
    assert not missing, f"diffusers keys without a ComfyUI name: {missing[:5]}"
    model.diffusion_model.load_state_dict({key_map[k]: v for k, v in sd.items()}, strict=True, assign=True)
    model.eval()
    ref = unet.conv_in.weight
    assert model.diffusion_model.input_blocks[0][0].weight.data_ptr() == ref.data_ptr(), "weights were copied"
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def tiny_sd15_pair(seed: int = 0):
    """(diffusers UNet, ComfyUI ModelPatcher on the same tensors) of the real SD1.5 structure at 32
    base channels, float32. ComfyUI's ``unet_config_from_diffusers_unet`` only knows 320-channel
    configs, so ComfyUI's side takes the config it detects for the suite's tiny checkpoint
    (host_models.unet_config; TinySD15); diffusers' side uses ComfyUI's 32 norm groups (sd15_config(10)
    alone gives 16), so both compute the same function."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.utils
    from diffusers import UNet2DConditionModel

    from host_models import register_tiny_model_configs, unet_config

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**sd15_config(10), "norm_num_groups": 32}).eval().requires_grad_(False)
    register_tiny_model_configs()
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config(False, 32))
    assert model_config is not None and type(model_config).__name__ == "TinySD15", model_config
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="meta")
    sd = unet.state_dict()
    key_map = comfy.utils.unet_to_diffusers(model_config.unet_config)
    missing = sorted(set(sd) - set(key_map))
    assert not missing, f"diffusers keys without a ComfyUI name: {missing[:5]}"
    model.diffusion_model.load_state_dict({key_map[k]: v for k, v in sd.items()}, strict=True, assign=True)
    assert model.diffusion_model.input_blocks[0][0].weight.data_ptr() == unet.conv_in.weight.data_ptr()
    patcher = comfy.model_patcher.ModelPatcher(model.eval(), load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return unet, patcher


def small_clip_vision(seed: int = 0):
    """A CLIP vision encoder with ViT-H/14's output widths (1280 hidden, 1024 projection,
    257 tokens at 224 px) and few layers: feature *shapes* are what the adapters need."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1280, intermediate_size=256, num_hidden_layers=3, num_attention_heads=8,
        image_size=224, patch_size=14, projection_dim=1024)).eval().requires_grad_(False)


def diffusers_ip_host(family: str, unet, image_encoder):
    """An object with what diffusers' ``IPAdapterMixin`` (``load_ip_adapter``,
    ``set_ip_adapter_scale``, ``unload_ip_adapter``) and the pipeline's
    ``encode_image`` / ``prepare_ip_adapter_image_embeds`` use: ``unet`` and
    ``image_encoder``. Those methods run unchanged, borrowed from the real pipeline class;
    the image is given as a normalised pixel tensor, so no feature extractor is needed."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.loaders import IPAdapterMixin

    pipe = {"sd15": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}[family]

    class PipelineParts(IPAdapterMixin):
        encode_image = pipe.encode_image
        prepare_ip_adapter_image_embeds = pipe.prepare_ip_adapter_image_embeds

        def __init__(self):
            self.unet = unet
            self.image_encoder = image_encoder

        def register_to_config(self, **kwargs):  # a pipeline's config; unload_ip_adapter writes to it
            pass

        def unload_ip_adapter(self):
            """diffusers' unloading, keeping the encoder (a pipeline would drop it)."""
            encoder = self.image_encoder
            super().unload_ip_adapter()
            self.image_encoder = encoder

    return PipelineParts()
