"""Synthetic face packs for tests/test_face_analysis.py: ONNX files built with ``onnx.helper`` whose inputs and
outputs have the names and shapes of insightface's buffalo_l models, and whose outputs are known, so that what
the face analysis decodes can be checked against values computed by hand.

- ``detector_model``: like det_10g.onnx (SCRFD 10G with landmarks): input ``input.1`` [1, 3, ?, ?], nine outputs
  score_8/16/32 [N_s, 1], bbox_8/16/32 [N_s, 4], kps_8/16/32 [N_s, 10] with N_s = (H/s)·(W/s)·2 anchors, row by
  row, two per cell. The outputs are constant tables (``Face`` rows put a face on one anchor, every other anchor
  scores 0), sliced to the input's size, so a face keeps its cell at every detector size. With
  ``red_stride`` the scores of that stride are instead the mean of the network's channel 0 over each cell: the
  score of a uniform cell of red value r is (r - 127.5) / 128 when the network gets RGB normalised that way.
- ``recogniser_model``: like w600k_r50.onnx: input ``input.1`` [None, 3, 112, 112], one output [None, 512], a
  fixed random linear map of the crop, ``embedding(crop)`` says by hand (numpy) what it gives. It is factored
  (crop rows by U, columns by V) rather than one [37632, 512] matrix, which would make a 77 MB file per pack.
- ``landmark_model``: like 1k3d68.onnx / 2d106det.onnx ([1, 3, 192, 192] in, one output), not needed by FaceID.
- ``write_pack``: a pack folder as users have them, ``<root>/models/<name>/`` (or ``<name>/<name>/``, as the
  antelopev2 zip unpacks).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDES = (8, 16, 32)
MAX_SIZE = 640  # the constant tables cover a 640 input; smaller detector sizes take their top-left part
OPSET = 17
IR_VERSION = 8
FACE = 112
# the recogniser's random factors: embedding = flatten(((X @ V).T @ U)), X the crop as [3·112, 112]
_rng = np.random.default_rng(20240611)
REC_U = (_rng.standard_normal((3 * FACE, 16)) / np.sqrt(3 * FACE)).astype(np.float32)
REC_V = (_rng.standard_normal((FACE, 32)) / np.sqrt(FACE)).astype(np.float32)


@dataclass(frozen=True)
class Face:
    """One anchor of the detector's tables: cell (row, col) of ``stride``, anchor 0 or 1, its score, box
    distances (left, top, right, bottom) and five landmark offsets (x, y) from the cell's centre, in strides."""

    stride: int
    row: int
    col: int
    anchor: int = 0
    score: float = 0.9
    box: tuple = (2.0, 2.0, 2.0, 2.0)
    kps: tuple = (-1.0, -1.0, 1.0, -1.0, 0.0, 0.0, -1.0, 1.0, 1.0, 1.0)

    @property
    def centre(self) -> tuple[float, float]:
        return float(self.col * self.stride), float(self.row * self.stride)


def face_at(stride: int, row: int, col: int, landmarks, box, score: float = 0.9, anchor: int = 0) -> Face:
    """The Face whose decoded landmarks [5, 2] and box (x1, y1, x2, y2) are these, in detector-input pixels."""
    cx, cy = col * stride, row * stride
    pts = np.asarray(landmarks, np.float64)
    kps = ((pts - [cx, cy]) / stride).reshape(-1)
    x1, y1, x2, y2 = box
    dist = ((cx - x1) / stride, (cy - y1) / stride, (x2 - cx) / stride, (y2 - cy) / stride)
    return Face(stride, row, col, anchor, score, tuple(float(d) for d in dist), tuple(float(k) for k in kps))


