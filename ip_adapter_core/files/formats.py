"""Reading IP-Adapter files safely, whatever their extension says.

Two layouts exist: the original ``.bin`` pickle holding a nested dict
``{"image_proj": {...}, "ip_adapter": {...}}`` and ``.safetensors`` with the same
tensors flattened under ``image_proj.`` / ``ip_adapter.``. The format is sniffed
from the bytes, not the name, and pickles are only ever opened with
``weights_only=True`` so a crafted file cannot run code, and only with a torch
where that guard holds (2.6 or newer).
"""
from __future__ import annotations

import logging
import pickle
import re
import struct
import zipfile
from pathlib import Path

import torch

from ..errors import IPAdapterFileError
from .flux_layout import is_xlabs, xlabs_sections

log = logging.getLogger("ipadapter")

SECTIONS = ("image_proj", "ip_adapter")

# Before torch 2.6, torch.load(weights_only=True) could be made to run code by a crafted
# file (CVE-2025-32434), so on older torch no pickle is opened at all.
SAFE_UNPICKLING_TORCH = (2, 6)


def torch_unpickles_safely(version: str | None = None) -> bool:
    """Whether this torch (or ``version``) keeps ``weights_only=True`` pickles from running code."""
    version = torch.__version__ if version is None else str(version)
    match = re.match(r"(\d+)\.(\d+)", version)
    # an unparsable version string is treated as unsafe: refusing is the cautious side
    return bool(match) and (int(match[1]), int(match[2])) >= SAFE_UNPICKLING_TORCH


def _unpickling_detail(e: Exception) -> str:
    """The line of torch's long weights_only message that says what the file asked for
    (e.g. 'Unsupported global: GLOBAL posix.system'), without its terminal colour codes."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", l).strip() for l in str(e).splitlines()]
    for line in lines:
        # torch goes on to suggest allow-listing the global: not advice to pass on for an untrusted file
        hit = re.search(r"Unsupported (global|operand).*?(?= was not|$)", line)
        if hit:
            return hit.group(0).strip()
    return next((l for l in lines if l), type(e).__name__)


def load_pickle(path, kind: str = "IP-Adapter file", mmap: bool = False):
    """``torch.load`` a pickle on the CPU, tensors and plain containers only. ``mmap`` maps the
    tensors instead of reading them (zip-format files only), so their shapes cost no I/O."""
    path = Path(path)
    if not torch_unpickles_safely():
        want = ".".join(map(str, SAFE_UNPICKLING_TORCH))
        raise IPAdapterFileError(
            path, f"is a pickle, and torch {torch.__version__} cannot open pickles safely (before torch "
            f"{want}, weights_only=True can be bypassed by a crafted file), so it was not opened.",
            f"Use the .safetensors release of this file, or upgrade torch to {want} or newer.", kind)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global that is not a tensor type: the file wants to
        # build arbitrary Python objects, which is how pickles run code. Nothing ran.
        detail = _unpickling_detail(e)
        raise IPAdapterFileError(
            path, "holds Python objects other than tensors (a pickle can run code), so it was "
            f"refused without being executed. Detail: {detail}.",
            "Use the .safetensors release of this file, or one from the official source.", kind) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise IPAdapterFileError(path, f"is a damaged PyTorch file ({type(e).__name__}: {e}).",
                                 "It is probably truncated: download it again.", kind) from e


def sniff_format(path: Path, kind: str = "IP-Adapter file") -> str:
    """Return 'safetensors', 'zip-pickle' or 'legacy-pickle' from the file's first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise IPAdapterFileError(path, f"cannot be opened ({e.strerror}).",
                                 "Check that the file exists and is readable.", kind) from e
    if len(head) < 8:
        raise IPAdapterFileError(path, f"is only {len(head)} bytes long: empty or truncated.",
                                 "Download the file again.", kind)
    if head[:2] == b"PK":
        return "zip-pickle"
    if head[:1] == b"\x80":
        return "legacy-pickle"
    (header_len,) = struct.unpack("<Q", head[:8])
    if 0 < header_len < 100_000_000 and head[8:9] == b"{":
        return "safetensors"
    raise IPAdapterFileError(path, "is neither a safetensors file nor a PyTorch checkpoint "
                             f"(first bytes {head[:8]!r}).", "Download the file again.", kind)


