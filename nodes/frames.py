"""Animation: which image and how much λ each frame of a latent batch gets."""
from dataclasses import replace

from comfy_api.latest import io

from ..ip_adapter_core.input_bounds import MAX_FRAMES
from ..ip_adapter_core.prompt.frames import (
    TRANSITIONS,
    WEIGHT_CURVES,
    FrameSpec,
    curve_weights,
    join_weights,
    parse_weights,
    prompt_schedule,
)
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


class IPAJoinFrameWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAJoinFrameWeights", display_name="IP-Adapter Join Frame Weights", category=CATEGORY,
            description="Two FLOAT lists of λ multipliers one after the other (weights_1, then weights_2), e.g. a "
                        "fade in and a fade out, as one list for IP-Adapter Frames.",
            inputs=[
                io.Float.Input("weights_1", force_input=True,
                               tooltip="The first frames' multipliers: a FLOAT list (IP-Adapter Frame Weights) or "
                                       "a single number (one frame)."),
                io.Float.Input("weights_2", force_input=True,
                               tooltip="The frames after them: a FLOAT list or a single number."),
            ],
            outputs=[io.Float.Output(display_name="frame_weights"), io.Int.Output(display_name="count")])

    @classmethod
    def execute(cls, weights_1, weights_2) -> io.NodeOutput:
        joined = join_weights(weights_1, weights_2)
        return io.NodeOutput(joined, len(joined))


class IPAPromptSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAPromptSchedule", display_name="IP-Adapter Prompt Schedule", category=CATEGORY,
            description='A text prompt schedule (lines "frame": "prompt", for FizzNodes\' Batch Prompt Schedule '
                        "and the like) that starts prompt i where image i of the batch starts.",
            inputs=[
                io.String.Input("prompt", default="", multiline=True,
                                tooltip="One prompt per line, one line per image in batch order (blank lines are "
                                        "skipped); the last one repeats for the remaining images, extra lines are "
                                        "not used."),
                io.Int.Input("frames", default=1, min=0, max=MAX_FRAMES,
                             tooltip="Frames per image: image i's prompt (i from 0) starts at frame i × frames + "
                                     "add_starting_frames."),
                io.Int.Input("add_starting_frames", default=0, min=0, max=MAX_FRAMES,
                             tooltip="Frames before the first image; when > 0 the first prompt also starts at "
                                     "frame 0."),
                io.Int.Input("add_ending_frames", default=0, min=0, max=MAX_FRAMES,
                             tooltip="Frames after the last image; when > 0 the last prompt is keyed again "
                                     "where they start."),
                io.Image.Input("image", optional=True,
                               tooltip="The reference images: only their number is used (one keyframe per "
                                       "image). Unconnected: no images, an empty schedule."),
            ],
            outputs=[io.String.Output(display_name="prompt_schedule")])

    @classmethod
    def execute(cls, prompt, frames, add_starting_frames, add_ending_frames, image=None) -> io.NodeOutput:
        count = 0 if image is None else int(image.shape[0])
        return io.NodeOutput(prompt_schedule(prompt, frames, count, add_starting_frames, add_ending_frames))
