"""The face packs in ``models/insightface/models/<pack>/``, and which of a pack's ONNX files is what.

insightface's ``FaceAnalysis(name=pack, root=models/insightface)`` reads ``<root>/models/<pack>/*.onnx``; the
same folder is read here, so nothing moves when a user switches. The antelopev2 zip unpacks into
``antelopev2/antelopev2/*.onnx``, which makes insightface fail; a pack's ONNX files are looked for one folder
deeper too. A file's role is read from its graph's inputs and outputs (as insightface's model_zoo does):
the detector has one image input of free size and 6 or 9 outputs (scores, boxes and, with 9, five landmarks
for strides 8, 16, 32); the recogniser takes 112x112 crops and gives one 512-wide embedding. Landmark and
age/gender models are not needed and are ignored. These weights are non-commercial (insightface's licence):
never shipped or downloaded here; README.md says where users get them.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import IPAdapterError

log = logging.getLogger("ipadapter")

FOLDER = "insightface"          # models/insightface
PACKS_SUBFOLDER = "models"      # models/insightface/models/<pack>/, as insightface lays them out
MAX_ONNX_FILES = 64             # a pack holds five; a folder of thousands is not a pack
MAX_ONNX_BYTES = 2 << 30        # the largest (glintr100) is 261 MB
DETECTOR, RECOGNISER = "detector", "recogniser"


@dataclass(frozen=True)
class PackFiles:
    """The two ONNX files FaceID needs from a pack."""

    name: str
    detector: str
    recogniser: str


def register_folder() -> None:
    """Add ``models/insightface`` to ComfyUI's folders (extra_model_paths.yaml's entries first)."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, exts = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    if default not in paths:
        paths = list(paths) + [default]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(exts) | {".onnx"})


def roots() -> list[str]:
    import folder_paths

    try:
        return folder_paths.get_folder_paths(FOLDER)
    except KeyError:
        return []


def pack_dirs(search=None) -> dict[str, Path]:
    """pack name -> the folder holding its ONNX files (a nested ``<pack>/<pack>`` folder flattened),
    over every ``insightface`` root; the first root wins for a name."""
    found: dict[str, Path] = {}
    for root in (roots() if search is None else search):
        base = Path(root) / PACKS_SUBFOLDER
        if not base.is_dir():
            continue
        for d in sorted(p for p in base.iterdir() if p.is_dir()):
            nested = d / d.name
            folder = nested if not any(d.glob("*.onnx")) and nested.is_dir() else d
            if d.name not in found and any(folder.glob("*.onnx")):
                found[d.name] = folder
    return found


def onnx_role(path: Path, session_of) -> str | None:
    """DETECTOR, RECOGNISER or None, from a session's inputs and outputs (``session_of(path)`` opens one)."""
    sess = session_of(path)
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if len(inputs) != 1:
        return None
    shape = list(inputs[0].shape)
    if len(shape) != 4:
        return None
    if len(outputs) in (6, 9) and not all(isinstance(s, int) for s in shape[2:]):
        return DETECTOR
    if len(outputs) in (6, 9) and shape[2:] == [640, 640]:
        return DETECTOR  # exported with a fixed size
    if shape[2:] == [112, 112] and len(outputs) == 1 and list(outputs[0].shape)[-1] == 512:
        return RECOGNISER
    return None


def pack_files(name: str, session_of, search=None) -> PackFiles:
    """The detector and recogniser of pack ``name``, or IPAdapterError saying what is there and what to do."""
    packs = pack_dirs(search)
    where = ", ".join(str(Path(r) / PACKS_SUBFOLDER) for r in (roots() if search is None else search)) or "nowhere"
    if name not in packs:
        raise IPAdapterError(
            f"face pack: '{name}' not found (searched {where}; found: {', '.join(packs) or 'none'}). Download "
            "insightface's buffalo_l (or antelopev2) and unzip it so that the .onnx files are in "
            f"models/{FOLDER}/{PACKS_SUBFOLDER}/{name}/ (README.md, FaceID).")
    files = sorted(packs[name].glob("*.onnx"))
    if len(files) > MAX_ONNX_FILES:
        raise IPAdapterError(f"face pack '{name}': {len(files)} .onnx files in {packs[name]}; a pack holds about "
                             f"five (at most {MAX_ONNX_FILES} are read). Point it at the pack's own folder.")
    roles: dict[str, list[Path]] = {DETECTOR: [], RECOGNISER: []}
    skipped = []
    for f in files:
        size = f.stat().st_size
        if size > MAX_ONNX_BYTES:
            skipped.append(f"{f.name} ({size / 2**30:.1f} GiB, larger than any face model)")
            continue
        try:
            role = onnx_role(f, session_of)
        except Exception as e:  # onnxruntime refuses damaged files with its own error types
            skipped.append(f"{f.name} (unreadable: {str(e).splitlines()[0][:160]})")
            continue
        if role is None:
            log.debug("face pack %s: %s is not needed (landmarks or age/gender)", name, f.name)
        else:
            roles[role].append(f)
    for role in (DETECTOR, RECOGNISER):
        if not roles[role]:
            raise IPAdapterError(
                f"face pack '{name}' ({packs[name]}): no {role} ONNX file found among "
                f"{', '.join(f.name for f in files)}{'; skipped: ' + '; '.join(skipped) if skipped else ''}. A pack "
                "needs the SCRFD detector (det_10g.onnx / scrfd_10g_bnkps.onnx) and the ArcFace recogniser "
                "(w600k_r50.onnx / glintr100.onnx): download the pack again.")
    det, rec = roles[DETECTOR][0], roles[RECOGNISER][0]
    return PackFiles(name, str(det), str(rec))
