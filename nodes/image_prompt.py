"""Encode -> project: turning images into an IP-Adapter image prompt."""
from comfy_api.latest import io

from ..ip_adapter_core.prompt.references import CROP_POSITIONS
from ..ip_adapter_core.prompt.tokens import PROJECT_MODES
from ..ip_adapter_core.prompt.vision import ENCODE_INTERPOLATIONS, encode, image_prompt
from .references import INTERPOLATION_TOOLTIP, SHARPENING_TOOLTIP
from .types import CATEGORY, IPAEmbeds, IPAModel


class IPAEncodeImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAEncodeImage", display_name="IP-Adapter Encode Image", category=CATEGORY,
            description="CLIP vision features of one or more reference images.",
            inputs=[
                io.ClipVision.Input("clip_vision",
                                    tooltip="The encoder the adapter needs (ViT-H/14 or ViT-bigG/14; for Flux ViT-L/14 "
                                            "(XLabs) or SigLIP (InstantX, with its pooling head))."),
                io.Image.Input("image", tooltip="Reference image(s); a batch gives several image prompts."),
                io.Combo.Input("crop", options=list(CROP_POSITIONS), default="center",
                               tooltip="center: resize the short side and crop the middle (as the reference); "
                                       "squash: resize the whole image to a square; pad: letterbox to a square; "
                                       "top / bottom / left / right: keep the square of side min(width, height) "
                                       "at that place."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Only the white part of the image is seen; the rest is blanked."),
                io.Combo.Input("interpolation", options=list(ENCODE_INTERPOLATIONS), default="default",
                               optional=True,
                               tooltip="default: ComfyUI's encoder resizes (bicubic). Any other filter, a crop "
                                       "of top / bottom / left / right, or sharpening: the image is first made "
                                       "exactly as IP-Adapter Prepare Reference shows it. " + INTERPOLATION_TOOLTIP),
                io.Float.Input("sharpening", default=0.0, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip=SHARPENING_TOOLTIP),
                io.Int.Input("encode_batch_size", default=0, min=0, max=4096, step=1, optional=True,
                             tooltip="Images per encoder call; 0: all at once. A smaller number (e.g. 16) "
                                     "encodes a long batch such as video frames without holding every "
                                     "image's activations in memory at once, shows progress and can be "
                                     "cancelled between calls. Same features either way."),
            ],
            outputs=[io.ClipVisionOutput.Output(display_name="image_features")])

    @classmethod
    def execute(cls, clip_vision, image, crop, mask=None, interpolation="default", sharpening=0.0,
                encode_batch_size=0) -> io.NodeOutput:
        return io.NodeOutput(encode(clip_vision, image, crop, mask, interpolation or "default", sharpening or 0.0,
                                    batch_size=encode_batch_size or 0))


class IPAProject(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAProject", display_name="IP-Adapter Project", category=CATEGORY,
            description="Turns CLIP features into the adapter's image tokens (positive and negative).",
            inputs=[
                IPAModel.Input("ipadapter", tooltip="The adapter whose projection network to use."),
                io.ClipVisionOutput.Input("image_features",
                                          tooltip="From IP-Adapter Encode Image or ComfyUI's CLIP Vision Encode."),
                io.Combo.Input("combine", options=list(PROJECT_MODES), default="concat",
                               tooltip="Several images: concat keeps each image's tokens; the others project one "
                                       "combined feature: add (sum), subtract (first minus the mean of the rest), "
                                       "average, norm average (each entry divided by its norm over the images), "
                                       "max, min (elementwise). The negative is averaged in those modes. "
                                       "one per frame: image i is the prompt of frame i of the latent batch "
                                       "(animation; see IP-Adapter Frames), each with its own negative."),
                io.ClipVisionOutput.Input("negative_features", optional=True,
                                          tooltip="Features of a negative image; without it the reference rule "
                                                  "is used (zero features, or an all-zero image)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Only needed for plus/full-face adapters when image_features come "
                                            "from ComfyUI's CLIP Vision Encode: makes the zero-image negative."),
                io.String.Input("image_weights", default="", optional=True,
                                tooltip="One multiplier per image, in batch order, applied to its features before "
                                        "combining, e.g. '1.0, 0.5, 0.8'. Empty: every image 1."),
            ],
            outputs=[IPAEmbeds.Output(display_name="embeds")])

    @classmethod
    def execute(cls, ipadapter, image_features, combine, negative_features=None, clip_vision=None,
                image_weights="") -> io.NodeOutput:
        return io.NodeOutput(image_prompt(ipadapter, image_features, combine, negative_features, clip_vision,
                                          weights=image_weights or ""))
