"""What the face analysis found, drawn on the pictures: a box per face (green: chosen, grey: not) and its
five landmarks (eyes red, nose green, mouth corners blue), so a user sees which face FaceID reads."""
from __future__ import annotations

import numpy as np
import torch

CHOSEN, OTHER = (0.1, 0.9, 0.2), (0.6, 0.6, 0.6)
LANDMARK_COLOURS = ((1, 0.1, 0.1), (1, 0.1, 0.1), (0.1, 1, 0.1), (0.2, 0.4, 1), (0.2, 0.4, 1))


def _box(img, box, colour, width):
    h, w = img.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, x2 = sorted((max(0, min(w - 1, x1)), max(0, min(w - 1, x2))))
    y1, y2 = sorted((max(0, min(h - 1, y1)), max(0, min(h - 1, y2))))
    c = torch.tensor(colour, dtype=img.dtype)
    img[y1:y1 + width, x1:x2 + 1] = c
    img[max(y2 - width + 1, 0):y2 + 1, x1:x2 + 1] = c
    img[y1:y2 + 1, x1:x1 + width] = c
    img[y1:y2 + 1, max(x2 - width + 1, 0):x2 + 1] = c


def _dot(img, x, y, colour, r):
    h, w = img.shape[:2]
    x, y = int(round(x)), int(round(y))
    img[max(0, y - r):min(h, y + r + 1), max(0, x - r):min(w, x + r + 1)] = torch.tensor(colour, dtype=img.dtype)


def annotate(images: torch.Tensor, found: list[tuple[np.ndarray, np.ndarray]], chosen: list[set[int]]) -> torch.Tensor:
    """``images`` [B, H, W, C] with every found face drawn: ``found[b]`` = (boxes [n, 4], landmarks [n, 5, 2])
    of picture b, ``chosen[b]`` the indices the face set took."""
    out = images[..., :3].clone().float()
    for b, (boxes, kps) in enumerate(found):
        img = out[b]
        size = max(1, round(max(img.shape[:2]) / 256))
        for i in range(len(boxes)):
            _box(img, boxes[i], CHOSEN if i in chosen[b] else OTHER, size)
            for (x, y), colour in zip(kps[i], LANDMARK_COLOURS):
                _dot(img, x, y, colour, size + 1)
    return out
