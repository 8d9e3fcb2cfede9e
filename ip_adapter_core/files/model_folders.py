"""What each file in the model folders holds, read from its tensors.

Every model file under ComfyUI's ``ipadapter`` and ``clip_vision`` folders (extra_model_paths.yaml's
included) is classified here, and only here: an IP-Adapter file by ``config.detect_config`` on its keys
and shapes, a CLIP vision file by two tensor shapes (which encoder it is). File names are never read
for what a file is. No weights are loaded: safetensors headers give the shapes, zip pickles are
memory-mapped (legacy pickles are read whole). Classifications are cached by (size, mtime_ns), so a
re-scan costs one stat per file and a changed file is classified again; a file is classified once
whatever names (links) it has, and the cache keeps the CACHE_SIZE most recently used files.

CLIP vision files: this accepts what ``comfy.clip_vision.load`` accepts, Hugging Face keys
(``vision_model.*``, ``visual_projection.weight``) or OpenCLIP keys under ``visual.`` (ComfyUI converts
those exactly when ``visual.transformer.resblocks.0.attn.in_proj_weight`` is present), stored as
safetensors or as a PyTorch pickle. As in ComfyUI's ``load_torch_file``, the extension decides the
format, and a pickle's ``state_dict`` (or single nested dict) is unwrapped.

Users: the IP-Adapter CLIP Vision Loader (``find_clip_vision_file``) and the presets (``scan``).
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import IPAdapterError, IPAdapterFileError
from .config import (ENCODERS, IMAGE_EMBEDS, PENULTIMATE, POOLED, SIGLIP, AdapterConfig,
                     detect_config, encoder_by_widths)
from .formats import adapter_sections, flatten_state_dict, load_pickle, sniff_format

log = logging.getLogger("ipadapter")

FOLDER = "ipadapter"                    # models/ipadapter
EXTENSIONS = {".safetensors", ".bin"}   # of adapter files
CLIP_VISION = "clip_vision"             # models/clip_vision
# comfy.clip_vision.load reads these (encoder_of_file sniffs which loader ComfyUI would use)
ENCODER_EXTENSIONS = {".safetensors", ".sft", ".bin", ".pt", ".pth", ".ckpt"}


# ---------------------------------------------------------------- IP-Adapter files

def adapter_config_of_file(path) -> AdapterConfig:
    """The variant of an IP-Adapter file from its keys and shapes, reading no weights where the
    format allows (safetensors header; zip pickles memory-mapped; legacy pickles read whole)."""
    path = Path(path)
    fmt = sniff_format(path)  # the bytes decide, as when the file is loaded
    if fmt == "safetensors":
        flat = _safetensors_meta(path)
    else:
        flat = flatten_state_dict(load_pickle(path, mmap=fmt == "zip-pickle"), path)
    sections, rest = adapter_sections(flat)
    return detect_config(sections, path, rest)


def _safetensors_meta(path: Path) -> dict[str, torch.Tensor]:
    """Meta tensors of the header's shapes: detect_config reads shapes only."""
    import safetensors

    with safetensors.safe_open(str(path), framework="pt") as f:
        return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}


# ---------------------------------------------------------------- CLIP vision files

KIND = "CLIP vision file"
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")  # ComfyUI torch.load()s every other extension

HF_WIDTH = "vision_model.embeddings.class_embedding"    # [width]
HF_PROJ = "visual_projection.weight"                    # [proj, width]
OPENCLIP_WIDTH = "visual.class_embedding"               # [width]
OPENCLIP_PROJ = "visual.proj"                           # [width, proj]
OPENCLIP_MARKER = "visual.transformer.resblocks.0.attn.in_proj_weight"
HF_POSITIONS = "vision_model.embeddings.position_embedding.weight"  # [1 + (size / 14)², width]; SigLIP: no +1
SIGLIP_WIDTH = "vision_model.post_layernorm.weight"                 # [width] (SigLIP has no class embedding)
SIGLIP_PROBE = "vision_model.head.probe"                            # the pooling head, [1, 1, width]
WANTED = {HF_WIDTH, HF_PROJ, OPENCLIP_WIDTH, OPENCLIP_PROJ, OPENCLIP_MARKER, HF_POSITIONS, SIGLIP_WIDTH, SIGLIP_PROBE}
NO_HEAD = "without its pooling head (vision_model.head.*)"


