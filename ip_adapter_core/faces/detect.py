"""SCRFD face detection (insightface ``model_zoo/scrfd.py``), decoded with numpy.

The picture is letterboxed into the detector's square: scaled to fit with its aspect ratio kept, pasted at
the top left, black elsewhere; the network reads RGB as (x - 127.5) / 128. For each stride (8, 16, 32) it
gives per anchor (2 per cell) a score, four distances to the box sides and ten landmark offsets, all in
units of the stride from the anchor centre. Boxes scoring at least ``threshold`` are kept, scaled back to the
picture and thinned by non-maximum suppression (IoU 0.4, areas with +1 as insightface computes them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
INPUT_MEAN, INPUT_STD = 127.5, 128.0
SCORE_THRESHOLD = 0.5
NMS_IOU = 0.4


@dataclass(frozen=True)
class Detection:
    """Faces of one picture, best score first: boxes [n, 4] (x1, y1, x2, y2), scores [n], landmarks [n, 5, 2]."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray


def letterbox(image: torch.Tensor, size: int) -> tuple[np.ndarray, float]:
    """``image`` [H, W, 3] of 0..255 values -> ([1, 3, size, size] network input, scale picture -> input)."""
    h, w = image.shape[:2]
    if h / w > 1.0:
        new_h, new_w = size, int(size / (h / w))
    else:
        new_w, new_h = size, int(size * (h / w))
    scale = new_h / h
    resized = F.interpolate(image.permute(2, 0, 1)[None].float(), size=(max(new_h, 1), max(new_w, 1)),
                            mode="bilinear", align_corners=False)
    resized = resized.round().clamp(0, 255)  # the reference resizes uint8 pictures
    canvas = torch.zeros(1, 3, size, size)
    canvas[:, :, :new_h, :new_w] = resized
    return ((canvas - INPUT_MEAN) / INPUT_STD).numpy().astype(np.float32), scale


def anchor_centres(height: int, width: int, stride: int) -> np.ndarray:
    """[height·width·2, 2] (x, y) centres, row by row, each twice (two anchors per cell)."""
    ys, xs = np.mgrid[:height, :width]
    centres = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, ANCHORS_PER_CELL, axis=0)


def decode(outputs: list[np.ndarray], input_size: int, threshold: float = SCORE_THRESHOLD):
    """The detector's 9 outputs (scores x3, boxes x3, landmarks x3, strides 8/16/32) -> (boxes, scores,
    landmarks) above ``threshold`` in input pixels, unsorted."""
    n = len(STRIDES)
    if len(outputs) != 3 * n:
        raise ValueError(f"the detector gave {len(outputs)} outputs; SCRFD with landmarks gives {3 * n}")
    boxes, scores, kps = [], [], []
    for i, stride in enumerate(STRIDES):
        s, b, k = (np.asarray(outputs[i + j * n]) for j in range(3))
        if s.ndim == 3:  # exported with a batch axis
            s, b, k = s[0], b[0], k[0]
        side = input_size // stride
        centres = anchor_centres(side, side, stride)
        s = s.reshape(-1)
        if len(s) != len(centres):
            raise ValueError(f"stride {stride}: {len(s)} scores for {len(centres)} anchors")
        b = b.reshape(-1, 4) * stride
        k = k.reshape(-1, 10) * stride
        keep = np.where(s >= threshold)[0]
        c = centres[keep]
        boxes.append(np.concatenate([c - b[keep, :2], c + b[keep, 2:]], 1))
        kps.append((np.repeat(c, 5, axis=0).reshape(-1, 5, 2) + k[keep].reshape(-1, 5, 2)))
        scores.append(s[keep])
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(kps)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou]
    return keep


def detect(session, image: torch.Tensor, size: int = 640, threshold: float = SCORE_THRESHOLD) -> Detection:
    """Faces in ``image`` [H, W, 3] (0..255) by the SCRFD ``session`` at input ``size``, best score first."""
    blob, scale = letterbox(image, size)
    name = session.get_inputs()[0].name
    outputs = session.run(None, {name: blob})
    boxes, scores, kps = decode(outputs, size, threshold)
    boxes, kps = boxes / scale, kps / scale  # before NMS, as insightface: its +1 areas make IoU scale-dependent
    keep = nms(boxes, scores)
    return Detection(boxes[keep], scores[keep], kps[keep])
