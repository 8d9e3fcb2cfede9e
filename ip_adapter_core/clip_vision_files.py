"""Which CLIP vision encoder a model file holds, read from two tensor shapes.

Accepts what ``comfy.clip_vision.load`` accepts: Hugging Face keys (``vision_model.*``,
``visual_projection.weight``) or OpenCLIP keys under ``visual.`` (ComfyUI converts those
exactly when ``visual.transformer.resblocks.0.attn.in_proj_weight`` is present), stored
as safetensors or as a PyTorch pickle. As in ComfyUI's ``load_torch_file``, the extension
decides the format and a pickle's ``state_dict`` (or single nested dict) is unwrapped.
No weights are read: safetensors headers give the shapes, pickles are memory-mapped.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .config import ENCODERS, IMAGE_EMBEDS, PENULTIMATE, encoder_by_widths
from .errors import IPAdapterError, IPAdapterFileError
from .files import load_pickle, sniff_format

KIND = "CLIP vision file"
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")  # ComfyUI torch.load()s every other extension

HF_WIDTH = "vision_model.embeddings.class_embedding"    # [width]
HF_PROJ = "visual_projection.weight"                    # [proj, width]
OPENCLIP_WIDTH = "visual.class_embedding"               # [width]
OPENCLIP_PROJ = "visual.proj"                           # [width, proj]
OPENCLIP_MARKER = "visual.transformer.resblocks.0.attn.in_proj_weight"
WANTED = {HF_WIDTH, HF_PROJ, OPENCLIP_WIDTH, OPENCLIP_PROJ, OPENCLIP_MARKER}


class NotAnEncoder(IPAdapterError):
    """A file that cannot serve as a supported CLIP vision encoder; the message says why."""


def encoder_of_file(path) -> str:
    """Name the supported encoder (see config.ENCODERS) in ``path``, or raise NotAnEncoder."""
    path = Path(path)
    shapes = _safetensors_shapes(path) if path.suffix.lower() in SAFETENSORS_SUFFIXES else _pickle_shapes(path)
    hidden, embeds = _widths(shapes)
    found = encoder_by_widths(hidden, embeds)
    if found is None:
        known = ", ".join(f"{n} ({w[PENULTIMATE]}/{w[IMAGE_EMBEDS]})" for n, w in ENCODERS.items())
        raise NotAnEncoder(f"unsupported encoder (width {hidden}, projection {embeds}; supported: {known})")
    return found


def _widths(shapes: dict[str, tuple]) -> tuple[int, int]:
    """(penultimate width, image_embeds width) in whichever layout ComfyUI would read the file."""
    if OPENCLIP_MARKER in shapes:  # the same test comfy.clip_vision.load makes
        width, proj, proj_axis = OPENCLIP_WIDTH, OPENCLIP_PROJ, 1
    else:
        width, proj, proj_axis = HF_WIDTH, HF_PROJ, 0
    if width not in shapes or proj not in shapes:
        raise NotAnEncoder(
            f"not a CLIP vision model (it has neither {HF_WIDTH} + {HF_PROJ} (Hugging Face layout) "
            f"nor {OPENCLIP_WIDTH} + {OPENCLIP_PROJ} + {OPENCLIP_MARKER} (OpenCLIP layout))")
    if len(shapes[width]) != 1 or len(shapes[proj]) != 2:
        raise NotAnEncoder(f"not a CLIP vision model ({width} has shape {list(shapes[width])}, "
                           f"{proj} {list(shapes[proj])}; expected [width] and a matrix)")
    return shapes[width][0], shapes[proj][proj_axis]


def _safetensors_shapes(path: Path) -> dict[str, tuple]:
    import safetensors

    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k in WANTED}
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise NotAnEncoder(f"unreadable: not a valid safetensors file ({e})") from e


def _pickle_shapes(path: Path) -> dict[str, tuple]:
    try:
        kind = sniff_format(path, KIND)
        if kind == "safetensors":
            # ComfyUI would hand this to torch.load, which fails: say so rather than accept it
            raise NotAnEncoder(f"unreadable by ComfyUI: a safetensors file named '{path.suffix}'; "
                               "rename it to .safetensors")
        # mmap needs the zip format (every torch.save since 1.6); older files are read whole
        obj = load_pickle(path, KIND, mmap=kind == "zip-pickle")
    except IPAdapterFileError as e:
        raise NotAnEncoder(f"unreadable: it {e.problem} {e.hint}".rstrip()) from e
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict):
        raise NotAnEncoder(f"not a CLIP vision model (the pickle holds a {type(obj).__name__}, not a dict of tensors)")
    return {k: tuple(v.shape) for k, v in obj.items() if k in WANTED and isinstance(v, torch.Tensor)}
