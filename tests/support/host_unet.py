"""ComfyUI model objects (the real SD1.5 / SDXL UNet classes) with deterministic random
weights, built in-process for host tests that need no text encoder or VAE."""
from __future__ import annotations

import functools
import logging
import time

import torch

from support.unet_configs import sd15_config, sdxl_config

log = logging.getLogger("ipadapter.tests")


@functools.lru_cache(maxsize=2)
def comfy_unet_config(family: str) -> dict:
    """The unet_config ComfyUI itself detects for the real diffusers structure."""
    import comfy.model_detection
    from diffusers import UNet2DConditionModel

    cfg = {"sd15": sd15_config, "sdxl": sdxl_config}[family]()
    with torch.device("meta"):
        sd = UNet2DConditionModel(**cfg).state_dict()
    out = comfy.model_detection.unet_config_from_diffusers_unet(sd)
    return {k: v for k, v in out.items() if k != "dtype"}


def init_random_(module: torch.nn.Module, seed: int = 0) -> None:
    """comfy.ops layers skip initialisation: give every parameter a defined value.
    Weights ~ N(0, 1/fan_in) keep activations O(1) through the network."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()


def comfy_on_cuda() -> bool:
    """True when ComfyUI runs on a CUDA GPU here (the GPU-only tests: IPADAPTER_TEST_GPU=1, bench/gpu_check.sh)."""
    import comfy.model_management as mm

    return torch.cuda.is_available() and mm.get_torch_device().type == "cuda"


def comfy_model(family: str = "sd15", seed: int = 0, device=None, dtype=torch.float32):
    """A ComfyUI ModelPatcher around the real UNet class for ``family``, float32 unless ``dtype`` says."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher

    t0 = time.time()
    unet_config = dict(comfy_unet_config(family))
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config)
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=device)
    if device != "meta":
        init_random_(model.diffusion_model, seed)
    model.eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    log.info("built random %s ComfyUI model in %.1fs", family, time.time() - t0)
    return patcher


def unet_forward(model, x, sigma, context, cond_or_uncond, y=None, run=None):
    """The raw UNet noise prediction with transformer_options as the sampler passes them,
    including the extension's per-run state (made for this call unless ``run`` is given)."""
    from ipadapter_ext.ip_adapter_core.apply.run_state import RunState
    from ipadapter_ext.ip_adapter_core.apply.transformer_options import RUN_KEY

    to = dict(model.model_options.get("transformer_options", {}))
    to["cond_or_uncond"] = list(cond_or_uncond)
    to["sigmas"] = sigma
    to[RUN_KEY] = run if run is not None else RunState.for_sampling(model, sigma, x.shape)
    t = model.get_model_object("model_sampling").timestep(sigma).float()
    with torch.no_grad():
        return model.model.diffusion_model(x, t, context=context, y=y, transformer_options=to)


def sdxl_family_model(**changes):
    """(a ModelPatcher on the meta device, its model config) of an SDXL-family UNet with ``changes`` to its
    config, detected by ComfyUI itself (distilled and other variants)."""
    import comfy.model_detection
    import comfy.model_patcher

    cfg = dict(comfy_unet_config("sdxl"), **changes)
    model_config = comfy.model_detection.model_config_from_unet_config(cfg)
    model = model_config.get_model({}, device="meta")
    return comfy.model_patcher.ModelPatcher(model, load_device="cpu", offload_device="cpu"), model_config
