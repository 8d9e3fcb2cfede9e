"""Host side of loading an adapter: the ``ipadapter`` model folder registered with ComfyUI, and
adapters as ComfyUI-managed models (the handle nodes pass around). Which file holds what is
model_folders.py; CLIP vision questions are vision.py."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from .adapter import load_adapter
from .config import AdapterConfig
from .model_folders import EXTENSIONS, FOLDER

# Where the Flux IP-Adapter packs keep their files (x-flux-comfyui, ComfyUI-IPAdapter-Flux): listed too, so their
# users' files and converted workflows need no move.
PACK_FOLDERS = (os.path.join("xlabs", "ipadapters"), "ipadapter-flux")


def register_model_folder() -> None:
    """Add ``models/ipadapter`` once, keeping folders extra_model_paths.yaml registered first
    (ComfyUI reads that file before custom nodes import) and making sure our extensions count."""
    import folder_paths

    paths, exts = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    for folder in (FOLDER, *PACK_FOLDERS):
        default = os.path.join(folder_paths.models_dir, folder)
        if default not in paths:
            paths = list(paths) + [default]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(exts) | EXTENSIONS)


@dataclass(eq=False)
class AdapterHandle:
    """An IP-Adapter as nodes pass it around (socket type IPA_MODEL)."""

    path: str
    config: AdapterConfig
    patcher: object  # comfy.model_patcher.ModelPatcher around the IPAdapterModel
    lora: Mapping = field(default_factory=lambda: MappingProxyType({}))  # FaceID: the UNet LoRA of the file (adapter.LoadedAdapter.lora)
    faceid_version: str = ""  # FaceID Plus: "v2" / "v1" when a preset chose the file for that; "" unknown

    @property
    def model(self):
        return self.patcher.model

    @property
    def name(self) -> str:
        return Path(self.path).name


def load_adapter_handle(path, faceid_version: str = "") -> AdapterHandle:
    """Load a file into a ModelPatcher so ComfyUI's memory manager places it with the UNet."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops

    # manual_cast layers cast the stored (usually fp16) weights to whatever dtype the
    # call brings, so fp16/bf16/fp32 UNets and embeds all work with one copy.
    loaded = load_adapter(path, operations=comfy.ops.manual_cast)
    patcher = comfy.model_patcher.ModelPatcher(loaded.model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return AdapterHandle(str(path), loaded.config, patcher, loaded.lora, faceid_version)