def tables(faces=()) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """stride -> (scores [G, G, 2, 1], boxes [G, G, 2, 4], landmarks [G, G, 2, 10]) for a 640 input."""
    out = {}
    for s in STRIDES:
        g = MAX_SIZE // s
        score = np.zeros((g, g, 2, 1), np.float32)
        box = np.ones((g, g, 2, 4), np.float32)
        kps = np.tile(np.array(Face(s, 0, 0).kps, np.float32), (g, g, 2, 1))
        out[s] = (score, box, kps)
    for f in faces:
        score, box, kps = out[f.stride]
        score[f.row, f.col, f.anchor] = f.score
        box[f.row, f.col, f.anchor] = f.box
        kps[f.row, f.col, f.anchor] = f.kps
    return out


def _const(name: str, array) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array), name + "_v"))


def detector_model(faces=(), red_stride: int | None = None) -> onnx.ModelProto:
    """A det_10g-like detector whose outputs are the ``tables`` of ``faces`` (see the module docstring)."""
    nodes = [helper.make_node("Shape", ["input.1"], ["shape"]),
             _const("hw_start", np.array([2], np.int64)), _const("hw_end", np.array([4], np.int64)),
             helper.make_node("Slice", ["shape", "hw_start", "hw_end"], ["hw"]),
             _const("zeros2", np.array([0, 0], np.int64)), _const("axes01", np.array([0, 1], np.int64))]
    outputs = {}
    for s, (score, box, kps) in tables(faces).items():
        nodes += [_const(f"stride{s}", np.array([s], np.int64)),
                  helper.make_node("Div", ["hw", f"stride{s}"], [f"cells{s}"])]
        for kind, table in (("score", score), ("bbox", box), ("kps", kps)):
            width = table.shape[-1]
            name = f"{kind}_{s}"
            source = f"{name}_table"
            if kind == "score" and s == red_stride:
                # mean of channel 0 over each s x s cell, the same value for the cell's two anchors
                nodes += [helper.make_node("AveragePool", ["input.1"], [f"pool{s}"], kernel_shape=[s, s],
                                           strides=[s, s]),
                          _const(f"c0_start{s}", np.array([0], np.int64)), _const(f"c0_end{s}", np.array([1], np.int64)),
                          _const(f"c0_axis{s}", np.array([1], np.int64)),
                          helper.make_node("Slice", [f"pool{s}", f"c0_start{s}", f"c0_end{s}", f"c0_axis{s}"],
                                           [f"red{s}"]),
                          helper.make_node("Transpose", [f"red{s}"], [f"red_t{s}"], perm=[2, 3, 0, 1]),
                          helper.make_node("Concat", [f"red_t{s}", f"red_t{s}"], [f"{name}_cells"], axis=2)]
            else:
                nodes += [_const(source, table),
                          helper.make_node("Slice", [source, "zeros2", f"cells{s}", "axes01"], [f"{name}_cells"])]
            nodes += [_const(f"{name}_shape", np.array([-1, width], np.int64)),
                      helper.make_node("Reshape", [f"{name}_cells", f"{name}_shape"], [name])]
            outputs[name] = width
    order = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in STRIDES]
    graph = helper.make_graph(
        nodes, "scrfd_like",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"n{n.split('_')[1]}", outputs[n]]) for n in order])
    return _model(graph)


def recogniser_model() -> onnx.ModelProto:
    """A w600k_r50-like recogniser: [None, 3, 112, 112] -> [None, 512], the linear map ``embedding`` computes."""
    nodes = [_const("rows_shape", np.array([-1, 3 * FACE, FACE], np.int64)),
             helper.make_node("Reshape", ["input.1", "rows_shape"], ["rows"]),
             _const("V", REC_V), helper.make_node("MatMul", ["rows", "V"], ["xv"]),
             helper.make_node("Transpose", ["xv"], ["xv_t"], perm=[0, 2, 1]),
             _const("U", REC_U), helper.make_node("MatMul", ["xv_t", "U"], ["xvu"]),
             helper.make_node("Flatten", ["xvu"], ["683"], axis=1)]
    graph = helper.make_graph(
        nodes, "arcface_like",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, FACE, FACE])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])])
    return _model(graph)


