"""Preset loader: the adapter and CLIP vision model for a common case, in one node."""
import comfy.clip_vision
from comfy_api.latest import io

from ..ip_adapter_core.faces.analysis import PROVIDERS, FaceAnalyzer
from ..ip_adapter_core.faces.packs import pack_dirs
from ..ip_adapter_core.files.base_model import model_base, model_family
from ..ip_adapter_core.files.loader import load_adapter_handle
from ..ip_adapter_core.files.presets import FACEID_PRESETS, PRESETS, preset_files
from .types import CATEGORY, FaceAnalysis, IPAModel

PRESET_TOOLTIP = ("Which adapter to find in models/ipadapter, by its weights (file names do not matter): "
                  + "; ".join(f"{p.name} = {p.meaning}" for p in PRESETS.values())
                  + ". LIGHT/STANDARD and PLUS/PLUS FACE/COMPOSITION files have the same tensors: each takes either, "
                    "preferring a name with (LIGHT, PLUS FACE, COMPOSITION) or without (STANDARD, PLUS) 'light' / "
                    "'face' / 'composition', then the first by path; the log says which.")


class IPAUnifiedLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAUnifiedLoader", display_name="IP-Adapter Preset Loader", category=CATEGORY,
            description="Finds and loads the IP-Adapter of a preset for the model's family (SD1.5, SDXL; KOLORS on "
                        "Kolors) and the CLIP vision model it needs; files are recognised by their tensors.",
            inputs=[io.Model.Input("model", tooltip="An SD1.5, SDXL or Kolors model: decides which family's adapter "
                                                    "to load. It is not changed."),
                    io.Combo.Input("preset", options=list(PRESETS), default="STANDARD", tooltip=PRESET_TOOLTIP)],
            outputs=[IPAModel.Output(display_name="ipadapter"), io.ClipVision.Output(display_name="clip_vision")])

    @classmethod
    def execute(cls, model, preset) -> io.NodeOutput:
        files = preset_files(preset, model_family(model), model_base(model))
        return io.NodeOutput(load_adapter_handle(files.adapter), comfy.clip_vision.load(files.clip_vision))


class IPAUnifiedLoaderFaceID(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAUnifiedLoaderFaceID", display_name="IP-Adapter FaceID Preset Loader", category=CATEGORY,
            description="Finds and loads a FaceID adapter for the model's family, the CLIP vision model FaceID Plus "
                        "needs, and a face pack (models/insightface); files are recognised by their tensors.",
            inputs=[io.Model.Input("model", tooltip="An SD1.5 or SDXL model: decides which family's adapter to "
                                                    "load. It is not changed (the LoRA is merged by Apply)."),
                    io.Combo.Input("preset", options=list(FACEID_PRESETS), default="FACEID PLUS V2",
                                   tooltip="; ".join(f"{p.name} = {p.meaning}" for p in FACEID_PRESETS.values())),
                    io.Combo.Input("provider", options=list(PROVIDERS), default="auto",
                                   tooltip="Where onnxruntime runs the face models: auto = CUDA with onnxruntime-gpu, "
                                           "else CPU.")],
            outputs=[IPAModel.Output(display_name="ipadapter"), io.ClipVision.Output(display_name="clip_vision"),
                     FaceAnalysis.Output(display_name="face_analysis")])

    @classmethod
    def execute(cls, model, preset, provider) -> io.NodeOutput:
        files = preset_files(preset, model_family(model), model_base(model))
        handle = load_adapter_handle(files.adapter, FACEID_PRESETS[preset].faceid_version)
        clip_vision = comfy.clip_vision.load(files.clip_vision) if files.clip_vision else None
        packs = pack_dirs()
        pack = "buffalo_l" if "buffalo_l" in packs or not packs else next(iter(packs))
        return io.NodeOutput(handle, clip_vision, FaceAnalyzer(pack, provider))
