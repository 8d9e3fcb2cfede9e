"""The host-side steps around training that the nodes call: building the training set with the
host's VAE / CLIP / CLIP vision, choosing the adapter to train, wrapping and saving the result."""
from __future__ import annotations

import logging
import os

import torch

from ..errors import IPAdapterError, IPAdapterMismatchError
from ..files.base_model import check_model_layers, model_base, model_family, unet_config_of
from ..files.config import FAMILY_NAMES, KOLORS, UNET_FAMILIES
from ..files.loader import AdapterHandle
from ..input_bounds import check_image_batch
from ..prompt.vision import ZERO_IMAGE_ATTR, encode, encoder_of
from .adapter_init import comfy_text_kv, new_adapter, new_config
from .comfy_train import TrainingSet
from .save import save_adapter

log = logging.getLogger("ipadapter")
TEXT_TOKENS = 77


def _captions(text: str, n: int) -> list[str]:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return [""] * n
    if len(lines) == 1:
        return lines * n
    if len(lines) != n:
        raise IPAdapterError(f"captions: {len(lines)} lines for {n} images; give one caption per line in image "
                             "order, or a single line for all of them.")
    return lines


def _encode_text(clip, text: str):
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    if cond.shape[1] > TEXT_TOKENS:
        log.info("caption %r is longer than %d tokens; training uses its first %d", text[:40], TEXT_TOKENS,
                 TEXT_TOKENS)
    return cond[:, :TEXT_TOKENS].float().cpu(), None if pooled is None else pooled.float().cpu()


def make_training_set(images, captions, vae, clip, clip_vision, crop) -> TrainingSet:
    check_image_batch(images, "images")
    n, h, w = images.shape[:3]
    if h % 8 or w % 8:
        raise IPAdapterError(f"images: {w}×{h} pixels; the VAE needs sides that are multiples of 8. Resize or "
                             "crop the images first (e.g. ImageScale).")
    encoder = encoder_of(clip_vision)
    if encoder is None:
        raise IPAdapterError("clip_vision: not a ViT-H/14 or ViT-bigG/14 CLIP vision model; IP-Adapters use one "
                             "of those.")
    texts = _captions(captions, n)
    latents = vae.encode(images[..., :3]).float().cpu()
    encoded = [_encode_text(clip, t) for t in texts]
    empty_cond, empty_pooled = _encode_text(clip, "")
    conds = torch.cat([c for c, _ in encoded])
    pooled = None if encoded[0][1] is None else torch.cat([p for _, p in encoded])
    vision = encode(clip_vision, images, crop)
    return TrainingSet(latents, conds, pooled, empty_cond, empty_pooled, vision.image_embeds.float().cpu(),
                       vision.penultimate_hidden_states.float().cpu(),
                       getattr(vision, ZERO_IMAGE_ATTR).float().cpu(), encoder, (h, w))


def adapter_for_model(model, data: TrainingSet, projection: str | None, handle=None, seed: int = 0):
    """A float32 adapter to train: new (``projection``), K'/V' from the model's text K/V, or a copy
    of ``handle``'s weights (never the handle itself)."""
    # ComfyUI runs nodes under inference_mode: tensors made there cannot be trained
    with torch.inference_mode(False):
        return _adapter_for_model(model, data, projection, handle, seed)


def _adapter_for_model(model, data, projection, handle, seed):
    family = model_family(model)
    if model_base(model) == KOLORS:  # an SDXL-layout UNet whose text comes through its own projection
        raise IPAdapterMismatchError("model: training works on SD1.5 and SDXL UNets; this is a Kolors UNet, which it "
                                     "does not train for. Train with an SD1.5 or SDXL checkpoint.")
    if family not in UNET_FAMILIES:
        raise IPAdapterMismatchError(f"model: training works on SD1.5 and SDXL UNets; this is a {FAMILY_NAMES[family]} "
                                     "model. Train with an SD1.5 or SDXL checkpoint.")
    channels = unet_config_of(model).get("model_channels", 320)
    if projection is not None:
        config = new_config(family, projection, encoder=data.encoder, model_channels=channels)
        check_model_layers(model, config)
        return new_adapter(config, comfy_text_kv(model.model.diffusion_model, config), seed=seed)
    if handle is None:
        raise IPAdapterError("ipadapter: variant is 'fine-tune the connected adapter' but no adapter is connected; "
                             "connect one (IP-Adapter Loader) or choose a new variant.")
    config = handle.config
    if config.family != family:
        raise IPAdapterMismatchError(f"ipadapter: '{handle.name}' is for another model family than this model.")
    if config.encoder != data.encoder:
        raise IPAdapterMismatchError(f"ipadapter: '{handle.name}' reads {config.encoder} features but the training "
                                     f"set was encoded with {data.encoder}; encode it with the adapter's encoder.")
    check_model_layers(model, config)
    adapter = new_adapter(config, seed=seed)
    with torch.no_grad():
        source = {k: v.detach().float().cpu() for k, v in handle.model.state_dict().items()}
        adapter.load_state_dict(source, strict=True)
    return adapter.requires_grad_(True)


def trained_handle(adapter, name: str) -> AdapterHandle:
    """An IPA_MODEL for the trained weights (float32, managed by ComfyUI like a loaded one)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    adapter = adapter.eval().requires_grad_(False).cpu()
    patcher = comfy.model_patcher.ModelPatcher(adapter, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return AdapterHandle(name, adapter.config, patcher)


def save_trained(handle, filename_prefix: str):
    import folder_paths

    out_dir = folder_paths.get_output_directory()
    folder, filename, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
    path = os.path.join(folder, f"{filename}_{counter:05}_.safetensors")
    return save_adapter(handle.model, path)
