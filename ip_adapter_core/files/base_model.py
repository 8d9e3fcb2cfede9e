"""Which base model a ComfyUI model is (SD1.5, SDXL, Kolors, Flux.1, SD3.5 Large), from its configuration, and
whether its attention layers are where an adapter's are; the adapter side of the same question is config.py."""
from __future__ import annotations

import torch

from ..errors import IPAdapterMismatchError
from .config import FAMILY_BY_CROSS_DIM, FAMILY_NAMES, KOLORS, KOLORS_TEXT_WIDTH
from .flux_layout import FLUX, flux_model_blocks
from .layers import layout_difference
from .sd3_layout import SD3, mmdit_kind, mmdit_model_blocks


def model_family(model) -> str:
    """'sd15', 'sdxl' (UNets, by their cross-attention width), 'flux' (Flux.1) or 'sd3' (an MMDiT of SD3.5 Large's
    structure); refuses other models."""
    unet_config = unet_config_of(model)
    if flux_model_blocks(unet_config) is not None:
        return FLUX
    if mmdit_model_blocks(unet_config) is not None:
        return SD3
    ctx = unet_config.get("context_dim")
    fam = FAMILY_BY_CROSS_DIM.get(ctx)
    if fam is None or "transformer_depth" not in unet_config:
        name = type(model.model).__name__
        kind = unet_config.get("image_model") or mmdit_kind(unet_config)
        found = f"{kind}" if mmdit_kind(unet_config) else f"a {kind} transformer" if kind \
            else f"cross-attention width {ctx}"
        raise IPAdapterMismatchError(
            f"model: IP-Adapter works on Stable Diffusion 1.5 and SDXL UNets, Flux.1 and SD3.5 Large; this model "
            f"({name}, {found}) is none of them. Load an SD1.5, SDXL, Flux.1 [dev]/[schnell] or SD3.5 Large model.")
    return fam


# Kolors' UNet reads a 5632-wide vector (ChatGLM3's pooled 4096 + 6 size ids x 256), SDXL's 2816 (FAMILIES.md §2)
KOLORS_ADM = 5632
NO_KOLORS_HOST = ("ComfyUI has no Kolors model of its own: install MinusZone's Kolors nodes (ComfyUI-Kolors-MZ) and "
                  "load the Kolors UNet with its MZ_KolorsUNETLoaderV2 (and ChatGLM3 with MZ_ChatGLM3Loader).")


def model_base(model) -> str:
    """KOLORS for a Kolors UNet (SDXL layout, cross-attention 2048, a 5632-wide vector input), told by its structure
    whichever extension loaded it; "" for every other model."""
    cfg = unet_config_of(model)
    return KOLORS if cfg.get("context_dim") == 2048 and cfg.get("adm_in_channels") == KOLORS_ADM else ""


def text_projection(model, width: int = KOLORS_TEXT_WIDTH):
    """A Kolors UNet's ``encoder_hid_proj`` (the text encoder's ``width`` -> 2048: ChatGLM3's 4096), or None when
    the model has none of that width."""
    proj = getattr(getattr(model.model, "diffusion_model", None), "encoder_hid_proj", None)
    weight = getattr(proj, "weight", None)
    ok = isinstance(weight, torch.Tensor) and tuple(weight.shape) == (2048, width)
    return proj if ok else None


def unet_config_of(model) -> dict:
    """The ComfyUI unet_config of a ModelPatcher's model ({} when it has none)."""
    return getattr(getattr(model.model, "model_config", None), "unet_config", {}) or {}


def check_model_layers(model, config) -> None:
    """Refuse a model of the family whose attention layers are not where (or not as wide as) the
    adapter's are: distilled SDXL models (SSD-1B, Vega, KOALA), other depths or widths; on Flux, a
    transformer with other block counts or width."""
    if config.family == SD3:
        have, want = mmdit_model_blocks(unet_config_of(model)), (len(config.layer_hidden), config.layer_hidden[0])
        if have != want:
            raise IPAdapterMismatchError(
                f"model: this SD3 model has {have[0]} joint blocks {have[1]} wide, but the adapter was made for "
                f"{want[0]} blocks {want[1]} wide. Use SD3.5 Large (or a fine-tune of it); SD3.5 Large Turbo has the "
                "same blocks.")
        return
    if config.family == FLUX:
        have = flux_model_blocks(unet_config_of(model))
        want = (config.double_blocks, config.single_blocks, config.layer_hidden[0])
        if have is None or have[0] != want[0] or have[2] != want[2] or want[1] not in (0, have[1]):
            found = ("no Flux.1 blocks" if have is None
                     else f"{have[0]} double and {have[1]} single blocks {have[2]} wide")
            raise IPAdapterMismatchError(
                f"model: this Flux model has {found}, but the adapter was made for {want[0]} double and {want[1]} "
                f"single blocks {want[2]} wide. Use the Flux.1 model the adapter was trained for (dev).")
        return
    have = model_base(model)
    if have != config.base:
        name = type(model.model).__name__
        if config.base == KOLORS:
            raise IPAdapterMismatchError(
                f"model: '{config.name}' is a Kolors IP-Adapter, but this model ({name}) is not a Kolors UNet (a "
                f"Kolors UNet reads a {KOLORS_ADM}-wide vector; this one {unet_config_of(model).get('adm_in_channels')}). "
                + NO_KOLORS_HOST)
        raise IPAdapterMismatchError(
            f"model: this model ({name}) is a Kolors UNet; '{config.name}' is an SDXL IP-Adapter, which Kolors was not "
            "trained with. Use Kolors' own IP-Adapter (Kolors-IP-Adapter-Plus, or FaceID Plus for faces).")
    if config.text_proj and text_projection(model, config.cross_dim) is None:
        raise IPAdapterMismatchError(
            f"model: '{config.name}' reads its face tokens through the Kolors UNet's text projection "
            f"(encoder_hid_proj, {config.cross_dim} -> 2048), and this model has none. Load the UNet with a Kolors loader that keeps it. "
            + NO_KOLORS_HOST)
    diff = layout_difference(unet_config_of(model), config.layers)
    if diff is not None:
        name = FAMILY_NAMES[config.family]
        raise IPAdapterMismatchError(
            f"model: this {type(model.model).__name__} UNet reads {name}-width text but its layers differ "
            f"from the {name} UNet the adapter was trained for: {diff}. Distilled models (SSD-1B, Segmind "
            f"Vega, KOALA) and other variants need an IP-Adapter trained for them; use a standard {name} "
            "checkpoint (or a fine-tune of it).")
