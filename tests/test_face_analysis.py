"""The face analysis (ip_adapter_core/faces/analysis.py: insightface's SCRFD detector and ArcFace recogniser run
with onnxruntime, without the insightface package), checked without a host and without the real,
non-commercial weights, on synthetic packs (tests/support/face_packs.py) whose outputs are known: the embedding
is the recogniser's map of the aligned crop computed by hand; the network reads RGB normalised as
(x - 127.5) / 128 (a detector that scores the red channel); the choice of face and its errors; FaceSet; drawing;
providers. Packs: test_face_packs.py; alignment and detection: test_face_align_detect.py.
"""
from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
from ipadapter_ext.ip_adapter_core.faces import align, draw
from ipadapter_ext.ip_adapter_core.faces.analysis import FaceAnalyzer, providers_for
from ipadapter_ext.ip_adapter_core.faces.face_set import FaceSet

from support.face_packs import (ARCFACE_112, analyzer, as_images, embedding, face_at, reference_matrix, similar,
                                smooth_picture, write_pack)

# ---------------------------------------------------------------------------------------------- analysis


def test_the_embedding_is_the_recogniser_map_of_the_aligned_crop(tmp_path):
    """Landmarks on the template shifted by whole pixels: the 112 crop is a plain slice of the picture, so the
    embedding by hand needs no interpolation at all."""
    landmarks = np.array(ARCFACE_112) + [200, 150]
    box = (190.0, 140.0, 330.0, 290.0)
    face = face_at(8, 25, 30, landmarks, box, 0.9)
    picture = smooth_picture(640, 640)
    faces, drawn, chosen = analyzer(tmp_path, [face]).analyse(as_images(picture), "most confident")
    assert len(faces) == 1 and faces.image_index == (0,) and faces.pack == "buffalo_l"
    np.testing.assert_allclose(faces.landmarks[0], landmarks, atol=1e-4)
    np.testing.assert_allclose(faces.boxes[0], box, atol=1e-4)
    np.testing.assert_allclose(faces.scores, [0.9], rtol=1e-6)
    want = embedding(picture[150:262, 200:312])
    got = faces.embeddings[0].double().numpy()
    assert faces.embeddings.shape == (1, 512) and faces.embeddings.dtype == torch.float32
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert err < 1e-5, f"embedding differs from the map of picture[150:262, 200:312] by {err:.2e}"
    # what is drawn: every face found, the chosen one marked
    assert len(drawn) == 1 and chosen == [{0}]
    np.testing.assert_allclose(drawn[0][0], [box], atol=1e-4)


def test_a_turned_face_gives_the_embedding_of_opencvs_crop(tmp_path):
    """Landmarks turned, scaled and moved: the embedding of the crop insightface makes (cv2.warpAffine through
    scikit-image's similarity, from the picture rounded to 8 bits), within rounding."""
    landmarks = similar(ARCFACE_112, 1.8, 0.35, [260, 120])
    x1, y1 = landmarks.min(0) - 30
    x2, y2 = landmarks.max(0) + 30
    face = face_at(16, 15, 20, landmarks, (x1, y1, x2, y2), 0.8)
    picture = smooth_picture(640, 640, phase=1.0)
    faces, _, _ = analyzer(tmp_path, [face]).analyse(as_images(picture))
    crop = cv2.warpAffine(picture, reference_matrix(faces.landmarks[0], align.template(112)), (112, 112),
                          borderValue=0.0)
    want = embedding(crop)
    err = np.linalg.norm(faces.embeddings[0].double().numpy() - want) / np.linalg.norm(want)
    assert err < 1e-3, f"relative error {err:.2e} against the embedding of OpenCV's crop"


FOUR_BOXES = {"a": (10, 10, 60, 60), "b": (300, 300, 500, 500), "c": (100, 400, 200, 500), "weak": (440, 20, 520, 100)}


def four_faces():
    """a: best score, smallest; b: largest; c: weakest above 0.5; weak: 0.3. Landmarks on the template scaled
    into each box; each face on a cell of its own near its box."""
    def at(stride, row, col, key, score):
        x1, y1, x2, _ = box = FOUR_BOXES[key]
        return face_at(stride, row, col, np.array(ARCFACE_112) * (x2 - x1) / 112 + [x1, y1], box, score)

    return [at(8, 4, 4, "a", 0.95), at(16, 25, 25, "b", 0.8), at(8, 55, 20, "c", 0.6), at(32, 2, 15, "weak", 0.3)]


