"""Host side of loading: the ``ipadapter`` model folder, adapters as ComfyUI-managed
models, and finding the CLIP vision encoder an adapter needs."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapter import load_adapter
from .clip_vision_files import NotAnEncoder, encoder_of_file
from .config import AdapterConfig, encoder_by_widths
from .errors import IPAdapterError, IPAdapterMismatchError

log = logging.getLogger("ipadapter")

FOLDER = "ipadapter"
EXTENSIONS = {".safetensors", ".bin"}


def register_model_folder() -> None:
    """Add ``models/ipadapter`` once, keeping folders extra_model_paths.yaml registered first
    (ComfyUI reads that file before custom nodes import) and making sure our extensions count."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, exts = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    if default not in paths:
        paths = list(paths) + [default]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(exts) | EXTENSIONS)


@dataclass(eq=False)
class AdapterHandle:
    """An IP-Adapter as nodes pass it around (socket type IPA_MODEL)."""

    path: str
    config: AdapterConfig
    patcher: object  # comfy.model_patcher.ModelPatcher around the IPAdapterModel

    @property
    def model(self):
        return self.patcher.model

    @property
    def name(self) -> str:
        return Path(self.path).name


def load_adapter_handle(path) -> AdapterHandle:
    """Load a file into a ModelPatcher so ComfyUI's memory manager places it with the UNet."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops

    # manual_cast layers cast the stored (usually fp16) weights to whatever dtype the
    # call brings, so fp16/bf16/fp32 UNets and embeds all work with one copy.
    loaded = load_adapter(path, operations=comfy.ops.manual_cast)
    patcher = comfy.model_patcher.ModelPatcher(loaded.model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return AdapterHandle(str(path), loaded.config, patcher)


def encoder_of(clip_vision) -> str | None:
    """Name the CLIP vision model (ViT-H/14, ViT-bigG/14) from its structure, or None."""
    try:
        emb = clip_vision.model.vision_model.embeddings.class_embedding.shape[-1]
        proj = clip_vision.model.visual_projection.weight.shape[0]
    except AttributeError:
        return None
    return encoder_by_widths(emb, proj)


def check_encoder(config: AdapterConfig, clip_vision, what="clip_vision") -> None:
    found = encoder_of(clip_vision)
    if found != config.encoder:
        raise IPAdapterMismatchError(
            f"{what}: the adapter ({config.name}) needs the {config.encoder} CLIP vision model; the "
            f"one connected is {found or 'another encoder'}. Load the {config.encoder} file from "
            "models/clip_vision (README.md, Models).")


def find_clip_vision_file(config: AdapterConfig) -> str:
    """Pick the file in models/clip_vision that holds the encoder an adapter needs, by tensor
    shapes (no weights loaded); names only break ties. Says why each other file was skipped."""
    import folder_paths

    candidates, skipped = [], []
    for name in folder_paths.get_filename_list("clip_vision"):
        path = folder_paths.get_full_path("clip_vision", name)
        try:
            found = encoder_of_file(path)
        except NotAnEncoder as e:
            reason = str(e)
        else:
            if found == config.encoder:
                candidates.append(name)
                continue
            reason = f"encoder {found}, not {config.encoder}"
        log.info("clip_vision: skipped %s: %s", path, reason)
        skipped.append(f"'{name}': {reason}")
    if not candidates:
        listing = "; ".join(skipped) if skipped else "the folders hold no model files"
        raise IPAdapterError(
            f"clip_vision: no {config.encoder} CLIP vision model found in models/clip_vision "
            f"(searched: {', '.join(folder_paths.get_folder_paths('clip_vision'))}); the adapter "
            f"({config.name}) needs it. Skipped: {listing}. See README.md, Models, for the file to download.")
    return sorted(candidates)[0]


def zero_image_features(clip_vision) -> torch.Tensor:
    """Penultimate hidden states for an all-zero *normalised* pixel tensor: the reference's
    negative input for the Resampler and full-face variants."""
    import comfy.model_management as mm

    cached = getattr(clip_vision, "_ipadapter_zero_image", None)
    if cached is not None:  # one full encoder pass; the same for every image (bench: ~5 s on CPU)
        return cached
    mm.load_model_gpu(clip_vision.patcher)
    size = getattr(clip_vision, "image_size", 224)
    pixels = torch.zeros(1, 3, size, size, device=clip_vision.load_device)
    with torch.no_grad():
        out = clip_vision.model(pixel_values=pixels, intermediate_output=-2)
    clip_vision._ipadapter_zero_image = out[1].to(mm.intermediate_device()).float()
    return clip_vision._ipadapter_zero_image
