"""Flux graphs in the API format for the converter and workflow tests: ComfyUI's Flux nodes around an image
prompt (workflow 15's core part), the Flux packs' loader and apply nodes on it, and our chain written by hand."""
from __future__ import annotations

from support.plus_graphs import n, theirs

MODEL = ["1", 0]


def flux_core(model_from, sampler="KSampler"):
    """ComfyUI's Flux nodes around an image prompt (workflow 15's core part)."""
    g = {
        "1": n("UNETLoader", unet_name="flux1-dev.safetensors", weight_dtype="default"),
        "2": n("DualCLIPLoader", clip_name1="clip_l.safetensors", clip_name2="t5xxl_fp16.safetensors", type="flux",
               device="default"),
        "3": n("CLIPTextEncode", text="a cozy reading corner by a window, morning light, film photo", clip=["2", 0]),
        "4": n("FluxGuidance", conditioning=["3", 0], guidance=3.5),
        "5": n("ConditioningZeroOut", conditioning=["3", 0]),
        "6": n("EmptySD3LatentImage", width=1024, height=1024, batch_size=1),
        "7": n("KSampler", seed=42, steps=20, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0,
               model=model_from, positive=["4", 0], negative=["5", 0], latent_image=["6", 0]),
        "8": n("VAELoader", vae_name="ae.safetensors"),
        "9": n("VAEDecode", samples=["7", 0], vae=["8", 0]),
        "10": n("SaveImage", filename_prefix="ipadapter/15_flux_xlabs", images=["9", 0]),
        "13": n("LoadImage", image="ipadapter_style.png"),
    }
    if sampler == "XlabsSampler":   # theirs: model, conditioning, latent, its own settings (not a node of ours)
        g["7"] = n("XlabsSampler", model=model_from, conditioning=["3", 0], neg_conditioning=["5", 0],
                   latent_image=["6", 0], noise_seed=42, steps=20, timestep_to_start_cfg=1, true_gs=3.5,
                   image_to_image_strength=0.0, denoise_strength=1.0)
    return g


def ours(weight=0.9, crop="center", blocks="all", custom="", start=0.0, end=1.0, schedule_end=None,
         file="flux-ip-adapter-v2.safetensors"):
    """The chain written by hand, as workflow 15 draws it (IP-Adapter CLIP Vision Loader finds the encoder)."""
    g = {
        "11": n("IPALoader", ipadapter_file=file),
        "12": n("IPACLIPVisionLoader", ipadapter=["11", 0]),
        "14": n("IPAEncodeImage", clip_vision=["12", 0], image=["13", 0], crop=crop, interpolation="default",
                sharpening=0.0, encode_batch_size=0),
        "16": n("IPAProject", ipadapter=["11", 0], image_features=["14", 0], combine="concat", image_weights=""),
        "17": n("IPAWeight", embeds=["16", 0], weight=weight, blocks=blocks, custom_blocks=custom, start_at=start,
                end_at=end, weight_type="linear", embeds_scaling="V only", style_boost=1.0, composition_boost=1.0),
        "15": n("IPAApply", model=MODEL, ipadapter=["11", 0], embeds=["17", 0]),
    }
    if schedule_end is not None:
        g["18"] = n("IPASchedule", embeds=["17", 0], curve="linear", weight_end=schedule_end,
                    keyframes="0.0:1.0, 0.5:0.6, 1.0:0.2")
        g["15"]["inputs"]["embeds"] = ["18", 0]
    return {**flux_core(["15", 0]), **g}


def xlabs_graph(apply="ApplyFluxIPAdapter", values=None, sampler="KSampler"):
    g = flux_core(["31", 0], sampler)
    g["30"] = theirs("LoadFluxIPAdapter", {"ipadatper": "flux-ip-adapter-v2.safetensors",
                                           "clip_vision": "clip-vit-large-patch14.safetensors"})
    g["31"] = theirs(apply, values, {"model": MODEL, "ip_adapter_flux": ["30", 0], "image": ["13", 0]})
    return g


def instantx_graph(apply="ApplyIPAdapterFlux", values=None, loader="IPAdapterFluxLoader"):
    g = flux_core(["31", 0])
    g["30"] = theirs(loader, {"ipadapter": "ip-adapter.bin"})
    g["31"] = theirs(apply, values, {"model": MODEL, "ipadapter_flux": ["30", 0], "image": ["13", 0]})
    return g