class NotAnEncoder(IPAdapterError):
    """A file that cannot serve as a supported CLIP vision encoder; the message says why."""


def encoder_of_file(path) -> str:
    """Name the supported encoder (see config.ENCODERS) in ``path``, or raise NotAnEncoder."""
    path = Path(path)
    shapes = _safetensors_shapes(path) if path.suffix.lower() in SAFETENSORS_SUFFIXES else _pickle_shapes(path)
    if SIGLIP_WIDTH in shapes and HF_WIDTH not in shapes:
        return _siglip(shapes)
    hidden, embeds = _widths(shapes)
    positions = shapes.get(HF_POSITIONS)
    # ViT-L/14 at 336 px (Kolors') has 577 positions, at 224 px 257; named as prompt/vision.encoder_of names a
    # loaded one
    size = round((positions[0] - 1) ** 0.5) * 14 if positions and len(positions) == 2 else None
    found = encoder_by_widths(hidden, embeds, size)
    if found is None:
        known = ", ".join(f"{n} ({w[PENULTIMATE]}/{w[IMAGE_EMBEDS]})" for n, w in ENCODERS.items()
                          if IMAGE_EMBEDS in w)
        raise NotAnEncoder(f"unsupported encoder (width {hidden}, projection {embeds}; supported: {known})")
    return found


def _siglip(shapes: dict[str, tuple]) -> str:
    """SigLIP so400m at 384 px (729 positions, 1152 wide), with or without the pooling head InstantX needs."""
    width = shapes[SIGLIP_WIDTH][0] if len(shapes[SIGLIP_WIDTH]) == 1 else 0
    positions = shapes.get(HF_POSITIONS, (0,))[0]
    if (width, positions) != (ENCODERS[SIGLIP][POOLED], 729):
        raise NotAnEncoder(f"unsupported SigLIP encoder (width {width}, {positions} positions; supported: {SIGLIP}, "
                           "1152 wide, 729 positions)")
    return SIGLIP if SIGLIP_PROBE in shapes else f"{SIGLIP} {NO_HEAD}"


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


# ---------------------------------------------------------------- the folders

@dataclass(frozen=True)
class Skipped:
    """A file that is not of the kind the folder is for; ``reason`` says why."""

    reason: str


# Enough for every model file of a large collection; beyond it the least recently used entry goes,
# so files that come and go over a long session cannot grow the cache without end.
CACHE_SIZE = 4096
# (kind, st_dev, st_ino) -> ((size, mtime_ns), result): one entry per file, whatever names it has
CLASSIFIED: OrderedDict[tuple[str, int, int], tuple[tuple[int, int], object]] = OrderedDict()


def _classified(kind: str, path: str, st: os.stat_result):
    """The cached classification of ``path`` (an AdapterConfig, an encoder name or Skipped),
    redone when the file's size or mtime changed. Never raises: a bad file is Skipped."""
    key, stamp = (kind, st.st_dev, st.st_ino), (st.st_size, st.st_mtime_ns)
    hit = CLASSIFIED.get(key)
    if hit is not None and hit[0] == stamp:
        CLASSIFIED.move_to_end(key)
        return hit[1]
    classify = adapter_config_of_file if kind == FOLDER else encoder_of_file
    try:
        result = classify(path)
    except Exception as e:  # any unreadable or foreign file: a scan must not fail on it
        # the file's own error names the path; the listing names it already
        result = Skipped(str(getattr(e, "problem", None) or e).rstrip("."))
        log.debug("%s: skipped %s: %s", kind, path, e)
    CLASSIFIED[key] = (stamp, result)
    CLASSIFIED.move_to_end(key)
    while len(CLASSIFIED) > CACHE_SIZE:
        CLASSIFIED.popitem(last=False)
    return result


