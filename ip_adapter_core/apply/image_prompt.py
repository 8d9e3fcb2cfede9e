"""Apply an image prompt to a model: check that adapter, prompt and model belong together, then hand the
prompt to the patch module of the model's architecture (unet_patch.py: SD1.5, SDXL; flux_patch.py: Flux;
sd3_patch.py: SD3.5 Large)."""
from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import IPAdapterMismatchError
from ..files.base_model import check_model_layers, model_family, text_projection
from ..files.config import FAMILY_NAMES, FLUX, SD3
from ..prompt.embeds import ImagePrompt
from .branch import branch_for, check_prompt_for
from .flux_patch import apply_flux_prompt
from .sd3_patch import apply_sd3_prompt
from .unet_patch import apply_unet_prompt


def apply_image_prompt(model, adapter, prompt: ImagePrompt, mask: torch.Tensor | None = None):
    """Return a clone of ``model`` with ``prompt`` added (the model itself is not changed)."""
    cfg = adapter.config
    family = model_family(model)
    if family != cfg.family:
        have, need = FAMILY_NAMES[family], FAMILY_NAMES[cfg.family]
        raise IPAdapterMismatchError(
            f"ipadapter: '{adapter.name}' is an {need} IP-Adapter but the model is {have}. "
            f"Use an {have} IP-Adapter file, or an {need} model.")
    check_model_layers(model, cfg)
    check_prompt_for(adapter, prompt)
    if cfg.text_proj:
        prompt = through_text_projection(model, prompt)
    branch = branch_for(model, adapter, prompt, mask)
    apply = {FLUX: apply_flux_prompt, SD3: apply_sd3_prompt}.get(family, apply_unet_prompt)
    return apply(model, branch)


def through_text_projection(model, prompt: ImagePrompt) -> ImagePrompt:
    """Kolors FaceID Plus: its tokens are made in ChatGLM3's width and read by K'/V' through the UNet's own
    ``encoder_hid_proj`` (4096 -> 2048), as Kolors' pipeline appends them to the text before that projection. Done
    once here, in float32, with the projection's weights as loaded (times ``text_proj_scale``, the popular
    extension's weight_kolors, which scales its weight and bias)."""
    proj = text_projection(model, prompt.config.cross_dim)
    weight = proj.weight.detach().to("cpu", torch.float32)
    bias = None if proj.bias is None else proj.bias.detach().to("cpu", torch.float32)
    scale = prompt.text_proj_scale

    def projected(tokens):
        out = torch.nn.functional.linear(tokens.to("cpu", torch.float32), weight, bias)
        return (out if scale == 1.0 else out * scale).to(tokens.dtype)

    return replace(prompt, positive=projected(prompt.positive), negative=projected(prompt.negative))