def test_choosing_a_face(tmp_path):
    fa = analyzer(tmp_path, four_faces())
    images = as_images(smooth_picture(640, 640), smooth_picture(640, 640, phase=2.0))
    box = FOUR_BOXES

    def boxes_of(choose, index=0, threshold=0.5):
        faces, _, chosen = fa.analyse(images, choose, index, threshold)
        return faces, chosen

    faces, chosen = boxes_of("most confident")
    np.testing.assert_allclose(faces.boxes, [box["a"], box["a"]], atol=1e-3)
    assert faces.image_index == (0, 1) and chosen == [{0}, {0}]
    faces, chosen = boxes_of("largest")
    np.testing.assert_allclose(faces.boxes, [box["b"], box["b"]], atol=1e-3)
    assert chosen == [{1}, {1}]
    largest = faces
    faces, chosen = boxes_of("by index", 2)
    np.testing.assert_allclose(faces.boxes, [box["c"], box["c"]], atol=1e-3)
    assert chosen == [{2}, {2}]
    faces, chosen = boxes_of("all")
    np.testing.assert_allclose(faces.boxes, [box[k] for k in "abcabc"], atol=1e-3)
    np.testing.assert_allclose(faces.scores, [0.95, 0.8, 0.6] * 2, rtol=1e-6)
    assert faces.image_index == (0, 0, 0, 1, 1, 1) and chosen == [{0, 1, 2}, {0, 1, 2}]
    # the same face gives the same embedding whichever way it was chosen; the two pictures give different ones
    torch.testing.assert_close(faces.embeddings[[1, 4]], largest.embeddings)
    assert not torch.allclose(faces.embeddings[1], faces.embeddings[4])
    # a lower threshold finds the weak face too, last (best score first)
    faces, _ = boxes_of("all", threshold=0.25)
    np.testing.assert_allclose(faces.scores[:4], [0.95, 0.8, 0.6, 0.3], rtol=1e-6)
    np.testing.assert_allclose(faces.boxes[3], box["weak"], atol=1e-3)

    with pytest.raises(IPAdapterError, match=r"index: image 0 has 3 face\(s\) \(numbered 0..2, best score first\); "
                                             "got 3"):
        fa.analyse(images, "by index", 3)
    with pytest.raises(IPAdapterError, match="choose: expected one of largest, most confident, by index, all"):
        fa.analyse(images, "smallest")
    with pytest.raises(IPAdapterError, match="image: expected an IMAGE batch"):
        fa.analyse(images[0])


def red_blocks(*cells, colour=(230, 40, 90)) -> np.ndarray:
    """A black 640x640 picture with a ``colour`` block on each stride-32 cell (row, col) of ``cells``."""
    picture = np.zeros((640, 640, 3), np.uint8)
    for row, col in cells:
        picture[row * 32:(row + 1) * 32, col * 32:(col + 1) * 32] = colour
    return picture


def test_the_detector_reads_rgb_normalised_as_insightface(tmp_path, caplog):
    """The red-channel detector scores a cell by the mean of the network's channel 0: a block of RGB
    (230, 40, 90) scores (230 - 127.5) / 128 = 0.80078125 if the network gets RGB in ComfyUI's order, normalised
    as (x - 127.5) / 128; with red and blue swapped it scores (90 - 127.5) / 128 < 0 and no face is found."""
    fa = analyzer(tmp_path, red_stride=32)
    picture = red_blocks((5, 7))
    faces, _, _ = fa.analyse(as_images(picture))
    np.testing.assert_allclose(faces.scores, [(230 - 127.5) / 128], rtol=1e-6)
    # the box: cell centre (7·32, 5·32) -/+ one stride (the table's distances are 1)
    np.testing.assert_allclose(faces.boxes, [[192, 128, 256, 192]], atol=1e-4)

    swapped = np.ascontiguousarray(picture[..., ::-1])
    caplog.set_level(logging.INFO, logger="ipadapter")
    with pytest.raises(IPAdapterError) as e:
        fa.analyse(as_images(picture, swapped))
    msg = str(e.value)
    assert "no face found in image 1 of the batch (640x640 pixels, pack buffalo_l)" in msg and "threshold" in msg, msg
    # every smaller detector size was tried before giving up
    assert [f"trying {s}" in caplog.text for s in (576, 512, 448, 384, 320)] == [True] * 5, caplog.text


def test_an_index_beyond_the_faces_names_the_picture(tmp_path):
    fa = analyzer(tmp_path, red_stride=32)
    images = as_images(red_blocks((2, 3), (10, 12)), red_blocks((6, 6)))
    faces, _, _ = fa.analyse(images, "by index", 0)
    assert faces.image_index == (0, 1)
    with pytest.raises(IPAdapterError, match=r"index: image 1 has 1 face\(s\)"):
        fa.analyse(images, "by index", 1)


