"""Face alignment and detection (ip_adapter_core/faces/align.py, detect.py) by hand and against the libraries
insightface itself uses: the Umeyama similarity equals scikit-image's SimilarityTransform, the templates of every
crop size are the ArcFace ones, the crops equal OpenCV's warpAffine and put the landmarks on the template;
anchors, decoding, non-maximum suppression and the letterbox as insightface's scrfd.py, on the synthetic
detector of tests/support/face_packs.py whose outputs are known. The real-photograph check of the alignment is
test_face_alignment_real.py.
"""
from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
from ipadapter_ext.ip_adapter_core.faces import align, detect

from support.face_packs import ARCFACE_112, CPU, Face, detector_model, face_at, reference_matrix, similar


# ---------------------------------------------------------------------------------------------- align


def test_similarity_equals_scikit_image():
    rng = np.random.default_rng(1)
    for trial in range(60):
        src = rng.uniform(0, 800, (5, 2))
        if trial % 3 == 0:
            dst = align.template(112)
        elif trial % 3 == 1:  # near a similarity, with noise
            dst = similar(src, rng.uniform(0.2, 3), rng.uniform(-3, 3), rng.uniform(-200, 200, 2))
            dst += rng.normal(0, 3, dst.shape)
        else:  # a mirror image: the best fit would reflect; both keep a rotation
            dst = src * [-1, 1] + rng.normal(0, 5, src.shape)
        np.testing.assert_allclose(align.similarity(src, dst), reference_matrix(src, dst), rtol=0, atol=1e-9,
                                   err_msg=f"trial {trial}")


def test_similarity_refuses_coincident_landmarks():
    with pytest.raises(IPAdapterError, match="all five points coincide"):
        align.similarity(np.full((5, 2), 7.0), align.template(112))


def test_templates_by_hand():
    np.testing.assert_array_equal(align.template(112), ARCFACE_112)
    t224, t256, t336 = align.template(224), align.template(256), align.template(336)
    # 224 = 2 x 112; 336 = 3 x 112; 256 is not a multiple of 112: x2 (256/128) and 16 (8 x 2) to the right
    np.testing.assert_allclose(t224[0], [76.5892, 103.3926], atol=1e-12)
    np.testing.assert_allclose(t224[4], [141.4598, 184.4082], atol=1e-12)
    np.testing.assert_allclose(t256[0], [92.5892, 103.3926], atol=1e-12)
    np.testing.assert_allclose(t256[3], [99.0986, 184.7310], atol=1e-12)
    np.testing.assert_allclose(t336[2], [168.0756, 215.2098], atol=1e-12)
    np.testing.assert_allclose(t336[1], [220.5954, 154.5042], atol=1e-12)
    # and nothing shared: changing one table leaves the template alone
    t224[0, 0] = -1
    assert align.template(224)[0, 0] == pytest.approx(76.5892)
    with pytest.raises(IPAdapterError, match="100 is not a multiple of 112 or 128"):
        align.template(100)


@pytest.mark.parametrize("size", [112, 224, 256])
def test_landmarks_land_on_the_template(size):
    rng = np.random.default_rng(size)
    for _ in range(10):
        scale, angle, shift = rng.uniform(0.5, 4), rng.uniform(-1, 1), rng.uniform(0, 500, 2)
        landmarks = similar(ARCFACE_112, scale, angle, shift)
        m = align.similarity(landmarks, align.template(size))
        moved = landmarks @ m[:, :2].T + m[:, 2]
        np.testing.assert_allclose(moved, align.template(size), rtol=0, atol=1e-6)
        # the matrix by hand: the inverse rotation, scaled by size/112 / scale (plus 16 for 256)
        ratio = size / 112 if size % 112 == 0 else size / 128
        c, s = np.cos(-angle), np.sin(-angle)
        np.testing.assert_allclose(m[:, :2], ratio / scale * np.array([[c, -s], [s, c]]), rtol=0, atol=1e-9)


@pytest.mark.parametrize("size", [112, 224, 256])
def test_crops_equal_opencv(size):
    """warp / norm_crop against cv2.warpAffine (bilinear, black outside) on a random picture, crops partly outside
    the picture included. cv2 rounds to 8 bits (and older builds quantise the weights to 1/32)."""
    rng = np.random.default_rng(size + 1)
    picture = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    for trial in range(6):
        landmarks = similar(ARCFACE_112, rng.uniform(0.5, 3), rng.uniform(-0.8, 0.8), rng.uniform(-50, 350, 2))
        m = reference_matrix(landmarks, align.template(size))
        ref = cv2.warpAffine(picture, m, (size, size), borderValue=0.0).astype(np.float64)
        ours = align.norm_crop(torch.from_numpy(picture).float(), landmarks, size)
        assert ours.shape == (size, size, 3)
        via_warp = align.warp(torch.from_numpy(picture).float(), m, size)
        torch.testing.assert_close(ours, via_warp, rtol=0, atol=1e-3)
        diff = np.abs(ours.double().numpy() - ref)
        assert diff.mean() < 1 and diff.max() < 8, f"trial {trial}: mean {diff.mean():.3f}, max {diff.max():.3f}"


