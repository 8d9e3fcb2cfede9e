"""Apply nodes: add an image prompt to a model's cross-attention (on a clone)."""
from comfy_api.latest import io

from ..ip_adapter_core.apply.masks import check_mask
from ..ip_adapter_core.apply.image_prompt import apply_image_prompt
from ..ip_adapter_core.prompt.blocks import SCALING_MODES, V_ONLY
from ..ip_adapter_core.prompt.vision import check_encoder, encode, image_prompt
from .types import CATEGORY, IPAEmbeds, IPAModel, range_inputs, weight_inputs, weight_type_inputs


class IPAApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAApply", display_name="IP-Adapter Apply", category=CATEGORY,
            description="Returns a copy of the model whose cross-attention also attends to the image prompt. "
                        "Chain several to combine adapters or image prompts.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5, SDXL, Kolors, Flux.1 or SD3.5 Large model; it is not changed."),
                IPAModel.Input("ipadapter", tooltip="The adapter that projected the embeds."),
                IPAEmbeds.Input("embeds", tooltip="From IP-Adapter Project or IP-Adapter Weight."),
                io.Mask.Input("attn_mask", optional=True,
                              tooltip="Where in the picture the image prompt acts (white = fully)."),
            ],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, ipadapter, embeds, attn_mask=None) -> io.NodeOutput:
        return io.NodeOutput(apply_image_prompt(model, ipadapter, embeds, check_mask(attn_mask)))


class IPAApplySimple(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAApplySimple", display_name="IP-Adapter (all-in-one)", category=CATEGORY,
            description="Encode, project, weight and apply in one node.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5, SDXL, Kolors, Flux.1 or SD3.5 Large model; it is not changed."),
                IPAModel.Input("ipadapter", tooltip="From IP-Adapter Loader."),
                io.ClipVision.Input("clip_vision", tooltip="The encoder the adapter needs."),
                io.Image.Input("image", tooltip="Reference image(s); several are concatenated."),
                *weight_inputs(),
                *range_inputs(),
                *weight_type_inputs(),  # after the older inputs: saved workflows list widget values by position
                io.Combo.Input("embeds_scaling", optional=True, options=list(SCALING_MODES), default=V_ONLY,
                               tooltip="Where λ acts (see IP-Adapter Weight); V only is the paper's."),
            ],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, ipadapter, clip_vision, image, weight, start_at, end_at, weight_type="linear",
                embeds_scaling=V_ONLY) -> io.NodeOutput:
        check_encoder(ipadapter.config, clip_vision)
        prompt = image_prompt(ipadapter, encode(clip_vision, image, "center"))
        prompt = prompt.weighted(weight, "all", "", start_at, end_at, weight_type, embeds_scaling)
        return io.NodeOutput(apply_image_prompt(model, ipadapter, prompt))
