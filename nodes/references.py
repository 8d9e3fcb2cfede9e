"""Reference images before encoding: the encoder's view of a reference, and noisy negatives."""
from comfy_api.latest import io

from ..ip_adapter_core.prompt.references import (
    CROP_POSITIONS,
    INTERPOLATIONS,
    NOISE_KINDS,
    noise_negative,
    prepare_reference,
)
from .types import CATEGORY

CROP_TOOLTIP = ("center / top / bottom / left / right: keep the square of side min(width, height) at that "
                "place, then resize; squash: resize the whole image to a square; pad: letterbox to a square "
                "with the encoder's mean colour (the border carries no content).")
INTERPOLATION_TOOLTIP = ("Resize filter. nearest, bilinear, bicubic (antialiased, as PIL), area (average "
                         "pooling), lanczos (PIL).")
SHARPENING_TOOLTIP = ("0 = none; a blends in the 3×3 sharpening kernel [[0,-1,0],[-1,5,-1],[0,-1,0]]: "
                      "x + a·(4x - the 4 neighbours).")


class IPAPrepareReference(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAPrepareReference", display_name="IP-Adapter Prepare Reference", category=CATEGORY,
            description="The 224×224 image the encoder sees: crop, resize and sharpen a reference, to preview "
                        "it or to encode it as it is.",
            inputs=[
                io.Image.Input("image", tooltip="Reference image(s), any size."),
                io.Combo.Input("interpolation", options=list(INTERPOLATIONS), default="bicubic",
                               tooltip=INTERPOLATION_TOOLTIP + " bicubic is what ComfyUI's encoder uses."),
                io.Combo.Input("crop_position", options=list(CROP_POSITIONS), default="center",
                               tooltip=CROP_TOOLTIP),
                io.Float.Input("sharpening", default=0.0, min=0.0, max=1.0, step=0.05, tooltip=SHARPENING_TOOLTIP),
            ],
            outputs=[io.Image.Output(display_name="image")])

    @classmethod
    def execute(cls, image, interpolation, crop_position, sharpening) -> io.NodeOutput:
        return io.NodeOutput(prepare_reference(image, 224, interpolation, crop_position, sharpening))


class IPANoiseNegative(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPANoiseNegative", display_name="IP-Adapter Noise Negative", category=CATEGORY,
            description="A noisy 224×224 image made from the reference (or from black), to encode as the "
                        "negative_features of IP-Adapter Project.",
            inputs=[
                io.Combo.Input("type", options=list(NOISE_KINDS), default="fade",
                               tooltip="fade: blend with uniform noise; dissolve: replace a fraction of the "
                                       "pixels by noise; gaussian: add normal noise; shuffle: exchange a "
                                       "fraction of the pixels among themselves."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="0 = the image itself, 1 = all noise (shuffle: every pixel moved; "
                                       "gaussian: noise of standard deviation 1)."),
                io.Int.Input("blur", default=0, min=0, max=32, step=1,
                             tooltip="Gaussian blur radius in pixels after the noise (0 = none)."),
                io.Image.Input("image", optional=True,
                               tooltip="The reference (centre-cropped, resized to 224×224). None: a black image."),
                # not named "seed": the editor would add a randomize-after-each-run control to it
                io.Int.Input("seed_offset", default=0, min=0, max=2 ** 31 - 1, optional=True,
                             tooltip="Added to the seed taken from the image's pixels: the same image and offset "
                                     "always give the same noise; change it for another draw."),
            ],
            outputs=[io.Image.Output(display_name="image")])

    @classmethod
    def execute(cls, type, strength, blur, image=None, seed_offset=0) -> io.NodeOutput:
        return io.NodeOutput(noise_negative(image, type, strength, blur, seed_offset))
