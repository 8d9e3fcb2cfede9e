"""The face analysis of ip_adapter_core/faces (insightface's SCRFD detector and ArcFace recogniser run with
onnxruntime, without the insightface package), checked without a host and without the real, non-commercial
weights: the packs are synthetic ONNX files with insightface's input and output names and shapes
(tests/support/face_packs.py) whose outputs are known, so every number here is computed by hand or by the
libraries insightface itself uses (scikit-image's SimilarityTransform, OpenCV's warpAffine and resize).

- packs: a pack's detector and recogniser are found by what their graphs take and give, not by their file
  names; antelopev2's nested folder is flattened; landmark models and damaged files are passed over; a missing
  pack or model is refused saying which pack and what to do.
- align: the Umeyama similarity equals scikit-image's, the templates of every crop size are the ArcFace ones,
  the crops equal OpenCV's and put the landmarks on the template.
- detect: anchors, decoding, non-maximum suppression and the letterbox by hand, as insightface's scrfd.py.
- analysis: the embedding is the recogniser's map of the aligned crop computed by hand; the network reads RGB
  normalised as (x - 127.5) / 128 (a detector that scores the red channel); the choice of face and its errors.
"""
from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
from ipadapter_ext.ip_adapter_core.faces import align, detect, draw
from ipadapter_ext.ip_adapter_core.faces.analysis import FaceAnalyzer, providers_for
from ipadapter_ext.ip_adapter_core.faces.face_set import FaceSet
from ipadapter_ext.ip_adapter_core.faces.packs import pack_dirs, pack_files
from skimage.transform import SimilarityTransform
from support.face_packs import Face, detector_model, embedding, face_at, write_pack

CPU = ["CPUExecutionProvider"]
# insightface's utils/face_align.py, arcface_dst: where the landmarks go in a 112 crop
ARCFACE_112 = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]


def open_session(path):
    return ort.InferenceSession(str(path), providers=CPU)


def similar(points, scale: float, angle: float, shift) -> np.ndarray:
    """``points`` [n, 2] rotated by ``angle`` (radians), scaled and shifted: a similarity by hand."""
    c, s = np.cos(angle), np.sin(angle)
    return np.asarray(points, np.float64) @ (scale * np.array([[c, -s], [s, c]])).T + np.asarray(shift, np.float64)


def smooth_picture(h: int, w: int, phase: float = 0.0) -> np.ndarray:
    """A smooth uint8 RGB picture (interpolation differences stay small), each channel different."""
    yy, xx = np.mgrid[:h, :w]
    return np.stack([127 + 100 * np.sin(xx / 23 + c + phase) * np.cos(yy / 31 - c) for c in range(3)],
                    -1).round().astype(np.uint8)


