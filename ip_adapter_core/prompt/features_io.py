"""CLIP features files: ours (safetensors, ``.ipafeatures``) and ComfyUI_IPAdapter_plus's ``.ipadpt`` (one pickled
tensor), read into ComfyUI's CLIP_VISION_OUTPUT for IP-Adapter Project.

Their save node does ``torch.save(embeds, file)``, their load node a plain ``torch.load``, which runs whatever code
a pickle carries. Here a pickle is size-bounded before it is read, opened only with torch's weights-only
unpickler (files/formats.load_pickle), and must hold exactly one floating-point tensor of a known layout.
"""
from __future__ import annotations

import os
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from ..errors import IPAdapterFileError
from ..files.config import FEATURES, IMAGE_EMBEDS, PENULTIMATE, POOLED
from ..files.formats import load_pickle, sniff_format
from .vision import BLACK_IMAGE_ATTR, FEATURES_FILE_ATTR, ZERO_IMAGE_ATTR

EXTENSION = ".ipafeatures"
THEIR_EXTENSION = ".ipadpt"
EXTENSIONS = (EXTENSION, THEIR_EXTENSION)
FORMAT = "ipadapter-features/1"
KIND = "features file"
REMAKE = ("Encode the reference again (IP-Adapter Encode Image) and save it with IP-Adapter Save Features, or use "
          "a file saved by ComfyUI_IPAdapter_plus's IPAdapterSaveEmbeds.")

