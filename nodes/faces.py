"""FaceID nodes: load a face pack, find the faces, turn them into an image prompt, or all of it in one node."""
from comfy_api.latest import io

from ..ip_adapter_core.apply.image_prompt import apply_image_prompt
from ..ip_adapter_core.faces.analysis import CHOICES, PROVIDERS
from ..ip_adapter_core.faces.insightface_backend import BACKENDS, ONNXRUNTIME, face_analyzer
from ..ip_adapter_core.faces.detect import SCORE_THRESHOLD
from ..ip_adapter_core.faces.draw import annotate
from ..ip_adapter_core.faces.packs import pack_dirs
from ..ip_adapter_core.prompt.blocks import SCALING_MODES, V_ONLY
from ..ip_adapter_core.prompt.faces import FACE_CROP_SIZE, PLUS_VERSIONS, face_prompt
from ..ip_adapter_core.prompt.tokens import PROJECT_MODES
from .types import CATEGORY, FaceAnalysis, Faces, IPAEmbeds, IPAModel, range_inputs, weight_inputs, weight_type_inputs

KNOWN_PACKS = ("buffalo_l", "antelopev2")  # listed even when absent: the loader then says where to put them

VERSION_TOOLTIP = ("FaceID Plus only: plus and plusv2 files hold the same tensors. v2 adds the face-ID tokens back "
                   "(weighted by weight_faceidv2); auto: v2 when the file name says plusv2.")
V2_TOOLTIP = ("FaceID Plus v2: weight of the face-ID tokens added back to the CLIP-refined ones (the reference's "
              "s_scale).")
LORA_TOOLTIP = ("Strength of the LoRA the FaceID file carries (1 = as trained; 0 = off). It is merged into the model "
                "once; a model that already has it (the separate _lora.safetensors through a LoRA loader) is not given "
                "it again.")


def face_inputs() -> list:
    return [io.Combo.Input("choose", options=list(CHOICES), default="largest",
                           tooltip="Which face of each picture: the largest, the most confident, the one at index "
                                   "(best score first), or all (several faces: the portrait adapters' way)."),
            io.Int.Input("index", default=0, min=0, max=63, tooltip="With choose = by index."),
            io.Float.Input("threshold", default=SCORE_THRESHOLD, min=0.05, max=0.99, step=0.05, optional=True,
                           tooltip="Detector score a face needs (0.5 as insightface); lower finds more, and more "
                                   "false faces.")]


class IPAFaceAnalysisLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        packs = list(dict.fromkeys([*pack_dirs(), *KNOWN_PACKS]))
        return io.Schema(
            node_id="IPAFaceAnalysisLoader", display_name="IP-Adapter Face Analysis Loader", category=CATEGORY,
            description="The face detector and recogniser of an insightface pack in models/insightface/models/"
                        "<pack>/, run with onnxruntime (the insightface package is not needed).",
            inputs=[io.Combo.Input("pack", options=packs, default="buffalo_l",
                                   tooltip="buffalo_l: the pack the h94 FaceID files were trained with. Packs are "
                                           "found in models/insightface/models/<pack>/."),
                    io.Combo.Input("provider", options=list(PROVIDERS), default="auto",
                                   tooltip="Where onnxruntime runs: auto = CUDA with onnxruntime-gpu, else CPU."),
                    io.Combo.Input("backend", options=list(BACKENDS), default=ONNXRUNTIME, optional=True,
                                   tooltip="onnxruntime: this extension's own face analysis (nothing else to "
                                           "install). insightface: the insightface package's, if it is installed; "
                                           "the same files, the same results.")],
            outputs=[FaceAnalysis.Output(display_name="face_analysis")])

    @classmethod
    def execute(cls, pack, provider, backend=ONNXRUNTIME) -> io.NodeOutput:
        return io.NodeOutput(face_analyzer(pack, provider, backend or ONNXRUNTIME))


class IPAFaceAnalysis(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAFaceAnalysis", display_name="IP-Adapter Face Analysis", category=CATEGORY,
            description="Finds the face in each picture, shows it, and gives what FaceID reads of it.",
            inputs=[FaceAnalysis.Input("face_analysis", tooltip="From IP-Adapter Face Analysis Loader."),
                    io.Image.Input("image", tooltip="Pictures of the person; one face is taken from each."),
                    *face_inputs()],
            outputs=[Faces.Output(display_name="faces"),
                     io.Image.Output(display_name="face_crops"),
                     io.Image.Output(display_name="found")])

    @classmethod
    def execute(cls, face_analysis, image, choose, index, threshold=SCORE_THRESHOLD) -> io.NodeOutput:
        faces, drawn, chosen = face_analysis.analyse(image, choose, index, threshold)
        return io.NodeOutput(faces, faces.crops(FACE_CROP_SIZE), annotate(image, drawn, chosen))


