"""Training nodes: a training set computed once, a train node (new or fine-tuned adapter), a save node."""
import logging

from comfy_api.latest import io

from ..ip_adapter_core.prompt.vision import CROP_MODES
from ..ip_adapter_core.training import drop
from ..ip_adapter_core.training.adapter_init import VARIANT_NAMES
from ..ip_adapter_core.training.comfy_session import adapter_for_model, make_training_set, save_trained, trained_handle
from ..ip_adapter_core.training.comfy_train import COMPUTE_DTYPES, TrainSettings, train
from .types import CATEGORY, IPAModel

log = logging.getLogger("ipadapter")
IPATrainingSet = io.Custom("IPA_TRAINING_SET")
LossMap = io.Custom("LOSS_MAP")  # the host's type: its Plot Loss Graph node draws it
FINE_TUNE = "fine-tune the connected adapter"


class IPATrainingSetNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPATrainingSet", display_name="IP-Adapter Training Set", category=CATEGORY + "/training",
            description="Encodes the training images once: latents (VAE), caption conds and the empty caption "
                        "(CLIP), image features and the zero-image features (CLIP vision).",
            inputs=[
                io.Image.Input("images", tooltip="The training images, one batch; all the same size (multiples of 8)."),
                io.String.Input("captions", multiline=True, default="",
                                tooltip="One caption per line, in image order; a single line is used for every "
                                        "image; empty: no caption."),
                io.Vae.Input("vae", tooltip="The model's VAE: encodes the images to latents once."),
                io.Clip.Input("clip", tooltip="The model's text encoder: encodes each caption and the empty caption."),
                io.ClipVision.Input("clip_vision", tooltip="The encoder the adapter uses (ViT-H/14 or ViT-bigG/14)."),
                io.Combo.Input("crop", options=list(CROP_MODES), default="center",
                               tooltip="How each image is made square for the CLIP vision encoder."),
            ],
            outputs=[IPATrainingSet.Output(display_name="training_set")])

    @classmethod
    def execute(cls, images, captions, vae, clip, clip_vision, crop) -> io.NodeOutput:
        return io.NodeOutput(make_training_set(images, captions, vae, clip, clip_vision, crop))


class IPATrainNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPATrain", display_name="IP-Adapter Train", category=CATEGORY + "/training",
            description="Trains an IP-Adapter on the training set with the model's UNet frozen: only K'/V' and the "
                        "projection learn (the reference's recipe). The model is not changed.",
            inputs=[
                io.Model.Input("model", tooltip="The SD1.5 or SDXL model to train for."),
                IPATrainingSet.Input("training_set", tooltip="From IP-Adapter Training Set."),
                io.Combo.Input("variant", options=[*VARIANT_NAMES, FINE_TUNE], default="linear 4 tokens",
                               tooltip="A new adapter of this kind (K'/V' start as the text K/V), or a copy of the "
                                       "connected adapter to fine-tune (it is not changed)."),
                io.Int.Input("steps", default=200, min=1, max=1_000_000, tooltip="Optimizer steps."),
                io.Int.Input("batch_size", default=1, min=1, max=256, tooltip="Images per step (drawn at random)."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-5,
                               tooltip="AdamW learning rate; the reference uses 1e-4."),
                io.Float.Input("weight_decay", default=0.01, min=0.0, max=1.0, step=0.001,
                               tooltip="AdamW weight decay; the reference uses 0.01."),
                io.Float.Input("image_drop", default=0.05, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of samples trained without the image."),
                io.Float.Input("text_drop", default=0.05, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of samples trained with the empty caption."),
                io.Float.Input("both_drop", default=0.05, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction trained with neither (classifier-free guidance needs them)."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1,
                             tooltip="Seeds the new adapter, the image order, the noise and the drops."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Less memory, about a third more time."),
                IPAModel.Input("ipadapter", optional=True, tooltip="Only to fine-tune: the adapter to start from."),
                io.Combo.Input("compute_dtype", options=list(COMPUTE_DTYPES), default="float32", optional=True,
                               tooltip="Precision of the UNet's forward and backward (autocast); the adapter's "
                                       "weights and optimizer stay float32. bfloat16/float16 save memory on a GPU."),
            ],
            outputs=[IPAModel.Output(display_name="ipadapter"), LossMap.Output(display_name="loss"),
                     io.Int.Output(display_name="steps")])

    @classmethod
    def execute(cls, model, training_set, variant, steps, batch_size, learning_rate, weight_decay, image_drop,
                text_drop, both_drop, seed, gradient_checkpointing, ipadapter=None,
                compute_dtype="float32") -> io.NodeOutput:
        import comfy.utils

        drop.check_rates(image_drop, text_drop, both_drop)
        adapter = adapter_for_model(model, training_set, None if variant == FINE_TUNE else VARIANT_NAMES[variant],
                                    ipadapter, seed)
        settings = TrainSettings(steps, batch_size, learning_rate, weight_decay, (image_drop, text_drop, both_drop),
                                 seed, gradient_checkpointing, compute_dtype)
        bar = comfy.utils.ProgressBar(steps)
        losses = train(model, adapter, training_set, settings, on_step=lambda step, loss: bar.update(1))
        log.info("trained %s for %d steps: loss %.4f -> %.4f", adapter.config.name, steps, losses[0], losses[-1])
        return io.NodeOutput(trained_handle(adapter, f"trained-{steps}-steps"), {"loss": losses}, steps)


class IPASaveAdapterNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPASaveAdapter", display_name="IP-Adapter Save", category=CATEGORY + "/training",
            description="Writes the adapter as a flat .safetensors (fp16) that this extension, diffusers and "
                        "ComfyUI_IPAdapter_plus load: output/<prefix>_NNNNN_.safetensors.",
            is_output_node=True,
            inputs=[IPAModel.Input("ipadapter", tooltip="From IP-Adapter Train (or a loader)."),
                    io.String.Input("filename_prefix", default="ipadapter/ipadapter",
                                    tooltip="Under ComfyUI's output folder; move the file to models/ipadapter to "
                                            "load it later.")],
            outputs=[])

    @classmethod
    def execute(cls, ipadapter, filename_prefix) -> io.NodeOutput:
        path = save_trained(ipadapter, filename_prefix)
        log.info("saved IP-Adapter to %s", path)
        return io.NodeOutput()