# ---------------------------------------------------------------------------------------------- detect


def test_anchor_centres_by_hand():
    got = detect.anchor_centres(2, 3, 8)
    want = [[0, 0], [0, 0], [8, 0], [8, 0], [16, 0], [16, 0], [0, 8], [0, 8], [8, 8], [8, 8], [16, 8], [16, 8]]
    np.testing.assert_array_equal(got, want)
    assert detect.anchor_centres(20, 20, 32).shape == (800, 2)


def hand_outputs(input_size: int, faces) -> list[np.ndarray]:
    """The nine detector outputs for ``input_size``, zero everywhere but ``faces`` (stride, flat anchor, score,
    box distances, landmark offsets)."""
    scores, boxes, kps = [], [], []
    for s in detect.STRIDES:
        n = (input_size // s) ** 2 * 2
        scores.append(np.zeros((n, 1), np.float32))
        boxes.append(np.zeros((n, 4), np.float32))
        kps.append(np.zeros((n, 10), np.float32))
    for stride, anchor, score, box, offsets in faces:
        i = detect.STRIDES.index(stride)
        scores[i][anchor], boxes[i][anchor], kps[i][anchor] = score, box, offsets
    return scores + boxes + kps


def test_decode_by_hand():
    offsets = [-1, -0.5, 1, -0.5, 0, 0.25, -0.75, 1, 0.75, 1]
    # stride 16 on a 64 input: 4x4 cells; cell (row 1, col 2), anchor 1 -> flat (1*4+2)*2+1 = 13, centre (32, 16)
    # stride 8: 8x8 cells; cell (row 7, col 0), anchor 0 -> flat 112, centre (0, 56)
    faces = [(16, 13, 0.7, [1, 0.5, 2, 1.5], offsets), (8, 112, 0.5, [0.5, 1, 1, 0.25], offsets),
             (32, 5, 0.3, [1, 1, 1, 1], offsets)]
    outputs = hand_outputs(64, faces)
    boxes, scores, kps = detect.decode(outputs, 64, 0.5)
    # box = centre -/+ distances x stride; landmarks = centre + offsets x stride; 0.5 itself is kept (>=)
    np.testing.assert_allclose(scores, [0.5, 0.7])
    np.testing.assert_allclose(boxes, [[0 - 4, 56 - 8, 0 + 8, 56 + 2], [32 - 16, 16 - 8, 32 + 32, 16 + 24]])
    np.testing.assert_allclose(kps[1], [[16, 8], [48, 8], [32, 20], [20, 32], [44, 32]])
    np.testing.assert_allclose(kps[0], [[-8, 52], [8, 52], [0, 58], [-6, 64], [6, 64]])
    # stride 32 on 64: 2x2 cells; flat 5 = cell (1, 0) anchor 1, centre (0, 32): kept at a lower threshold
    boxes, scores, _ = detect.decode(outputs, 64, 0.25)
    np.testing.assert_allclose(scores, [0.5, 0.7, 0.3])
    np.testing.assert_allclose(boxes[2], [-32, 0, 32, 64])
    # a batch axis ([1, n, k]) is read the same
    batched = detect.decode([o[None] for o in outputs], 64, 0.5)
    np.testing.assert_allclose(batched[0], detect.decode(outputs, 64, 0.5)[0])
    with pytest.raises(ValueError, match="gave 6 outputs"):
        detect.decode(outputs[:6], 64)
    with pytest.raises(ValueError, match="stride 8: 128 scores for 512 anchors"):
        detect.decode(outputs, 128)


def test_nms_by_hand():
    # IoU with +1 areas: A (0,0,9,9) is 10x10 = 100
    boxes = np.array([
        [0, 0, 9, 9],     # A, best
        [5, 0, 14, 9],    # B: inter 5x10 = 50, union 150 -> 0.333, kept
        [2, 0, 11, 9],    # C: inter 8x10 = 80, union 120 -> 0.667, removed by A
        [0, 0, 3, 9],     # D: 4x10 inside A -> 40 / 100 = 0.4 exactly, kept (removed only above 0.4)
        [0, 0, 4, 9],     # E: 5x10 inside A -> 0.5, removed
        [12, 0, 21, 9],   # F: overlaps only C (removed) and B: inter with B 3x10 = 30, union 170 -> kept
        [30, 30, 40, 40],  # G: alone
    ], np.float64)
    scores = np.array([0.9, 0.8, 0.85, 0.7, 0.75, 0.6, 0.1])
    keep = detect.nms(boxes, scores)
    assert keep == [0, 1, 3, 5, 6], keep
    assert detect.nms(boxes[:1], scores[:1]) == [0]
    assert detect.nms(np.zeros((0, 4)), np.zeros(0)) == []


def test_letterbox_by_hand():
    portrait = torch.full((300, 200, 3), 200.0)  # H x W
    blob, scale = detect.letterbox(portrait, 640)
    # taller than wide: height 640, width int(640 / 1.5) = 426; scale 640 / 300
    assert blob.shape == (1, 3, 640, 640) and blob.dtype == np.float32
    assert scale == pytest.approx(640 / 300)
    np.testing.assert_allclose(blob[..., :426], (200 - 127.5) / 128)
    np.testing.assert_allclose(blob[..., 426:], -127.5 / 128)  # black padding on the right

    landscape = torch.full((200, 300, 3), 200.0)
    blob, scale = detect.letterbox(landscape, 640)
    # wider: width 640, height int(640 * 2/3) = 426; scale 426 / 200 (not 640 / 300)
    assert scale == pytest.approx(426 / 200)
    np.testing.assert_allclose(blob[:, :, :426], (200 - 127.5) / 128)
    np.testing.assert_allclose(blob[:, :, 426:], -127.5 / 128)  # at the bottom

    # channels stay in order (RGB in, RGB out), a picture at the detector's size is unchanged
    colours = torch.tensor([10.0, 100.0, 250.0]).expand(640, 640, 3)
    blob, scale = detect.letterbox(colours, 640)
    assert scale == 1.0
    np.testing.assert_allclose(blob[0, :, 5, 5], (np.array([10, 100, 250]) - 127.5) / 128)


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (1000, 700), (90, 120)])
def test_letterbox_resizes_as_opencv(shape):
    """insightface resizes with cv2.resize (bilinear); the letterbox's picture part equals it within rounding."""
    picture = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    blob, scale = detect.letterbox(torch.from_numpy(picture), 640)
    h, w = shape
    new_w, new_h = (int(640 / (h / w)), 640) if h > w else (640, int(640 * (h / w)))
    assert scale == pytest.approx(new_h / h)
    ref = cv2.resize(picture, (new_w, new_h)).astype(np.float64)
    ours = blob[0].transpose(1, 2, 0)[:new_h, :new_w].astype(np.float64) * 128 + 127.5
    diff = np.abs(ours - ref)
    assert diff.mean() < 0.5 and diff.max() <= 1.01, f"mean {diff.mean():.3f}, max {diff.max():.3f}"


