"""The λ node: how strongly, where in the UNet and when during sampling an image prompt acts."""
from comfy_api.latest import io

from ..ip_adapter_core.prompt.blocks import BLOCK_CHOICES, SCALING_MODES, V_ONLY
from ..ip_adapter_core.prompt.schedules import SCHEDULE_CURVES, make_schedule
from .types import CATEGORY, IPAEmbeds, range_inputs, weight_inputs, weight_type_inputs


class IPAWeight(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        # New inputs go at the end: a saved workflow lists widget values by position.
        return io.Schema(
            node_id="IPAWeight", display_name="IP-Adapter Weight (λ)", category=CATEGORY,
            description="How strongly, where in the UNet, and when during sampling the image prompt acts.",
            inputs=[
                IPAEmbeds.Input("embeds", tooltip="From IP-Adapter Project."),
                *weight_inputs(),
                io.Combo.Input("blocks", options=list(BLOCK_CHOICES), default="all",
                               tooltip="Which cross-attention blocks get the image: style / composition are "
                                       "InstantStyle's SDXL blocks (structural analogues on SD1.5). Multiplies "
                                       "with weight_type. Flux: all or custom."),
                io.String.Input("custom_blocks", default="", multiline=False,
                                tooltip="With blocks = custom: e.g. 'input 8 = 1, output 1 = 0.5, output 1:3 = 0' "
                                        "(block, number, optional transformer index); others get 0. Flux: "
                                        "'double 0-9 = 1, double 10-18 = 0.5'."),
                *range_inputs(),
                *weight_type_inputs(),
                io.Combo.Input("embeds_scaling", optional=True, options=list(SCALING_MODES), default=V_ONLY,
                               tooltip="Where λ acts: V only = on the image attention's output (the paper); "
                                       "K+V = on K' and V' inside it; the C-penalty modes scale λ by the layer "
                                       "width / 1280 first; K+mean(V) scales only the mean of V'."),
                io.Float.Input("style_boost", optional=True, default=1.0, min=-5.0, max=5.0, step=0.05,
                               tooltip="style transfer precise: λ at the composition blocks, where the image "
                                       "goes to the negative, as a multiple of weight."),
                io.Float.Input("composition_boost", optional=True, default=1.0, min=-5.0, max=5.0, step=0.05,
                               tooltip="composition precise: λ at the other blocks (image to the negative), as a "
                                       "multiple of weight; style and composition: λ at the composition blocks."),
            ],
            outputs=[IPAEmbeds.Output(display_name="embeds")])

    @classmethod
    def execute(cls, embeds, weight, blocks, custom_blocks, start_at, end_at, weight_type="linear",
                embeds_scaling=V_ONLY, style_boost=1.0, composition_boost=1.0) -> io.NodeOutput:
        return io.NodeOutput(embeds.weighted(weight, blocks, custom_blocks, start_at, end_at, weight_type,
                                             embeds_scaling, style_boost, composition_boost))


class IPASchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPASchedule", display_name="IP-Adapter λ Schedule", category=CATEGORY,
            description="Makes λ change over the sampling steps in the start_at..end_at range: from the weight "
                        "set by IP-Adapter Weight to weight_end along a curve, or through keyframes.",
            inputs=[
                IPAEmbeds.Input("embeds", tooltip="From IP-Adapter Weight (or Project: λ starts at 1)."),
                io.Combo.Input("curve", options=list(SCHEDULE_CURVES), default="linear",
                               tooltip="linear / ease in (slow start) / ease out (slow end) / ease in-out: from "
                                       "weight to weight_end; keyframes: λ through the points below; constant: "
                                       "no schedule."),
                io.Float.Input("weight_end", default=0.0, min=-2.0, max=5.0, step=0.05,
                               tooltip="λ at the last step of the range (curves)."),
                io.String.Input("keyframes", default="0.0:1.0, 0.5:0.6, 1.0:0.2", multiline=False,
                                tooltip="With curve = keyframes: position in the range (0 = first step, 1 = last) "
                                        ": λ, comma separated; λ is linear in between and flat outside."),
            ],
            outputs=[IPAEmbeds.Output(display_name="embeds")])

    @classmethod
    def execute(cls, embeds, curve, weight_end, keyframes) -> io.NodeOutput:
        return io.NodeOutput(embeds.scheduled(make_schedule(curve, weight_end, keyframes)))
