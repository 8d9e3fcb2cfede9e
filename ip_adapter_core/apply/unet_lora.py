"""The LoRA a FaceID file carries, merged into the UNet through ComfyUI's weight patching.

In the reference (tencent-ailab/IP-Adapter ``attention_processor_faceid.py``) every attention processor i of
the UNet adds a rank-128 LoRA to to_q / to_k / to_v / to_out (attn1 at even i, attn2 at odd i), with scale 1.
As a weight patch ``W + strength·up·down`` it is exactly that, costs nothing per step and is managed (merged,
offloaded, removed) by ComfyUI like any LoRA. The image branch then sees the LoRA-modified query, and adds
its output before to_out, as the reference does: the attn2 replace patch runs between to_q/k/v and to_out.

A user who also loads the file's ``_lora.safetensors`` (the same LoRA, converted) must not get it twice:
``already_applied`` recognises it (or our own earlier application) on the model.
"""
from __future__ import annotations

import logging

import torch

from ..errors import IPAdapterError
from ..files.config import LORA_PROJECTIONS

log = logging.getLogger("ipadapter")

_MODULE = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}  # ComfyUI's CrossAttention


def lora_targets(layers) -> dict[str, str]:
    """File LoRA name ``{i}.{proj}`` -> the ComfyUI weight key it patches, for a config's attn2 layers
    (attn2 layer k is processor 2k+1; its block's attn1 is 2k)."""
    targets = {}
    for k, layer in enumerate(layers):
        for i, attn in ((2 * k, "attn1"), (2 * k + 1, "attn2")):
            for p in LORA_PROJECTIONS:
                targets[f"{i}.{p}"] = f"{layer.block_prefix}.{attn}.{_MODULE[p]}.weight"
    return targets


def lora_patches(handle) -> dict:
    """ComfyUI weight patches (``comfy.lora.load_lora``'s adapters) for the handle's LoRA; {} without one."""
    if not handle.lora:
        return {}
    import comfy.lora

    targets = lora_targets(handle.config.layers)
    lora = {}
    for name in targets:
        lora[f"{name}.lora_up.weight"] = handle.lora[f"{name}_lora.up.weight"]
        lora[f"{name}.lora_down.weight"] = handle.lora[f"{name}_lora.down.weight"]
    # no alpha: the reference's LoRALinearLayer has network_alpha None, i.e. scale 1
    return comfy.lora.load_lora(lora, targets, log_missing=False)


def _same_lora(value, up: torch.Tensor, down: torch.Tensor) -> bool:
    weights = getattr(value, "weights", None)
    if not isinstance(weights, (tuple, list)) or len(weights) < 2:
        return False
    a, b = weights[0], weights[1]
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    if a.shape != up.shape or b.shape != down.shape:
        return False
    # the separate file is the same LoRA converted (fp16 both): equal up to storage rounding
    return bool(torch.allclose(a.float(), up.float(), atol=1e-3)) and bool(torch.allclose(b.float(), down.float(), atol=1e-3))


def already_applied(model, handle) -> bool:
    """Whether ``model`` carries this LoRA already: loaded from the separate ``_lora.safetensors`` with a LoRA
    loader, or applied by an earlier IP-Adapter Apply of the same file. One weight (attn1 to_q of the first
    block) tells: a LoRA of the same values there is this one."""
    key = lora_targets(handle.config.layers[:1])["0.to_q"]
    up, down = handle.lora["0.to_q_lora.up.weight"], handle.lora["0.to_q_lora.down.weight"]
    return any(_same_lora(entry[1], up, down) for entry in getattr(model, "patches", {}).get(key, []))


def apply_lora(model, handle, strength: float) -> None:
    """Patch the FaceID LoRA of ``handle`` into ``model`` (a clone the caller owns) at ``strength``
    (1 = the reference), unless it is there already."""
    if not getattr(handle, "lora", None) or strength == 0:
        return
    if already_applied(model, handle):
        log.info("FaceID LoRA of '%s' is already on the model (a LoRA loader or an earlier Apply): not added again",
                 handle.name)
        return
    patches = lora_patches(handle)
    applied = model.add_patches(patches, strength)
    if len(applied) != len(patches):
        missing = sorted(set(patches) - set(applied))[:3]
        raise IPAdapterError(f"ipadapter: the FaceID LoRA of '{handle.name}' targets {len(patches)} UNet weights; "
                             f"the model has {len(applied)} of them (missing e.g. {missing}). Use a standard "
                             "SD1.5 / SDXL checkpoint for FaceID.")
    log.info("FaceID LoRA of '%s' merged into the model at strength %g (%d weights)", handle.name, strength,
             len(applied))
