"""The 5-point similarity alignment to ArcFace's template, as insightface >= 0.7 ``face_align.norm_crop``.

Landmarks are (left eye, right eye, nose, left mouth corner, right mouth corner) in pixels. The template is
for a 112-pixel crop; a size divisible by 112 scales it, any other size (256) scales it by size/128 and
shifts it right by 8·size/128 (FAMILIES.md §1.5). The transform is the Umeyama least-squares similarity
(scale, rotation, translation) from the landmarks to the template; the crop samples the image bilinearly
through its inverse, black outside, as ``cv2.warpAffine(..., borderValue=0)`` does.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import IPAdapterError

ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def template(size: int) -> np.ndarray:
    """Where the five landmarks go in a ``size`` crop."""
    if size % 112 == 0:
        ratio, shift = size / 112.0, 0.0
    elif size % 128 == 0:
        ratio = size / 128.0
        shift = 8.0 * ratio
    else:
        raise IPAdapterError(f"crop size: {size} is not a multiple of 112 or 128; the ArcFace template is defined "
                             "for those (112, 224, 256, 336, ...).")
    dst = ARCFACE_TEMPLATE * ratio
    dst[:, 0] += shift
    return dst


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of the least-squares similarity taking points ``src`` [n, 2] to ``dst`` (Umeyama 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:  # a reflection fits better: keep a rotation instead
        d[1] = -1
    rot = u @ np.diag(d) @ vt
    var = s0.var(axis=0).sum()
    if var == 0:
        raise IPAdapterError("face landmarks: all five points coincide; the detector output is degenerate.")
    scale = (sig * d).sum() / var
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def warp(image: torch.Tensor, matrix: np.ndarray, size: int) -> torch.Tensor:
    """``image`` [H, W, C] (any float range) seen through the 2x3 ``matrix`` (image -> crop pixels) as a
    [size, size, C] crop, bilinear, zero outside."""
    h, w = image.shape[:2]
    full = np.vstack([matrix, [0, 0, 1]])
    inv = torch.tensor(np.linalg.inv(full)[:2], dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ inv.T  # [size, size, 2] source pixel coordinates
    # align_corners=True: -1 and 1 are the centres of the first and last pixels, as integer pixel coordinates
    grid = torch.stack([2 * pts[..., 0] / max(w - 1, 1) - 1, 2 * pts[..., 1] / max(h - 1, 1) - 1], -1)
    src = image.permute(2, 0, 1)[None].to(torch.float32)
    out = F.grid_sample(src, grid[None].to(torch.float32), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0].permute(1, 2, 0)


def norm_crop(image: torch.Tensor, landmarks: np.ndarray, size: int) -> torch.Tensor:
    """The aligned ``size`` crop of a face with ``landmarks`` [5, 2] from ``image`` [H, W, C]."""
    return warp(image, similarity(landmarks, template(size)), size)