def test_a_changed_model_file_is_read_again(tmp_path):
    a, b, c, _ = four_faces()
    images = as_images(smooth_picture(640, 640))
    faces, _, _ = analyzer(tmp_path, [a]).analyse(images)
    assert faces.scores.tolist() == pytest.approx([0.95])
    folder = write_pack(tmp_path, faces=[b, c])
    stat = os.stat(folder / "det_10g.onnx")
    os.utime(folder / "det_10g.onnx", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    faces, _, _ = FaceAnalyzer("buffalo_l", "CPU", search=[tmp_path]).analyse(images, "all")
    assert faces.scores.tolist() == pytest.approx([0.8, 0.6])


def test_face_set_normed_and_crops():
    """normed() has unit rows; crops(224) put five bright dots drawn at the landmarks on template(224)."""
    landmarks = similar(ARCFACE_112, 1.5, 0.25, [150, 90])
    yy, xx = np.mgrid[:400, :500]
    dots = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.0 ** 2)) for x, y in landmarks)
    picture = torch.from_numpy(np.stack([dots] * 3, -1)).float()[None]  # 0..1
    emb = torch.tensor([[3.0, 4.0] + [0.0] * 510, [1.0] * 512])
    faces = FaceSet(emb, np.stack([landmarks, landmarks]), np.zeros((2, 4)), np.ones(2), (0, 0), picture, "p")
    torch.testing.assert_close(faces.normed().norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(faces.normed()[0, :2], torch.tensor([0.6, 0.8]))
    assert faces.embeddings_for(False) is emb and len(faces) == 2
    assert faces.select([1]).embeddings.tolist() == [[1.0] * 512] and faces.select([1]).image_index == (0,)

    crops = faces.crops(224)
    assert crops.shape == (2, 224, 224, 3) and float(crops.min()) >= 0 and float(crops.max()) <= 1
    # 8-bit values, as the reference's
    torch.testing.assert_close(crops * 255, (crops * 255).round(), rtol=0, atol=1e-4)
    crop = crops[0, ..., 0].double().numpy()
    cy, cx = np.mgrid[:224, :224]
    for (tx, ty) in align.template(224):
        win = (np.abs(cx - tx) <= 12) & (np.abs(cy - ty) <= 12)
        w = crop * win
        got = (w * cx).sum() / w.sum(), (w * cy).sum() / w.sum()
        assert np.hypot(got[0] - tx, got[1] - ty) < 0.2, f"dot at {got}, template at {(tx, ty)}"
    assert faces.crops(256).shape == (2, 256, 256, 3)
    assert faces.select([]).crops(224).shape == (0, 224, 224, 3)


def test_annotate_draws_boxes_and_landmarks():
    images = torch.zeros(2, 100, 120, 3)
    kps = np.array([[20.0, 30.0], [40.0, 30.0], [30.0, 40.0], [22.0, 50.0], [38.0, 50.0]])
    found = [(np.array([[10.0, 20.0, 50.0, 60.0], [70.0, 10.0, 110.0, 40.0]]), np.stack([kps, kps + [60, -15]])),
             (np.zeros((0, 4)), np.zeros((0, 5, 2)))]
    out = draw.annotate(images, found, [{0}, set()])
    assert out.shape == images.shape and torch.equal(images, torch.zeros_like(images)), "drawn on the input"
    chosen, other = torch.tensor(draw.CHOSEN), torch.tensor(draw.OTHER)
    # box edges (width max(1, round(120 / 256)) = 1): top, bottom, left, right
    for y, x in ((20, 10), (20, 50), (60, 30), (40, 10), (40, 50)):
        torch.testing.assert_close(out[0, y, x], chosen, msg=lambda m, y=y, x=x: f"chosen box at ({x}, {y}): {m}")
    torch.testing.assert_close(out[0, 10, 90], other)
    torch.testing.assert_close(out[0, 30, 20], torch.tensor(draw.LANDMARK_COLOURS[0], dtype=torch.float32))
    torch.testing.assert_close(out[0, 50, 38], torch.tensor(draw.LANDMARK_COLOURS[4], dtype=torch.float32))
    assert torch.equal(out[0, 25, 15], torch.zeros(3)) and torch.equal(out[0, 90, 100], torch.zeros(3))
    assert torch.equal(out[1], images[1]), "a picture without faces is unchanged"
    assert int((out[0] != 0).any(-1).sum()) < 0.2 * 100 * 120


def test_providers():
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        assert providers_for("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        pytest.skip("onnxruntime-gpu is installed here: CUDA is offered")
    assert providers_for("auto") == ["CPUExecutionProvider"]
    assert providers_for("CPU") == ["CPUExecutionProvider"]
    with pytest.raises(IPAdapterError, match="CUDA .CUDAExecutionProvider. is not offered") as e:
        providers_for("CUDA")
    assert "onnxruntime-gpu" in str(e.value)
    with pytest.raises(IPAdapterError, match="provider: expected one of auto, CPU, CUDA"):
        providers_for("TPU")
