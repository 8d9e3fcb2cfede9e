"""Animation: which image and how much λ each frame of a latent batch gets."""
from dataclasses import replace

from comfy_api.latest import io

from ..ip_adapter_core.input_bounds import MAX_FRAMES
from ..ip_adapter_core.prompt.frames import TRANSITIONS, WEIGHT_CURVES, FrameSpec, curve_weights, parse_weights
from .types import CATEGORY, IPAEmbeds


class IPAFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAFrames", display_name="IP-Adapter Frames", category=CATEGORY,
            description="Animation: gives each frame of the latent batch its reference image (from embeds "
                        "projected 'one per frame') and a λ multiplier. Without this node frame i gets image i.",
            inputs=[
                IPAEmbeds.Input("embeds", tooltip="From IP-Adapter Project with combine 'one per frame' (one image "
                                                  "per frame, or fewer images spread over the frames), or any "
                                                  "embeds: one image for every frame, with per-frame λ."),
                io.Int.Input("frames_per_image", default=1, min=0, max=MAX_FRAMES,
                             tooltip="1: frame i gets image i and the last image holds to the end; k: each image "
                                     "holds for k frames; 0: the images are spread evenly over all frames."),
                io.Int.Input("transition_frames", default=0, min=0, max=MAX_FRAMES,
                             tooltip="Frames at the end of each image's stretch that cross-fade into the next "
                                     "image (each image is still shown alone on at least one frame)."),
                io.Combo.Input("transition", options=list(TRANSITIONS), default="linear",
                               tooltip="The shape of a cross-fade: the next image's share over the transition frames."),
                io.Float.Input("frame_weights", optional=True, force_input=True,
                               tooltip="λ multipliers, one per frame, as a FLOAT list (IP-Adapter Frame Weights, "
                                       "or another node's list). A shorter list repeats its last value. "
                                       "Unconnected: 1 on every frame."),
            ],
            outputs=[IPAEmbeds.Output(display_name="embeds")])

    @classmethod
    def execute(cls, embeds, frames_per_image, transition_frames, transition, frame_weights=None) -> io.NodeOutput:
        spec = FrameSpec(frames_per_image, transition_frames, transition, parse_weights(frame_weights))
        return io.NodeOutput(replace(embeds, frames=spec))


class IPAFrameWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAFrameWeights", display_name="IP-Adapter Frame Weights", category=CATEGORY,
            description="A λ multiplier per frame, as a FLOAT list for IP-Adapter Frames.",
            inputs=[
                io.Int.Input("frames", default=16, min=1, max=MAX_FRAMES,
                             tooltip="How many frames: the latent batch size."),
                io.Combo.Input("curve", options=list(WEIGHT_CURVES), default="linear",
                               tooltip="linear and the eases go from start_weight on the first frame to end_weight "
                                       "on the last (ease in starts slowly, ease out ends slowly); alternate: "
                                       "start_weight on even frames, end_weight on odd; random: uniform between "
                                       "the two, from the seed."),
                io.Float.Input("start_weight", default=1.0, min=-2.0, max=5.0, step=0.05,
                               tooltip="The multiplier on the first frame (even frames for alternate)."),
                io.Float.Input("end_weight", default=0.0, min=-2.0, max=5.0, step=0.05,
                               tooltip="The multiplier on the last frame (odd frames for alternate)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="For random: the same seed gives the same weights on every machine."),
            ],
            outputs=[io.Float.Output(display_name="frame_weights")])

    @classmethod
    def execute(cls, frames, curve, start_weight, end_weight, seed) -> io.NodeOutput:
        return io.NodeOutput(curve_weights(curve, frames, start_weight, end_weight, seed))
