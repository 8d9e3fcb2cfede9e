"""Preset loader: the adapter and CLIP vision model for a common case, in one node."""
import comfy.clip_vision
from comfy_api.latest import io

from ..ip_adapter_core.files.config import model_family
from ..ip_adapter_core.files.loader import load_adapter_handle
from ..ip_adapter_core.files.presets import PRESETS, preset_files
from .types import CATEGORY, IPAModel

PRESET_TOOLTIP = ("Which adapter to find in models/ipadapter, by its weights (file names do not matter): "
                  + "; ".join(f"{p.name} = {p.meaning}" for p in PRESETS.values())
                  + ". LIGHT/STANDARD and PLUS/PLUS FACE files have the same tensors: each takes either, "
                    "preferring a name with (LIGHT, PLUS FACE) or without (STANDARD, PLUS) 'light' / 'face', "
                    "then the first by path; the log says which.")


class IPAUnifiedLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAUnifiedLoader", display_name="IP-Adapter Preset Loader", category=CATEGORY,
            description="Finds and loads the IP-Adapter of a preset for the model's family (SD1.5 or SDXL) "
                        "and the CLIP vision model it needs; files are recognised by their tensors.",
            inputs=[io.Model.Input("model", tooltip="An SD1.5 or SDXL model: decides which family's adapter "
                                                    "to load. It is not changed."),
                    io.Combo.Input("preset", options=list(PRESETS), default="STANDARD", tooltip=PRESET_TOOLTIP)],
            outputs=[IPAModel.Output(display_name="ipadapter"), io.ClipVision.Output(display_name="clip_vision")])

    @classmethod
    def execute(cls, model, preset) -> io.NodeOutput:
        files = preset_files(preset, model_family(model))
        return io.NodeOutput(load_adapter_handle(files.adapter), comfy.clip_vision.load(files.clip_vision))
