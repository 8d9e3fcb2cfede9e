"""A picture of where the image prompt acts."""
import comfy.samplers
import torch.nn.functional as F
from comfy_api.latest import io

from ..ip_adapter_core.apply.attention_map import colorize, normalized, overlay, record
from .types import CATEGORY


class IPAAttentionMap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IPAAttentionMap", display_name="IP-Adapter Attention Map", category=CATEGORY,
            description="Heat maps of how strongly each image prompt changes each part of the picture: at one "
                        "sampling step, ‖λ·image attention‖ / ‖text attention‖ per position, averaged over the "
                        "input, middle and output layers and over all.",
            inputs=[
                io.Model.Input("model", tooltip="A model with image prompts applied (IP-Adapter Apply); it is not changed."),
                io.Conditioning.Input("positive", tooltip="The positive conditioning the KSampler gets."),
                io.Conditioning.Input("negative", tooltip="The negative conditioning the KSampler gets."),
                io.Latent.Input("latent_image", tooltip="The latent the KSampler samples (e.g. Empty Latent Image)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="The KSampler's seed: the same seed maps the same run."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="The KSampler's steps."),
                io.Int.Input("step", default=5, min=0, max=10000,
                             tooltip="Which step to map (0 = the first, pure noise; steps 0 … step are sampled)."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, tooltip="The KSampler's cfg."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="The KSampler's sampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="The KSampler's scheduler."),
                io.Image.Input("image", optional=True,
                               tooltip="The decoded picture (VAE Decode) to draw the maps over; without it the "
                                       "overlay output is the maps alone."),
            ],
            outputs=[io.Image.Output(display_name="heatmaps"), io.Image.Output(display_name="overlay"),
                     io.Mask.Output(display_name="maps"), io.String.Output(display_name="labels")])

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, step, cfg, sampler_name, scheduler,
                image=None) -> io.NodeOutput:
        maps, labels, _ = record(model, positive, negative, latent_image, seed, steps, step, cfg, sampler_name,
                                 scheduler)
        scaled, top = normalized(maps)
        # to the picture's size (8 pixels per latent cell, nearest: each cell stays one value)
        pixels = F.interpolate(scaled.unsqueeze(1), scale_factor=8, mode="nearest")[:, 0]
        batch = maps.shape[0] // (len(labels))
        text = "\n".join(f"{i * batch}-{(i + 1) * batch - 1}: {label}" for i, label in enumerate(labels))
        text += f"\nmaximum ratio ‖λ·image attention‖ / ‖text attention‖: {top:.4g} (white in the maps)"
        heat = colorize(pixels)
        return io.NodeOutput(heat, heat if image is None else overlay(image, pixels), pixels, text)