def test_detect_scales_boxes_back_to_the_picture():
    faces = [Face(16, 5, 10, 0, 0.7, (2, 3, 4, 5)), Face(32, 8, 12, 1, 0.9, (1, 1, 1, 1))]
    session = ort.InferenceSession(detector_model(faces).SerializeToString(), providers=CPU)
    picture = torch.zeros(320, 480, 3)
    found = detect.detect(session, picture, 640)
    scale = 426 / 320  # wider than tall: width 640, height int(640 * 320 / 480) = 426
    # by hand in the detector's pixels: stride 32 cell (8, 12) centre (384, 256); stride 16 cell (5, 10) (160, 80)
    np.testing.assert_allclose(found.scores, [0.9, 0.7], rtol=1e-6)
    np.testing.assert_allclose(found.boxes * scale, [[352, 224, 416, 288], [128, 32, 224, 160]], rtol=1e-5)
    offsets = np.array(Face(8, 0, 0).kps).reshape(5, 2)
    np.testing.assert_allclose(found.landmarks * scale, [[384, 256] + 32 * offsets, [160, 80] + 16 * offsets],
                               rtol=1e-5)
    # at 320 the stride 32 table is 10x10: cell (8, 12) is outside, only the other face is left
    found = detect.detect(session, picture, 320)
    np.testing.assert_allclose(found.scores, [0.7], rtol=1e-6)
    np.testing.assert_allclose(found.boxes * (213 / 320), [[128, 32, 224, 160]], rtol=1e-5)


def test_nms_runs_on_picture_pixels_as_insightface():
    """insightface's SCRFD.detect divides the boxes by det_scale first and runs nms on them (areas with +1 in
    picture pixels); the detect.py docstring says the same. The +1 makes IoU depend on the scale: two boxes of
    40x40 detector pixels 18 apart, in a 160x160 picture (scale 4) are 10.75 pixels wide there (+1), overlapping
    6.25: IoU 6.25 / 15.25 = 0.41 > 0.4, so insightface keeps one face; in detector pixels 22 / 58 = 0.38 keeps
    both."""
    a = face_at(8, 3, 3, np.full((5, 2), 20.0) + [[-8, -8], [8, -8], [0, 0], [-6, 8], [6, 8]], (0, 0, 39, 39), 0.9)
    b = face_at(8, 3, 5, np.full((5, 2), 38.0) + [[-8, -8], [8, -8], [0, 0], [-6, 8], [6, 8]], (18, 0, 57, 39), 0.8)
    session = ort.InferenceSession(detector_model([a, b]).SerializeToString(), providers=CPU)
    found = detect.detect(session, torch.zeros(160, 160, 3), 640)
    assert len(found.scores) == 1, (
        f"kept {len(found.scores)} boxes {found.boxes.tolist()}: insightface keeps 1 (nms on picture pixels)")
