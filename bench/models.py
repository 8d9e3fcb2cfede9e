"""What the benchmark runs on: the full-size SD1.5 UNet (ComfyUI's own classes, random
weights), random IP-Adapter files of the real shapes, image prompts made from them,
and the transformer_options a sampler passes to the UNet."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .common import CACHE

log = logging.getLogger("bench.models")

# The three SD1.5 token counts the issue asks about: linear (4), Resampler (16), full MLP (257).
VARIANTS = {4: "ip-adapter_sd15", 16: "ip-adapter-plus_sd15", 257: "ip-adapter-full-face_sd15"}
LAMBDA = 0.8           # λ ≠ 1, so the scale multiply is part of what is timed
CFG_LAYOUT = [1, 0]    # cond_or_uncond as ComfyUI batches CFG: uncond first
SIGMA = 7.0


def build_unet(device: str, dtype=torch.float32):
    """A ModelPatcher around the real SD1.5 UNetModel (860M parameters, random weights).

    tests/host_unet.py derives the config ComfyUI detects for the diffusers SD1.5
    structure and initialises every parameter (comfy.ops layers skip init)."""
    from support.host_unet import comfy_model

    t0 = time.perf_counter()
    model = comfy_model("sd15")
    if dtype != torch.float32 or device != "cpu":
        model.model.to(device=device, dtype=dtype)
        model.model.manual_cast_dtype = None
    n = sum(p.numel() for p in model.model.diffusion_model.parameters())
    log.info("SD1.5 UNet: %.0fM parameters, built in %.1f s", n / 1e6, time.perf_counter() - t0)
    return model


def adapter_path(variant: str, fmt: str = "safetensors") -> Path:
    """A random adapter file of ``variant`` (fp16 like the official releases), written once."""
    from support.adapter_files import write_adapter

    folder = CACHE / "adapters"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{variant}.{fmt}"
    if not path.is_file():
        tmp = write_adapter(folder, variant, fmt, name=f".{variant}.{fmt}.tmp")
        tmp.replace(path)  # atomic: a killed run leaves no half-written file under the real name
    return path


def load_handle(variant: str, fmt: str = "safetensors"):
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle

    return load_adapter_handle(adapter_path(variant, fmt))


def adapter_bytes(handle) -> int:
    """The adapter's own size: every weight it holds (stored dtype)."""
    return sum(p.numel() * p.element_size() for p in handle.model.state_dict().values())


def make_prompt(handle, seed: int = 0, weight: float = LAMBDA):
    """Image tokens through the real projection from random CLIP features of the adapter's
    encoder widths (the encoder itself is benchmarked separately in load.py)."""
    from ipadapter_ext.ip_adapter_core.files.config import PENULTIMATE
    from ipadapter_ext.ip_adapter_core.prompt.embeds import ImagePrompt
    from ipadapter_ext.ip_adapter_core.prompt.tokens import project

    cfg = handle.config
    g = torch.Generator().manual_seed(seed)
    shape = (1, 257, cfg.feature_dim) if cfg.feature == PENULTIMATE else (1, cfg.feature_dim)
    feats = torch.randn(shape, generator=g)
    zero = torch.randn(shape, generator=g) if cfg.feature == PENULTIMATE else None
    pos, neg = project(handle.model.image_proj, cfg, feats, zero_image_features=zero)
    return ImagePrompt(pos, neg, cfg, handle.path).weighted(weight)


def image_mask(latent: int) -> torch.Tensor:
    """An image-sized MASK (8 pixels per latent cell), left half on: where the prompt acts."""
    m = torch.zeros(1, 8 * latent, 8 * latent)
    m[:, :, : 4 * latent] = 1.0
    return m


@dataclass
class StepInputs:
    x: torch.Tensor
    sigma: torch.Tensor
    context: torch.Tensor


def step_inputs(latent: int, device, dtype=torch.float32, seed: int = 1) -> StepInputs:
    """Batch 2 as CFG runs it: noisy latent, per-row sigma, 77 text tokens per row."""
    g = torch.Generator().manual_seed(seed)
    rows = len(CFG_LAYOUT)
    x = torch.randn(rows, 4, latent, latent, generator=g) * SIGMA
    ctx = torch.randn(rows, 77, 768, generator=g)
    return StepInputs(x.to(device, dtype), torch.full((rows,), SIGMA, device=device), ctx.to(device, dtype))


def sampler_transformer_options(model, sigma: torch.Tensor) -> dict:
    """transformer_options as comfy.samplers.calc_cond_batch builds them for one CFG batch."""
    to = dict(model.model_options.get("transformer_options", {}))
    to["cond_or_uncond"] = CFG_LAYOUT[:]
    to["uuids"] = [f"uuid-{i}" for i in range(len(CFG_LAYOUT))]
    to["sigmas"] = sigma
    return to


def unet_step(model, inp: StepInputs):
    """One noise prediction through BaseModel.apply_model, the path the sampler calls."""
    to = sampler_transformer_options(model, inp.sigma)
    with torch.no_grad():
        return model.model.apply_model(inp.x, inp.sigma, c_crossattn=inp.context, transformer_options=to)


def capture_attn2_calls(model, inp: StepInputs) -> dict:
    """Run one step with a recording attn2 patch on every cross-attention layer and keep,
    per ComfyUI key, the shapes of q/k/v and the extra_options the host passed: the
    per-layer benchmark replays exactly these (no hand-built options to drift)."""
    from comfy.ldm.modules.attention import optimized_attention

    from ipadapter_ext.ip_adapter_core.files.layers import layers_for

    seen = {}

    def recorder(key):
        def patch(q, k, v, extra):
            seen[key] = {"q": tuple(q.shape), "k": tuple(k.shape), "extra": dict(extra)}
            return optimized_attention(q, k, v, extra["n_heads"], attn_precision=extra.get("attn_precision"),
                                       transformer_options=extra)
        return patch

    m = model.clone()
    for layer in layers_for("sd15"):
        m.set_model_attn2_replace(recorder(layer.key), *layer.key)
    unet_step(m, inp)
    missing = [l.key for l in layers_for("sd15") if l.key not in seen]
    if missing:
        raise RuntimeError(f"attn2 layers never called by the UNet: {missing}")
    return seen
