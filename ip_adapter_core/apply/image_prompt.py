"""Apply an image prompt to a model: check that adapter, prompt and model belong together, then hand the
prompt to the patch module of the model's architecture (unet_patch.py: SD1.5, SDXL; flux_patch.py: Flux;
sd3_patch.py: SD3.5 Large)."""
from __future__ import annotations

import torch

from ..errors import IPAdapterMismatchError
from ..files.base_model import check_model_layers, model_family
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
    branch = branch_for(model, adapter, prompt, mask)
    apply = {FLUX: apply_flux_prompt, SD3: apply_sd3_prompt}.get(family, apply_unet_prompt)
    return apply(model, branch)
