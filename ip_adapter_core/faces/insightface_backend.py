"""The insightface package as an optional backend of the face analysis, for users who have it installed.

Same packs (``models/insightface/models/<pack>``, found as the default backend finds them), same choice of face,
same FaceSet: only detection and recognition run in insightface's own code (``FaceAnalysis`` with
``det_size=(640, 640)``, its SCRFD ``detect`` and ArcFace ``get``), which reads BGR pictures. The default
backend (analysis.py, onnxruntime alone) computes the same; tests/test_face_backends.py compares them on the
tests' synthetic packs. insightface's code and its models' licences are its own: nothing here ships or
downloads them, and the pack folder is passed as a path, so insightface never fetches a pack.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import IPAdapterError
from .analysis import DETECTOR_SIZE, RETRY_SIZES, FaceAnalyzer, providers_for, session
from .detect import Detection
from .packs import pack_files

log = logging.getLogger("ipadapter")

ONNXRUNTIME, INSIGHTFACE = "onnxruntime", "insightface"


def _face_analysis_class():
    try:
        from insightface.app import FaceAnalysis  # noqa: PLC0415 - optional
    except ImportError as e:
        raise IPAdapterError(
            f"backend: insightface is not installed in ComfyUI's Python ({e}). The default backend, onnxruntime, "
            "reads the same pack files; or install insightface there: python -m pip install insightface") from e
    return FaceAnalysis


class InsightFaceAnalyzer(FaceAnalyzer):
    """FaceAnalyzer whose detection and recognition run in the insightface package."""

    def __init__(self, pack: str, provider: str = "auto", search=None):
        face_analysis = _face_analysis_class()
        self.providers = providers_for(provider)
        # the same pack check as the default backend (a detector and a recogniser, by what their graphs take)
        files = pack_files(pack, lambda p: session(p, ["CPUExecutionProvider"]), search)
        self.pack, self.files = pack, files
        folder = Path(files.detector).parent
        try:
            self.app = face_analysis(name=str(folder), root=str(folder), providers=self.providers,
                                     allowed_modules=["detection", "recognition"])
            self.app.prepare(ctx_id=0, det_size=(DETECTOR_SIZE, DETECTOR_SIZE))
        except Exception as e:  # insightface raises AssertionError and others on packs it cannot use
            raise IPAdapterError(f"backend insightface: it could not open the pack {pack!r} in {folder} "
                                 f"({type(e).__name__}: {e}). The onnxruntime backend reads the same files.") from e
        if "recognition" not in self.app.models:
            raise IPAdapterError(f"backend insightface: no recognition model in {folder}; the pack needs an ArcFace "
                                 "recogniser (w600k_r50.onnx in buffalo_l, glintr100.onnx in antelopev2).")
        log.info("face pack %s with insightface (%s)", pack, ", ".join(self.providers))

    def detect(self, picture: torch.Tensor, threshold: float = 0.5) -> Detection:
        bgr = _bgr(picture)
        det = self.app.det_model
        for size in (DETECTOR_SIZE, *RETRY_SIZES):
            det.det_thresh = float(threshold)
            boxes, kps = det.detect(bgr, input_size=(size, size), max_num=0, metric="default")
            if len(boxes):
                break
            log.info("face analysis (insightface): no face at %d", size)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
        kps = np.asarray(kps, np.float64).reshape(-1, 5, 2)
        return Detection(boxes[:, :4], boxes[:, 4], kps)

    def embed(self, picture: torch.Tensor, landmarks: np.ndarray) -> torch.Tensor:
        from insightface.app.common import Face  # noqa: PLC0415 - optional

        bgr = _bgr(picture)
        rec = self.app.models["recognition"]
        out = [rec.get(bgr, Face(kps=np.asarray(k, np.float32))) for k in landmarks]
        return torch.from_numpy(np.stack(out).astype(np.float32)).reshape(len(out), -1)


def _bgr(picture: torch.Tensor) -> np.ndarray:
    """[H, W, 3] RGB 0..255 (already whole numbers) -> uint8 BGR, what insightface reads (cv2.imread's order)."""
    return np.ascontiguousarray(picture.numpy().astype(np.uint8)[..., ::-1])


BACKENDS = {ONNXRUNTIME: FaceAnalyzer, INSIGHTFACE: InsightFaceAnalyzer}


def face_analyzer(pack: str, provider: str = "auto", backend: str = ONNXRUNTIME, search=None) -> FaceAnalyzer:
    """The face analysis of ``pack`` with ``backend`` (a key of BACKENDS)."""
    if backend not in BACKENDS:
        raise IPAdapterError(f"backend: expected one of {', '.join(BACKENDS)}; got {backend!r}.")
    return BACKENDS[backend](pack, provider, search)
