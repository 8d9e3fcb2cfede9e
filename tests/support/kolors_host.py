"""Test stand-ins for MinusZone's Kolors nodes (ComfyUI-Kolors-MZ), which ComfyUI does not have and the test
servers cannot install: the Kolors workflow needs a Kolors UNet and ChatGLM3 conditioning to run, and the editor
needs the node types to open it. Loaded into the test servers as a one-file custom node (``write_node``).

- ``MZ_KolorsUNETLoaderV2`` (``unet_name`` from models/unet): as MinusZone's, ComfyUI's SDXL model with
  ``adm_in_channels`` 5632 and a UNet subclass that owns ``encoder_hid_proj`` (4096 -> 2048) and applies it to the
  context; it reads host_models.kolors_unet()'s random file (ComfyUI's key layout; theirs converts diffusers').
- ``MZ_ChatGLM3Loader`` / ``MZ_ChatGLM3_V2``: their sockets and widgets; the conditioning is ChatGLM3-shaped
  ([1, 256, 4096] and a 4096 pooled vector, which SDXL's encode_adm joins with the size ids into 5632) and
  random, seeded by the text.

Nothing here is MinusZone's code; only the node names, sockets and widgets are theirs (the popular extension's
Kolors examples use them).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import torch

MZ_CATEGORY = "MinusZone - Kolors (test stand-in)"


def _kolors_model(path):
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils

    from support.host_models import kolors_unet_config

    class KolorsShapedUNet(openaimodel.UNetModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.encoder_hid_proj = torch.nn.Linear(4096, 2048)

        def forward(self, x, timesteps=None, context=None, *args, **kwargs):
            return super().forward(x, timesteps, self.encoder_hid_proj(context), *args, **kwargs)

    config = comfy.supported_models.SDXL(kolors_unet_config())
    config.set_inference_dtype(torch.float32, None)
    import comfy.model_base

    model = comfy.model_base.SDXL(config, device="cpu")
    model.diffusion_model = KolorsShapedUNet(**config.unet_config, device="cpu")
    sd = comfy.utils.load_torch_file(path)
    model.diffusion_model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return comfy.model_patcher.ModelPatcher(model.eval(), load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


class KolorsUNETLoader:
    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {"required": {"unet_name": (folder_paths.get_filename_list("unet"),)}}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load_unet"
    CATEGORY = MZ_CATEGORY

    def load_unet(self, unet_name):
        import folder_paths

        return (_kolors_model(folder_paths.get_full_path_or_raise("unet", unet_name)),)


class ChatGLM3Loader:
    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {"required": {"chatglm3_checkpoint": (folder_paths.get_filename_list("LLM"),)}}

    RETURN_TYPES = ("CHATGLM3MODEL",)
    RETURN_NAMES = ("chatglm3_model",)
    FUNCTION = "load_chatglm3"
    CATEGORY = MZ_CATEGORY

    def load_chatglm3(self, chatglm3_checkpoint):
        return ({"stand-in": chatglm3_checkpoint},)


class ChatGLM3TextEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"chatglm3_model": ("CHATGLM3MODEL",),
                             "text": ("STRING", {"multiline": True, "dynamicPrompts": True})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = MZ_CATEGORY

    def encode(self, chatglm3_model, text):
        gen = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        embeds = torch.randn(1, 256, 4096, generator=gen)
        return ([[embeds, {"pooled_output": torch.randn(1, 4096, generator=gen)}]],)


NODE_CLASS_MAPPINGS = {"MZ_KolorsUNETLoaderV2": KolorsUNETLoader, "MZ_ChatGLM3Loader": ChatGLM3Loader,
                       "MZ_ChatGLM3_V2": ChatGLM3TextEncode}


def register_folders() -> None:
    """models/LLM, where MinusZone's ChatGLM3 loader looks (added as their extension adds it)."""
    import os

    import folder_paths

    folder_paths.add_model_folder_path("LLM", os.path.join(folder_paths.models_dir, "LLM"))


def write_node(custom_nodes: Path) -> Path:
    """A one-file custom node that registers the stand-ins in a test server."""
    path = Path(custom_nodes) / "ipadapter_test_kolors_mz.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by tests/support/kolors_host.py: test stand-ins for MinusZone's Kolors nodes.\n"
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from support.kolors_host import NODE_CLASS_MAPPINGS, register_folders\n"
        "sys.path.pop(0)\n"
        "register_folders()\n")
    return path
