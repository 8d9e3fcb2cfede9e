"""A random OpenCLIP ViT-H/14 vision encoder file in the layout of the released one
(Hugging Face CLIPVisionModelWithProjection, fp16), for the encode benchmark.

The layout is spelled out here from the architecture (32 layers, width 1280, 16 heads,
MLP 5120, patch 14 at 224 px, projection 1024) rather than taken from ComfyUI's model
classes, so that ``comfy.clip_vision.load`` detecting and loading it strictly is part
of what is exercised. Written once to the bench cache (~1.26 GB).
"""
from __future__ import annotations

import logging
import os
import time
import zlib
from pathlib import Path

import torch

from .common import CACHE

log = logging.getLogger("bench.vision")

LAYERS, WIDTH, MLP, PATCH, IMAGE, PROJ = 32, 1280, 5120, 14, 224, 1024
NAME = "clip-vision-vit-h-random.safetensors"


def vit_h_shapes() -> dict[str, tuple[int, ...]]:
    n_pos = (IMAGE // PATCH) ** 2 + 1  # 256 patches + class token
    shapes = {
        "vision_model.embeddings.class_embedding": (WIDTH,),
        "vision_model.embeddings.patch_embedding.weight": (WIDTH, 3, PATCH, PATCH),  # bias-free conv
        "vision_model.embeddings.position_embedding.weight": (n_pos, WIDTH),
        "vision_model.pre_layrnorm.weight": (WIDTH,),  # sic: HF's spelling
        "vision_model.pre_layrnorm.bias": (WIDTH,),
        "vision_model.post_layernorm.weight": (WIDTH,),
        "vision_model.post_layernorm.bias": (WIDTH,),
        "visual_projection.weight": (PROJ, WIDTH),
    }
    for i in range(LAYERS):
        p = f"vision_model.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (WIDTH, WIDTH)
            shapes[f"{p}self_attn.{proj}.bias"] = (WIDTH,)
        for ln in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}{ln}.weight"] = (WIDTH,)
            shapes[f"{p}{ln}.bias"] = (WIDTH,)
        shapes[f"{p}mlp.fc1.weight"] = (MLP, WIDTH)
        shapes[f"{p}mlp.fc1.bias"] = (MLP,)
        shapes[f"{p}mlp.fc2.weight"] = (WIDTH, MLP)
        shapes[f"{p}mlp.fc2.bias"] = (WIDTH,)
    return shapes


def _value(key: str, shape) -> torch.Tensor:
    # Norm weights 1 and biases 0 keep activations finite through 32 random layers;
    # other tensors N(0, 0.02), each from its own seed so the file does not depend on order.
    if "norm" in key or "layrnorm" in key:
        return torch.ones(shape) if key.endswith("weight") else torch.zeros(shape)
    if key.endswith("bias"):
        return torch.zeros(shape)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    return torch.empty(shape).normal_(0.0, 0.02, generator=g)


def vit_h_file() -> Path:
    path = CACHE / NAME
    if path.is_file():
        return path
    from safetensors.torch import save_file

    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tensors = {k: _value(k, s).to(torch.float16) for k, s in vit_h_shapes().items()}
    tmp = path.with_name(f".{NAME}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote random ViT-H/14 %s (%.2f GB) in %.1f s", path, path.stat().st_size / 1e9,
             time.perf_counter() - t0)
    return path


def load_vit_h():
    """Load through ComfyUI's own loader, which detects ViT-H from the layer count."""
    import comfy.clip_vision

    cv = comfy.clip_vision.load(str(vit_h_file()))
    if cv is None:
        raise RuntimeError("comfy.clip_vision.load did not recognise the random ViT-H file")
    return cv


def encode_rate(clip_vision, n_images: int, size: int = 512, repeats: int = 1) -> dict:
    """Images per second through the extension's encode path (crop, ComfyUI's encode_image,
    and the zero-image features the plus/full-face variants need)."""
    from ipadapter_ext.ip_adapter_core.vision import encode

    g = torch.Generator().manual_seed(3)
    images = torch.rand(n_images, size, size, 3, generator=g)
    with torch.no_grad():
        encode(clip_vision, images[:1], "center")  # warm-up: loads the model onto its device
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = encode(clip_vision, images, "center")
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {"images": n_images, "size": size, "seconds": best, "images_per_s": n_images / best,
            "penultimate": tuple(out.penultimate_hidden_states.shape)}
