"""Detect, choose, align and recognise: a face pack's two ONNX models run with onnxruntime.

As insightface's ``FaceAnalysis.get`` with ``det_size=(640, 640)``: faces come best score first; each is
aligned to the ArcFace template at 112 pixels and its embedding is the recogniser's output for the crop read
as RGB (x - 127.5) / 127.5. ComfyUI pictures are RGB already, and both networks read RGB (insightface swaps
its BGR input back with ``swapRB``), so no channel swap happens anywhere. Pictures are quantised to 8 bits
first, as the files the reference reads are.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..errors import IPAdapterError
from ..input_bounds import check_image_batch
from .align import norm_crop
from .detect import SCORE_THRESHOLD, detect
from .face_set import FaceSet
from .packs import pack_files

log = logging.getLogger("ipadapter")

RECOGNISER_SIZE = 112
RECOGNISER_MEAN = RECOGNISER_STD = 127.5
DETECTOR_SIZE = 640
# When no face is found at 640 (a face filling the picture can be too large for the detector's anchors), the
# popular extension tries again at smaller sizes; so do we, and say so in the log.
RETRY_SIZES = (576, 512, 448, 384, 320)
CHOICES = ("largest", "most confident", "by index", "all")
PROVIDERS = {"auto": None, "CPU": "CPUExecutionProvider", "CUDA": "CUDAExecutionProvider",
             "ROCm": "ROCMExecutionProvider", "DirectML": "DmlExecutionProvider",
             "OpenVINO": "OpenVINOExecutionProvider", "CoreML": "CoreMLExecutionProvider"}
MAX_FACES_PER_IMAGE = 64

_SESSIONS: OrderedDict = OrderedDict()
_LOCK = threading.Lock()
SESSION_CACHE = 8


def onnxruntime():
    """The onnxruntime module, or IPAdapterError saying how to install it."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise IPAdapterError("face analysis needs the onnxruntime package, which is not installed. Install the "
                             "extension's requirements (pip install -r requirements.txt), or onnxruntime-gpu.") from e
    return ort


def providers_for(choice: str) -> list[str]:
    """onnxruntime providers for a choice of PROVIDERS; 'auto' takes CUDA when onnxruntime-gpu offers it."""
    ort = onnxruntime()
    available = ort.get_available_providers()
    if choice not in PROVIDERS:
        raise IPAdapterError(f"provider: expected one of {', '.join(PROVIDERS)}; got {choice!r}.")
    if choice == "auto":
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    wanted = PROVIDERS[choice]
    if wanted not in available:
        raise IPAdapterError(f"provider: {choice} ({wanted}) is not offered by this onnxruntime (available: "
                             f"{', '.join(available)}). Install the onnxruntime build for it (e.g. onnxruntime-gpu "
                             "for CUDA), or choose auto / CPU.")
    return [wanted] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])


def session(path, providers: list[str]):
    """A cached onnxruntime session for ``path`` (re-opened when the file changes)."""
    ort = onnxruntime()
    st = Path(path).stat()
    key = (str(path), st.st_size, st.st_mtime_ns, tuple(providers))
    with _LOCK:
        if key in _SESSIONS:
            _SESSIONS.move_to_end(key)
            return _SESSIONS[key]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    with _LOCK:
        _SESSIONS[key] = sess
        while len(_SESSIONS) > SESSION_CACHE:
            _SESSIONS.popitem(last=False)
    return sess