def folders(kind: str) -> list[str]:
    """The folders ComfyUI has for ``kind`` (models/<kind> and extra_model_paths.yaml's)."""
    import folder_paths

    try:
        return folder_paths.get_folder_paths(kind)
    except KeyError:  # never registered: nothing to scan
        return []


def model_files(roots, extensions) -> list[tuple[str, os.stat_result | OSError]]:
    """(path, stat or the error stating it) of every file with one of ``extensions`` under ``roots``
    and their subfolders (symlinked ones too, as ComfyUI lists them), sorted by path.

    Each real folder is walked once: two links back to their parent would otherwise make 2^40
    paths before the kernel's symlink limit ends them. A file reached under several names (links,
    an extra folder inside another) is listed once, under the first name by path."""
    seen_dirs, files, unreadable = set(), {}, []
    for root in roots:
        for dirpath, dirnames, names in os.walk(root, followlinks=True):
            dirnames.sort()  # which name of a linked folder is kept must not depend on the disk's order
            try:
                st = os.stat(dirpath)
            except OSError:
                dirnames[:] = []
                continue
            if (st.st_dev, st.st_ino) in seen_dirs:
                dirnames[:] = []  # met before under another name: its files and subfolders are listed
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            for name in names:
                if Path(name).suffix.lower() not in extensions:
                    continue
                path = os.path.abspath(os.path.join(dirpath, name))
                try:
                    fst = os.stat(path)
                except OSError as e:  # a dangling link: listed, with why it cannot be read
                    unreadable.append((path, e))
                    continue
                ident = (fst.st_dev, fst.st_ino)
                if ident not in files or path < files[ident][0]:
                    files[ident] = (path, fst)
    return sorted([*files.values(), *unreadable], key=lambda f: f[0])


def scan(kind: str) -> list[tuple[str, object]]:
    """(path, classification) of every model file under the ``kind`` folders, sorted by path."""
    extensions = EXTENSIONS if kind == FOLDER else ENCODER_EXTENSIONS
    return [(path, Skipped(f"cannot be read ({st.strerror})") if isinstance(st, OSError)
             else _classified(kind, path, st))
            for path, st in model_files(folders(kind), extensions)]


LISTED = 20  # skipped files a message names; the log (INFO) names every one


def shown_name(path: str, kind: str) -> str:
    """``path`` as ComfyUI lists it: relative to the ``kind`` folder that holds it."""
    for root in folders(kind):
        try:
            rel = os.path.relpath(path, os.path.abspath(root))
        except ValueError:  # Windows: another drive
            continue
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            return rel
    return path


def _fits_without_head(found, config: AdapterConfig) -> bool:
    """The SD3.5 adapter reads SigLIP's penultimate states: a file without the pooling head (ComfyUI's own
    sigclip_vision_patch14_384) serves it as well as one with it."""
    return config.encoder == SIGLIP and config.feature != POOLED and found == f"{SIGLIP} {NO_HEAD}"


def find_clip_vision_file(config: AdapterConfig) -> str:
    """The path of the file in models/clip_vision that holds the encoder an adapter needs, by tensor
    shapes (no weights loaded); the first by path where several do. Says why each other file was skipped."""
    candidates, skipped = [], []
    for path, found in scan(CLIP_VISION):
        if found == config.encoder or _fits_without_head(found, config):
            candidates.append(path)
            continue
        reason = found.reason if isinstance(found, Skipped) else f"encoder {found}, not {config.encoder}"
        log.info("clip_vision: skipped %s: %s", path, reason)
        skipped.append(f"'{shown_name(path, CLIP_VISION)}': {reason}")
    if not candidates:
        listing = "; ".join(skipped[:LISTED]) if skipped else "the folders hold no model files"
        if len(skipped) > LISTED:
            listing += f"; and {len(skipped) - LISTED} more (the log names each)"
        raise IPAdapterError(
            f"clip_vision: no {config.encoder} CLIP vision model found in models/{CLIP_VISION} "
            f"(searched: {', '.join(folders(CLIP_VISION))}); the adapter ({config.name}) needs it. "
            f"Skipped: {listing}. See README.md, Models, for the file to download.")
    return candidates[0]
