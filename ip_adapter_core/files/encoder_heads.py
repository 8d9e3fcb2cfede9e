"""Weights of a CLIP vision file that ComfyUI's own loader drops: SigLIP's attention-pooling head
(``vision_model.head.*``), which InstantX's Flux adapter reads through (networks/siglip_head.py).

ComfyUI loads CLIP vision models with ``strict=False`` and keeps no path, so the head is read here from the
file, tensors only (safetensors, or a pickle opened with ``weights_only``), and checked against its shapes.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import IPAdapterFileError
from ..networks.siglip_head import SiglipPoolingHead
from .config import ENCODERS, POOLED, SIGLIP, SIGLIP_HEAD
from .formats import flatten_state_dict, load_pickle, sniff_format

HEAD_PREFIX = "vision_model.head."
KIND = "CLIP vision file"


def read_pooling_head(path) -> SiglipPoolingHead:
    """The SigLIP so400m pooling head stored in ``path`` (float32, CPU), or IPAdapterFileError naming what is
    missing and where to get a file that has it."""
    path = Path(path)
    fmt = sniff_format(path, KIND)
    if fmt == "safetensors":
        import safetensors

        with safetensors.safe_open(str(path), framework="pt") as f:
            head = {k[len(HEAD_PREFIX):]: f.get_tensor(k) for k in f.keys() if k.startswith(HEAD_PREFIX)}
    else:
        flat = flatten_state_dict(load_pickle(path, KIND, mmap=fmt == "zip-pickle"), path)
        head = {k[len(HEAD_PREFIX):]: v for k, v in flat.items() if k.startswith(HEAD_PREFIX)}
    width = ENCODERS[SIGLIP][POOLED]
    with torch.device("meta"):
        module = SiglipPoolingHead(width, SIGLIP_HEAD["heads"], SIGLIP_HEAD["mlp"])
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if not head:
        raise IPAdapterFileError(path, f"holds {SIGLIP} without its attention-pooling head ({HEAD_PREFIX}*), which "
                                 "InstantX's Flux adapter reads through.",
                                 "Use the vision tower of google/siglip-so400m-patch14-384 (its model.safetensors "
                                 "has the head).", kind=KIND)
    have = {k: tuple(v.shape) for k, v in head.items()}
    if have != want:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))[:3]
        raise IPAdapterFileError(path, f"has a SigLIP pooling head of another shape ({', '.join(diff)}: file "
                                 f"{[have.get(k) for k in diff]}, so400m {[want.get(k) for k in diff]}).",
                                 "Use google/siglip-so400m-patch14-384.", kind=KIND)
    module.load_state_dict({k: v.float() for k, v in head.items()}, assign=True)
    return module.eval().requires_grad_(False)