def project_inputs() -> list:
    return [io.Combo.Input("faceid_version", options=list(PLUS_VERSIONS), default="auto", optional=True,
                           tooltip=VERSION_TOOLTIP),
            io.Float.Input("weight_faceidv2", default=1.0, min=-1.0, max=5.0, step=0.05, optional=True,
                           tooltip=V2_TOOLTIP),
            io.Float.Input("lora_strength", default=1.0, min=0.0, max=2.0, step=0.05, optional=True,
                           tooltip=LORA_TOOLTIP)]


def kolors_input():
    """Last among a node's inputs, so workflows saved before it keep their widget values in place."""
    return io.Float.Input("weight_kolors", default=1.0, min=-1.0, max=5.0, step=0.05, optional=True,
                          tooltip="Kolors FaceID Plus only: multiplies the Kolors UNet's text projection of the face "
                                  "tokens (the popular extension's weight_kolors). 1 = as Kolors' pipeline.")


class IPAProjectFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAProjectFace", display_name="IP-Adapter Project Face", category=CATEGORY,
            description="Turns faces into a FaceID adapter's image tokens; weight and apply them like any image "
                        "prompt.",
            inputs=[IPAModel.Input("ipadapter", tooltip="A FaceID file (faceid, plus, plusv2, portrait)."),
                    Faces.Input("faces", tooltip="From IP-Adapter Face Analysis."),
                    io.Combo.Input("combine", options=list(PROJECT_MODES), default="concat",
                                   tooltip="Several faces: concat keeps each face's tokens (the portrait adapters "
                                           "read 5 faces this way); the others combine them into one."),
                    io.ClipVision.Input("clip_vision", optional=True,
                                        tooltip="FaceID Plus only: the ViT-H/14 model that encodes the face crop."),
                    *project_inputs(),
                    io.String.Input("image_weights", default="", optional=True,
                                    tooltip="One multiplier per face, e.g. '1.0, 0.5'. Empty: every face 1."),
                    kolors_input(),
                    io.Image.Input("negative_image", optional=True,
                                   tooltip="FaceID Plus only: a picture whose CLIP features replace the zero image's "
                                           "in the negative (the popular extension's image_negative, e.g. IP-Adapter "
                                           "Noise Negative's image). Unconnected: as the reference.")],
            outputs=[IPAEmbeds.Output(display_name="embeds")])

    @classmethod
    def execute(cls, ipadapter, faces, combine, clip_vision=None, faceid_version="auto", weight_faceidv2=1.0,
                lora_strength=1.0, image_weights="", weight_kolors=1.0, negative_image=None) -> io.NodeOutput:
        return io.NodeOutput(face_prompt(ipadapter, faces, clip_vision, combine, faceid_version, weight_faceidv2,
                                         lora_strength, image_weights or "", text_proj_scale=weight_kolors,
                                         negative_image=negative_image))


class IPAFaceID(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAFaceID", display_name="IP-Adapter FaceID (all-in-one)", category=CATEGORY,
            description="Face analysis, projection, weight and apply in one node.",
            inputs=[io.Model.Input("model", tooltip="An SD1.5, SDXL or Kolors model; it is not changed."),
                    IPAModel.Input("ipadapter", tooltip="A FaceID file."),
                    FaceAnalysis.Input("face_analysis", tooltip="From IP-Adapter Face Analysis Loader."),
                    io.Image.Input("image", tooltip="Pictures of the person (one face each; concatenated)."),
                    *weight_inputs(),
                    *range_inputs(),
                    io.ClipVision.Input("clip_vision", optional=True, tooltip="FaceID Plus only: ViT-H/14."),
                    *project_inputs(),
                    *weight_type_inputs(),
                    io.Combo.Input("embeds_scaling", optional=True, options=list(SCALING_MODES), default=V_ONLY,
                                   tooltip="Where λ acts (see IP-Adapter Weight); V only is the paper's."),
                    io.Combo.Input("choose", options=list(CHOICES), default="largest", optional=True,
                                   tooltip="Which face of each picture."),
                    kolors_input()],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, ipadapter, face_analysis, image, weight, start_at, end_at, clip_vision=None,
                faceid_version="auto", weight_faceidv2=1.0, lora_strength=1.0, weight_type="linear",
                embeds_scaling=V_ONLY, choose="largest", weight_kolors=1.0) -> io.NodeOutput:
        faces, _, _ = face_analysis.analyse(image, choose or "largest", 0)
        prompt = face_prompt(ipadapter, faces, clip_vision, "concat", faceid_version, weight_faceidv2, lora_strength,
                             text_proj_scale=weight_kolors)
        prompt = prompt.weighted(weight, "all", "", start_at, end_at, weight_type, embeds_scaling)
        return io.NodeOutput(apply_image_prompt(model, ipadapter, prompt))