# Their files are ~0.66 MB per image (ViT-H penultimate states [1, 257, 1280] in fp16; bigG fp32: 1.7 MB), so
# 256 MiB holds 150 to 400 images; the bound keeps a renamed checkpoint from being read whole into memory.
MAX_PICKLE_BYTES = 256 << 20
MAX_IMAGES = 4096       # references or animation frames; the cap of Encode Image's encode_batch_size widget
MAX_WIDTH = 8192        # tokens and channels: the widest encoder gives 1664 channels, the most tokens are 729
# The token counts of CLIP penultimate states: a class token + (size / 14)² patches, at 224 px (ViT-H/bigG/L, what
# every CLIP IP-Adapter reads) and 336 px (Kolors' ViT-L, which ComfyUI_IPAdapter_plus also encodes with).
TOKEN_COUNTS = tuple((size // 14) ** 2 + 1 for size in (224, 336))  # 257, 577
# The rank of each tensor a CLIP_VISION_OUTPUT may carry into our file (the negatives are batches of one).
RANKS = {IMAGE_EMBEDS: 2, PENULTIMATE: 3, POOLED: 2, ZERO_IMAGE_ATTR: 3, BLACK_IMAGE_ATTR: 2}


def save_features(output, path) -> Path:
    """Write the features IP-Adapter reads from a CLIP_VISION_OUTPUT (image_embeds, penultimate states, SigLIP's
    pooled output, whichever it has) and our encoder's zero- / black-image negatives, as safetensors."""
    path = Path(path)
    tensors = {name: t.detach().contiguous().cpu() for name in RANKS
               if isinstance(t := getattr(output, name, None), torch.Tensor)}
    if not any(name in tensors for name in FEATURES):
        raise IPAdapterFileError(path, f"image_features holds none of {list(FEATURES)}, so there is nothing to "
                                 "save.", "Connect IP-Adapter Encode Image or ComfyUI's CLIP Vision Encode.", KIND)
    _check_tensors(tensors, path)
    safetensors.torch.save_file(tensors, str(path), metadata={"format": FORMAT})
    return path


def load_features(path):
    """(positive, negative or None) CLIP_VISION_OUTPUTs from our file or theirs, told apart by their bytes."""
    path = Path(path)
    if _reworded(sniff_format, path, KIND) == "safetensors":
        return _load_ours(path), None
    size = path.stat().st_size
    if size > MAX_PICKLE_BYTES:
        _refuse(path, f"is {size / 2**20:.0f} MiB; a pickled features file may be at most {MAX_PICKLE_BYTES >> 20} MiB "
                      "(one image's features take about 1 MB), so it was not read.")
    return _load_theirs(_reworded(load_pickle, path, KIND), path)


def list_files(folder) -> list[str]:
    """The features files under ``folder`` (recursively, symlinked folders not followed), as sorted relative
    paths with forward slashes, the way ComfyUI's combo lists and get_annotated_filepath take them."""
    found = []
    for root, _, files in os.walk(folder):
        found += [Path(os.path.relpath(os.path.join(root, f), folder)).as_posix()
                  for f in files if f.lower().endswith(EXTENSIONS)]
    return sorted(found)


def their_layout(shape) -> tuple[str, bool] | None:
    """(the feature, whether positive and negative are stacked) of an ``.ipadpt`` tensor of ``shape``, or None.

    Since March 2024 their files hold the positive features only: image_embeds [B, D] (base adapters) or
    penultimate states [B, T, W] (plus adapters). Before, their encoder stacked positive and negative:
    [2, B, D] or [2, B, T, W]. Rank 3 with a first size of 2 is then either; a second size that is a CLIP token
    count (TOKEN_COUNTS) means penultimate states of two images, any other an image_embeds pair."""
    rank = len(shape)
    if rank == 2:
        return IMAGE_EMBEDS, False
    if rank == 3:
        pair = shape[0] == 2 and shape[1] not in TOKEN_COUNTS
        return (IMAGE_EMBEDS if pair else PENULTIMATE), pair
    if rank == 4 and shape[0] == 2:
        return PENULTIMATE, True
    return None


def _load_theirs(obj, path):
    if not isinstance(obj, torch.Tensor):
        _refuse(path, f"expected one tensor (what ComfyUI_IPAdapter_plus's IPAdapterSaveEmbeds writes); found "
                      f"{_describe(obj)}.")
    t = obj.detach()
    _check_tensor(t, path, "its tensor", 2, 4)
    layout = their_layout(tuple(t.shape))
    if layout is None:
        _refuse(path, f"holds a tensor shaped {list(t.shape)}; expected image_embeds [images, width] or penultimate "
                      "states [images, tokens, width], or the first generation's positive and negative stacked: "
                      "[2, images, width] or [2, images, tokens, width].")
    feature, pair = layout
    if not pair:
        return _output({feature: t}, path), None
    return _output({feature: t[0]}, path), _output({feature: t[1]}, path)


def _describe(obj) -> str:
    if isinstance(obj, dict):
        return f"a dict with keys {sorted(map(str, obj))[:6]}"
    if isinstance(obj, (list, tuple)):  # diffusers' docs save prepare_ip_adapter_image_embeds' list this way
        return f"a {type(obj).__name__} of {len(obj)} items (diffusers' image embeds lists are not read here)"
    return f"a {type(obj).__name__}"


def _load_ours(path):
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt data
        raise IPAdapterFileError(path, f"is not a readable safetensors file ({e}).", REMAKE, KIND) from e
    unknown = sorted(set(tensors) - set(RANKS))
    if meta.get("format") != FORMAT or unknown or not any(n in tensors for n in FEATURES):
        _refuse(path, f"expected format {FORMAT} with some of the tensors {list(RANKS)}, at least one of "
                      f"{list(FEATURES)}; found format {meta.get('format')!r} and {sorted(tensors)}.")
    _check_tensors(tensors, path)
    return _output(tensors, path)


def _check_tensors(tensors: dict, path) -> None:
    """Each of RANKS' rank, sane sizes; the features of one batch; the negatives a single image."""
    for name, t in tensors.items():
        _check_tensor(t, path, f"'{name}'", RANKS[name], RANKS[name])
    batches = {name: t.shape[0] for name, t in tensors.items()}
    if len({batches[n] for n in FEATURES if n in tensors}) > 1:
        _refuse(path, f"its features hold different numbers of images: {batches}.")
    negatives = {n: batches[n] for n in (ZERO_IMAGE_ATTR, BLACK_IMAGE_ATTR) if n in tensors}
    if any(b != 1 for b in negatives.values()):
        _refuse(path, f"its zero- / black-image negatives must hold one image each; found {negatives}.")


def _check_tensor(t: torch.Tensor, path, what: str, low: int, high: int) -> None:
    shape = list(t.shape)
    if not low <= t.ndim <= high:
        _refuse(path, f"{what} has rank {t.ndim} (shape {shape}); expected rank {low}"
                      + (f" to {high}." if high > low else "."))
    if not t.is_floating_point() or t.layout != torch.strided:
        layout = "" if t.layout == torch.strided else f" ({t.layout})"
        _refuse(path, f"{what} holds {t.dtype}{layout}; CLIP features are dense floating-point numbers.")
    if not (0 < shape[0] <= MAX_IMAGES) or not all(0 < n <= MAX_WIDTH for n in shape[1:]):
        _refuse(path, f"{what} is shaped {shape}; every size must be at least 1, the images at most {MAX_IMAGES} and "
                      f"the tokens and width at most {MAX_WIDTH}.")
    # a pickle can give a few stored bytes a huge shape (stride 0, as expand() makes), which float() would allocate
    stored = t.untyped_storage().nbytes()
    if t.numel() * t.element_size() > stored:
        _refuse(path, f"{what} is shaped {shape} but stores only {stored:,} bytes: its values repeat by stride "
                      f"{list(t.stride())}, which no saved features do.")


def _output(tensors: dict, path):
    """A ComfyUI CLIP_VISION_OUTPUT of float32 tensors that says which file it came from (vision._feature)."""
    from comfy.clip_vision import Output

    out = Output()
    for name, t in tensors.items():
        out[name] = t.float()
    out[FEATURES_FILE_ATTR] = str(path)
    return out


def _refuse(path, problem: str):
    raise IPAdapterFileError(path, problem, REMAKE, KIND)


def _reworded(read, path, kind):
    """``read(path, kind)``, its errors given this file's hint: formats.py's are about model files."""
    try:
        return read(path, kind)
    except IPAdapterFileError as e:
        raise IPAdapterFileError(e.path, e.problem, REMAKE, kind) from e