def read_flat_state_dict(path) -> dict[str, torch.Tensor]:
    """Load every tensor of a model file into one flat ``{key: tensor}`` dict on the CPU."""
    path = Path(path)
    kind = sniff_format(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    return flatten_state_dict(load_pickle(path), path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    import safetensors.torch

    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt data
        raise IPAdapterFileError(path, f"is a damaged safetensors file ({e}).",
                                 "It is probably truncated: download it again.") from e


# A state dict is {section: {key: tensor}}, at most a wrapper or two deeper ("state_dict",
# "module"); released adapters hold a few hundred keys. Far wider or deeper is not a model
# file, and the walk stops there instead of growing with what the file claims.
MAX_NESTING = 16
MAX_ENTRIES = 100_000


def flatten_state_dict(obj, path, kind: str = "IP-Adapter file") -> dict[str, torch.Tensor]:
    """A loaded pickle's nested dicts of tensors -> one flat ``{"a.b.c": tensor}`` dict.

    Each dict is walked once: pickles share objects by reference, so a few hundred bytes
    (d1 = {"a": d0, "b": d0}, 60 levels) describe 2^60 paths; a dict met again is refused,
    as are nesting beyond MAX_NESTING and more than MAX_ENTRIES entries in all. Numbers,
    strings and None are metadata ("epoch") and skipped; any other object is refused."""
    path = Path(path)
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}  # id of each dict walked -> where it was met
    entries = 0
    stack = [(obj, "", 0)]  # explicit stack: a deep file cannot exhaust Python's recursion limit
    while stack:
        node, prefix, depth = stack.pop()
        where = prefix.rstrip(".") or "<top>"
        if isinstance(node, torch.Tensor):
            out[prefix.rstrip(".")] = node
            continue
        if not isinstance(node, dict):
            raise IPAdapterFileError(path, f"contains a {type(node).__name__} at '{where}', where a dict of "
                                     "tensors was expected.", "This is not a model file.", kind)
        if id(node) in seen:
            raise IPAdapterFileError(path, f"holds the same dict at '{seen[id(node)]}' and at '{where}'; a model "
                                     "file's dicts are all distinct (shared ones can make a small file stand for "
                                     "an astronomically large one), so it was refused.",
                                     "Use the .safetensors release of this file.", kind)
        seen[id(node)] = where
        if depth > MAX_NESTING:
            raise IPAdapterFileError(path, f"nests dicts more than {MAX_NESTING} deep (at '{where}'); model "
                                     "files nest two or three.", "This is not a model file.", kind)
        entries += len(node)
        if entries > MAX_ENTRIES:
            raise IPAdapterFileError(path, f"holds more than {MAX_ENTRIES:,} dict entries; IP-Adapter files "
                                     "hold a few hundred.", "This is not a model file.", kind)
        for k, v in reversed(node.items()):  # reversed: popped in the file's order
            if isinstance(v, (int, float, str)) or v is None:
                continue  # metadata such as "epoch" or "global_step"
            stack.append((v, f"{prefix}{k}.", depth + 1))
    return out


# Kolors FaceID Plus names its attention weights "adapter_modules" (its pipeline's name), not "ip_adapter"
SECTION_ALIASES = {"adapter_modules": "ip_adapter"}


def split_sections(flat: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Split a flat dict into the ``image_proj`` / ``ip_adapter`` sections; also return the rest."""
    sections: dict[str, dict[str, torch.Tensor]] = {s: {} for s in SECTIONS}
    rest = []
    for k, v in flat.items():
        head, _, tail = k.partition(".")
        head = SECTION_ALIASES.get(head, head)
        if head in sections and tail:
            sections[head][tail] = v
        else:
            rest.append(k)
    return sections, rest



def adapter_sections(flat: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Any adapter file's flat keys -> (its ``image_proj`` / ``ip_adapter`` sections, the other keys): XLabs' Flux
    files name their sections their own way (flux_layout.xlabs_sections)."""
    return xlabs_sections(flat) if is_xlabs(flat) else split_sections(flat)
