"""Locate the ComfyUI installation this extension runs in (or is tested against).

Search order, documented in README.md: ``COMFYUI_PATH``, then the ComfyUI that
contains this checkout (``ComfyUI/custom_nodes/<this repo>``), then ``~/ComfyUI``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir() and (path / "folder_paths.py").is_file()


def candidate_paths() -> list[tuple[str, Path]]:
    """The places searched for ComfyUI, in order, with a label for messages."""
    out = []
    env = os.environ.get("COMFYUI_PATH")
    if env:
        out.append(("COMFYUI_PATH", Path(env).expanduser()))
    out.append(("enclosing ComfyUI (custom_nodes/..)", REPO_ROOT.parent.parent))
    out.append(("~/ComfyUI", Path.home() / "ComfyUI"))
    return out


def find_comfyui() -> Path | None:
    """Return the first ComfyUI installation found, or None."""
    for _, path in candidate_paths():
        if _is_comfyui(path):
            return path.resolve()
    return None


def describe_search() -> str:
    """One line naming every place searched, for skip and error messages."""
    return "; ".join(f"{label}: {path}" for label, path in candidate_paths())


def add_to_sys_path(cpu: bool = True) -> Path | None:
    """Make ``import comfy`` work outside a running ComfyUI; returns the host path.

    With ``cpu`` set, ComfyUI's argument object is switched to CPU mode before
    ``comfy.model_management`` is imported (it probes for a GPU at import time).
    """
    root = find_comfyui()
    if root is None:
        return None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if cpu and "comfy.model_management" not in sys.modules:
        from comfy.cli_args import args  # noqa: PLC0415 - must precede model_management

        args.cpu = True
    return root