class FaceAnalyzer:
    """A face pack's detector and recogniser (socket IPA_FACE_ANALYSIS)."""

    def __init__(self, pack: str, provider: str = "auto", search=None):
        self.providers = providers_for(provider)
        files = pack_files(pack, lambda p: session(p, ["CPUExecutionProvider"]), search)
        self.pack, self.files = pack, files
        self.detector = session(files.detector, self.providers)
        self.recogniser = session(files.recogniser, self.providers)
        log.info("face pack %s: detector %s, recogniser %s (%s)", pack, Path(files.detector).name,
                 Path(files.recogniser).name, ", ".join(self.providers))

    def detect(self, picture: torch.Tensor, threshold: float = SCORE_THRESHOLD):
        """Faces of one picture [H, W, 3] (0..255), retrying at smaller detector sizes when none is found."""
        found = detect(self.detector, picture, DETECTOR_SIZE, threshold)
        for size in RETRY_SIZES:
            if len(found.scores):
                break
            log.info("face analysis: no face at %d, trying %d", DETECTOR_SIZE, size)
            found = detect(self.detector, picture, size, threshold)
        return found

    def embed(self, picture: torch.Tensor, landmarks: np.ndarray) -> torch.Tensor:
        """ArcFace embeddings [n, 512] of the faces with ``landmarks`` [n, 5, 2] in ``picture`` [H, W, 3] (0..255)."""
        crops = [norm_crop(picture, kps, RECOGNISER_SIZE).round().clamp(0, 255) for kps in landmarks]
        blob = (torch.stack(crops).permute(0, 3, 1, 2) - RECOGNISER_MEAN) / RECOGNISER_STD
        name = self.recogniser.get_inputs()[0].name
        out = np.concatenate([self.recogniser.run(None, {name: blob[i:i + 1].numpy().astype(np.float32)})[0]
                              for i in range(len(crops))])
        return torch.from_numpy(out.astype(np.float32)).reshape(len(crops), -1)

    def analyse(self, images: torch.Tensor, choose: str = "largest", index: int = 0,
                threshold: float = SCORE_THRESHOLD):
        """Faces of every picture of ``images`` [B, H, W, 3|4] (0..1): (FaceSet of the chosen faces, and per picture
        (boxes, landmarks) of every face found with the indices chosen, for drawing)."""
        check_image_batch(images, "image")
        if choose not in CHOICES:
            raise IPAdapterError(f"choose: expected one of {', '.join(CHOICES)}; got {choose!r}.")
        emb, kps, boxes, scores, where, drawn, chosen = [], [], [], [], [], [], []
        for b in range(images.shape[0]):
            picture = (images[b, ..., :3].float() * 255).round().clamp(0, 255)
            found = self.detect(picture, threshold)
            n = len(found.scores)
            drawn.append((found.boxes, found.landmarks))
            if n == 0:
                raise IPAdapterError(
                    f"image: no face found in image {b} of the batch ({images.shape[2]}x{images.shape[1]} pixels, "
                    f"pack {self.pack}). Use a picture where the face is clearly visible and upright, crop it closer "
                    "(or less close: a face filling the whole picture is missed too), or lower the threshold.")
            rows = _choose(found, choose, index, b)[:MAX_FACES_PER_IMAGE]
            chosen.append(set(rows))
            emb.append(self.embed(picture, found.landmarks[rows]))
            kps.append(found.landmarks[rows])
            boxes.append(found.boxes[rows])
            scores.append(found.scores[rows])
            where += [b] * len(rows)
        faces = FaceSet(torch.cat(emb), np.concatenate(kps), np.concatenate(boxes), np.concatenate(scores),
                        tuple(where), images, self.pack)
        return faces, drawn, chosen


def _choose(found, choose: str, index: int, picture: int) -> list[int]:
    n = len(found.scores)
    if choose == "all":
        return list(range(n))
    if choose == "most confident":
        return [0]  # faces come best score first, as insightface returns them
    if choose == "largest":
        areas = (found.boxes[:, 2] - found.boxes[:, 0]) * (found.boxes[:, 3] - found.boxes[:, 1])
        return [int(np.argmax(areas))]
    if not 0 <= index < n:
        raise IPAdapterError(f"index: image {picture} has {n} face(s) (numbered 0..{n - 1}, best score first); "
                             f"got {index}. Choose an index below {n}, or 'largest'.")
    return [index]