def embedding(crop) -> np.ndarray:
    """By hand, what ``recogniser_model`` gives for one aligned crop [112, 112, 3] of 0..255 RGB values: the
    crop read as (x - 127.5) / 127.5, channels first, through the fixed linear map, in float64."""
    x = (np.asarray(crop, np.float64) - 127.5) / 127.5
    rows = x.transpose(2, 0, 1).reshape(3 * FACE, FACE)
    return ((rows @ REC_V.astype(np.float64)).T @ REC_U.astype(np.float64)).reshape(-1)


def landmark_model(size: int = 192, width: int = 212) -> onnx.ModelProto:
    """A 2d106det-like landmark model ([1, 3, 192, 192] -> [1, 212]), which FaceID does not need."""
    w = np.full((3, width), 0.01, np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             _const("W", w), helper.make_node("MatMul", ["flat", "W"], ["fc1"])]
    graph = helper.make_graph(nodes, "landmarks_like",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, width])])
    return _model(graph)


def _model(graph) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="face_packs")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_pack(root, name: str = "buffalo_l", nested: bool = False, faces=(), red_stride: int | None = None,
               detector: str | None = "det_10g.onnx", recogniser: str | None = "w600k_r50.onnx",
               landmarks: str | None = "2d106det.onnx", extra_files: dict | None = None) -> Path:
    """Write a pack into ``root``/models/``name``/ (``name``/``name``/ when ``nested``) and return that folder.
    ``detector`` / ``recogniser`` / ``landmarks`` are file names (None leaves the model out); ``extra_files``
    maps more file names to their bytes (a damaged .onnx, say)."""
    folder = Path(root) / "models" / name
    if nested:
        folder = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    if detector:
        onnx.save(detector_model(faces, red_stride), str(folder / detector))
    if recogniser:
        onnx.save(recogniser_model(), str(folder / recogniser))
    if landmarks:
        onnx.save(landmark_model(), str(folder / landmarks))
    for file, data in (extra_files or {}).items():
        (folder / file).write_bytes(data)
    return folder


# ---------------------------------------------------------------- helpers of the face analysis tests

CPU = ["CPUExecutionProvider"]
# insightface's utils/face_align.py, arcface_dst: where the landmarks go in a 112 crop
ARCFACE_112 = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]


def open_session(path):
    import onnxruntime as ort  # noqa: PLC0415

    return ort.InferenceSession(str(path), providers=CPU)


def reference_matrix(src, dst) -> np.ndarray:
    """scikit-image's least-squares similarity, what insightface's estimate_norm uses."""
    from skimage.transform import SimilarityTransform  # noqa: PLC0415

    return SimilarityTransform.from_estimate(np.asarray(src), np.asarray(dst)).params[:2]


def similar(points, scale: float, angle: float, shift) -> np.ndarray:
    """``points`` [n, 2] rotated by ``angle`` (radians), scaled and shifted: a similarity by hand."""
    c, s = np.cos(angle), np.sin(angle)
    return np.asarray(points, np.float64) @ (scale * np.array([[c, -s], [s, c]])).T + np.asarray(shift, np.float64)


def smooth_picture(h: int, w: int, phase: float = 0.0) -> np.ndarray:
    """A smooth uint8 RGB picture (interpolation differences stay small), each channel different."""
    yy, xx = np.mgrid[:h, :w]
    return np.stack([127 + 100 * np.sin(xx / 23 + c + phase) * np.cos(yy / 31 - c) for c in range(3)],
                    -1).round().astype(np.uint8)


def as_images(*pictures: np.ndarray):
    import torch  # noqa: PLC0415

    """uint8 [H, W, 3] pictures -> a ComfyUI IMAGE batch (0..1)."""
    return torch.stack([torch.from_numpy(p).float() / 255 for p in pictures])


def analyzer(root, faces=(), red_stride=None):
    """A FaceAnalyzer (CPU) over a synthetic buffalo_l pack written into ``root``."""
    from ipadapter_ext.ip_adapter_core.faces.analysis import FaceAnalyzer  # noqa: PLC0415
    write_pack(root, faces=faces, red_stride=red_stride)
    return FaceAnalyzer("buffalo_l", "CPU", search=[root])
