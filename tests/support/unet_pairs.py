"""One set of UNet weights in two hosts: diffusers' ``UNet2DConditionModel`` and ComfyUI's
``UNetModel`` (inside a ``ModelPatcher``) built on the *same tensors*, plus the small part of
a diffusers pipeline that its own IP-Adapter loading needs.

Weights: the UNet of the suite's random full-size checkpoint of the family (tests/host_models.py, fp16 on
disk, the file the workflow and soak tests load too), read as float32 once, one tensor at a time; both UNets
are built on ``meta`` and *assigned* those tensors. Float16 values are exact in float32, so both sides compute
in float32 on identical weights; no second weight file is kept (the float32 draws these tests used before took
13.7 GB of the test cache). Memory: SD1.5 3.4 GB, SDXL 10.3 GB while a family's pair lives.
"""
from __future__ import annotations

import logging
import time

import torch

from support.unet_configs import sd15_config, sdxl_config

log = logging.getLogger("ipadapter.tests")

CONFIGS = {"sd15": sd15_config, "sdxl": sdxl_config}
CKPT_PREFIX = "model.diffusion_model."  # the UNet's keys in a checkpoint (LDM layout, as host_models writes)


def diffusers_unet(family: str):
    """diffusers' UNet of the real SD1.5 / SDXL structure, float32, on the UNet weights of the suite's random
    full-size checkpoint of ``family`` (built there on first use), mapped by ComfyUI's own diffusers<->LDM
    key table."""
    import comfy.model_detection
    import comfy.utils
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    from support import host_models

    t0 = time.perf_counter()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**CONFIGS[family]())
    meta = unet.state_dict()
    model_config = comfy.model_detection.model_config_from_unet_config(
        comfy.model_detection.unet_config_from_diffusers_unet(meta))
    key_map = comfy.utils.unet_to_diffusers(model_config.unet_config)  # diffusers key -> checkpoint key
    missing = sorted(set(meta) - set(key_map))
    assert not missing, f"diffusers keys without a checkpoint name: {missing[:5]}"
    path = host_models.sd15_checkpoint(tiny=False) if family == "sd15" else host_models.sdxl_checkpoint(tiny=False)
    sd = {}
    with safe_open(str(path), framework="pt") as f:
        for key, t in meta.items():
            w = f.get_tensor(CKPT_PREFIX + key_map[key])
            assert w.numel() == t.numel(), (key, tuple(w.shape), tuple(t.shape))
            sd[key] = w.to(torch.float32).reshape(t.shape)  # 1x1 conv <-> linear projections share the values
    unet.load_state_dict(sd, strict=True, assign=True)
    unet.eval().requires_grad_(False)
    log.info("diffusers %s UNet on %s's weights (float32) in %.1fs", family, path.name, time.perf_counter() - t0)
    return unet


def release(*modules: torch.nn.Module) -> None:
    """Free a pair's float32 weights now, whoever still holds the modules (ComfyUI's list of loaded models keeps
    its patcher after the test): they are anonymous memory, SDXL's 10.3 GB, which the next tests need."""
    with torch.no_grad():
        for m in modules:
            for t in [*m.parameters(), *m.buffers()]:
                t.data = torch.empty(0, dtype=t.dtype)


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

    from support.host_models import register_tiny_model_configs, unet_config

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
