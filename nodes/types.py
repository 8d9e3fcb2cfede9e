"""Socket types of this extension, and inputs several nodes share. Distinct type names,
so they cannot be wired to a look-alike type from another IP-Adapter extension."""
from comfy_api.latest import io

from ..ip_adapter_core.prompt.blocks import WEIGHT_TYPES

IPAModel = io.Custom("IPA_MODEL")
IPAEmbeds = io.Custom("IPA_EMBEDS")
FaceAnalysis = io.Custom("IPA_FACE_ANALYSIS")  # a face pack's detector and recogniser (faces/analysis.py)
Faces = io.Custom("IPA_FACES")                 # the faces found in pictures (faces/face_set.py)
CATEGORY = "ipadapter"


def weight_inputs() -> list:
    """λ and the sampling range, as IPAWeight and the all-in-one node take them."""
    return [io.Float.Input("weight", default=1.0, min=-2.0, max=5.0, step=0.05,
                           tooltip="λ: 0 = no image prompt, 1 = as trained; negative pushes away.")]


def range_inputs() -> list:
    return [io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.01,
                           tooltip="Fraction of sampling at which the image prompt starts."),
            io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.01,
                           tooltip="Fraction of sampling at which it stops.")]


def weight_type_inputs() -> list:
    """Optional: API-format prompts written before it existed stay valid (linear)."""
    return [io.Combo.Input("weight_type", optional=True, options=list(WEIGHT_TYPES), default="linear",
                           tooltip="λ per block, with ComfyUI_IPAdapter_plus's names: curves over the blocks "
                                   "(ease ...), weak/strong kinds of block, or the style / composition blocks "
                                   "(precise: the image also goes to the negative elsewhere). The node's help page "
                                   "lists each. Flux has no such blocks: linear only.")]
