"""Loader nodes: the adapter file, and the CLIP vision encoder it needs."""
import folder_paths
from comfy_api.latest import io

from ..ip_adapter_core.files.loader import load_adapter_handle
from ..ip_adapter_core.files.model_folders import FOLDER
from ..ip_adapter_core.prompt.vision import load_encoder_for
from .types import CATEGORY, IPAModel


class IPALoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPALoader", display_name="IP-Adapter Loader", category=CATEGORY,
            description="Loads an IP-Adapter file; its variant is read from the weights, not the name.",
            inputs=[io.Combo.Input("ipadapter_file", options=folder_paths.get_filename_list(FOLDER),
                                   tooltip="A file in models/ipadapter (.safetensors or .bin).")],
            outputs=[IPAModel.Output(display_name="ipadapter")])

    @classmethod
    def execute(cls, ipadapter_file) -> io.NodeOutput:
        return io.NodeOutput(load_adapter_handle(folder_paths.get_full_path_or_raise(FOLDER, ipadapter_file)))


class IPACLIPVisionLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPACLIPVisionLoader", display_name="IP-Adapter CLIP Vision Loader", category=CATEGORY,
            description="Loads the CLIP vision model the adapter was trained with, found in "
                        "models/clip_vision by its tensor shapes.",
            inputs=[IPAModel.Input("ipadapter", tooltip="The adapter whose encoder to load.")],
            outputs=[io.ClipVision.Output()])

    @classmethod
    def execute(cls, ipadapter) -> io.NodeOutput:
        return io.NodeOutput(load_encoder_for(ipadapter.config))