def as_images(*pictures: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] pictures -> a ComfyUI IMAGE batch (0..1)."""
    return torch.stack([torch.from_numpy(p).float() / 255 for p in pictures])


def analyzer(root, faces=(), red_stride=None) -> FaceAnalyzer:
    write_pack(root, faces=faces, red_stride=red_stride)
    return FaceAnalyzer("buffalo_l", "CPU", search=[root])


# ---------------------------------------------------------------------------------------------- packs


def test_a_pack_is_read_by_role_not_by_file_name(tmp_path):
    folder = write_pack(tmp_path)
    assert pack_dirs([tmp_path]) == {"buffalo_l": folder}
    files = pack_files("buffalo_l", open_session, [tmp_path])
    assert (files.name, files.detector, files.recogniser) == (
        "buffalo_l", str(folder / "det_10g.onnx"), str(folder / "w600k_r50.onnx"))

    # the same models under names that say nothing, the recogniser sorting first: still found by their graphs
    other = tmp_path / "renamed"
    folder = write_pack(other, detector="y.onnx", recogniser="x.onnx", landmarks="a.onnx")
    files = pack_files("buffalo_l", open_session, [other])
    assert (files.detector, files.recogniser) == (str(folder / "y.onnx"), str(folder / "x.onnx")), files


def test_a_detector_exported_at_640_is_a_detector(tmp_path):
    """onnx_role takes a fixed-size detector when its size is 640 (as some exports are)."""
    folder = write_pack(tmp_path, detector=None)
    model = detector_model()
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_value = 640
    onnx.save(model, str(folder / "scrfd_640.onnx"))
    assert pack_files("buffalo_l", open_session, [tmp_path]).detector == str(folder / "scrfd_640.onnx")


def test_the_nested_antelopev2_folder_is_flattened(tmp_path):
    folder = write_pack(tmp_path, "antelopev2", nested=True, detector="scrfd_10g_bnkps.onnx",
                        recogniser="glintr100.onnx", landmarks="1k3d68.onnx")
    assert folder == tmp_path / "models" / "antelopev2" / "antelopev2"
    assert pack_dirs([tmp_path]) == {"antelopev2": folder}
    files = pack_files("antelopev2", open_session, [tmp_path])
    assert (files.detector, files.recogniser) == (str(folder / "scrfd_10g_bnkps.onnx"), str(folder / "glintr100.onnx"))


def test_the_first_root_wins_and_empty_folders_are_no_packs(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    write_pack(first)
    write_pack(second)
    write_pack(second, "antelopev2")
    (first / "models" / "empty").mkdir()
    (tmp_path / "no_models").mkdir()  # a root without models/ is passed over
    assert pack_dirs([tmp_path / "no_models", first, second]) == {
        "antelopev2": second / "models" / "antelopev2", "buffalo_l": first / "models" / "buffalo_l"}


def test_a_landmark_model_is_not_taken_for_a_detector_or_recogniser(tmp_path):
    # 1k3d68 sorts before everything; without a detector the pack is refused instead of using it
    write_pack(tmp_path, detector=None, landmarks="1k3d68.onnx")
    with pytest.raises(IPAdapterError, match="no detector ONNX file found among 1k3d68.onnx, w600k_r50.onnx"):
        pack_files("buffalo_l", open_session, [tmp_path])
    write_pack(tmp_path / "full", landmarks="1k3d68.onnx")
    files = pack_files("buffalo_l", open_session, [tmp_path / "full"])
    assert files.detector.endswith("det_10g.onnx") and files.recogniser.endswith("w600k_r50.onnx"), files


def test_a_missing_pack_is_refused_saying_where_to_put_it(tmp_path):
    write_pack(tmp_path)
    with pytest.raises(IPAdapterError) as e:
        pack_files("antelopev2", open_session, [tmp_path])
    msg = str(e.value)
    for part in ("'antelopev2' not found", str(tmp_path / "models"), "found: buffalo_l", "Download",
                 "models/insightface/models/antelopev2/"):
        assert part in msg, f"{part!r} missing from: {msg}"
    with pytest.raises(IPAdapterError, match="found: none"):
        pack_files("buffalo_l", open_session, [tmp_path / "nothing_here"])


def test_a_pack_without_a_recogniser_is_refused(tmp_path):
    write_pack(tmp_path, recogniser=None)
    with pytest.raises(IPAdapterError) as e:
        pack_files("buffalo_l", open_session, [tmp_path])
    msg = str(e.value)
    for part in ("face pack 'buffalo_l'", "no recogniser ONNX file", "2d106det.onnx, det_10g.onnx", "w600k_r50.onnx",
                 "download the pack again"):
        assert part in msg, f"{part!r} missing from: {msg}"


def test_a_damaged_onnx_file_is_skipped_and_named(tmp_path):
    junk = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    write_pack(tmp_path, recogniser=None, extra_files={"w600k_r50.onnx": junk})
    with pytest.raises(IPAdapterError) as e:
        pack_files("buffalo_l", open_session, [tmp_path])
    msg = str(e.value)
    assert "no recogniser" in msg and "skipped: w600k_r50.onnx (unreadable: " in msg, msg

    # beside a good pack, a damaged file is passed over
    other = tmp_path / "good"
    folder = write_pack(other, extra_files={"broken.onnx": junk})
    files = pack_files("buffalo_l", open_session, [other])
    assert (files.detector, files.recogniser) == (str(folder / "det_10g.onnx"), str(folder / "w600k_r50.onnx"))


# ---------------------------------------------------------------------------------------------- align


def reference_matrix(src, dst) -> np.ndarray:
    """scikit-image's least-squares similarity, what insightface's estimate_norm uses."""
    return SimilarityTransform.from_estimate(np.asarray(src), np.asarray(dst)).params[:2]


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
