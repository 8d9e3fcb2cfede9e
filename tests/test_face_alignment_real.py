"""Face alignment on a real photograph with a real detector: scikit-image's astronaut (Eileen Collins, a NASA
portrait, public domain) and MTCNN from facenet-pytorch, whose wheel ships its weights and which gives the
five landmarks SCRFD gives (eyes, nose tip, mouth corners; requirements-test-nodeps.txt).

The synthetic packs of test_face_analysis.py check decoding against numbers computed by hand; this checks
the warp on real pixels: the aligned crop (``norm_crop``, what FaceSet.crops and the recogniser's input use),
searched again by MTCNN, has its landmarks where our similarity transform sends the photograph's, within
2 px, at 112 (the recogniser's crop) and 224 (FaceID Plus's CLIP crop). The transform is the least-squares
similarity to the ArcFace template; its residual is this face's own shape (a broad smile puts the mouth
corners 5 to 7 px from the template at 112), so the eyes are also checked against the template itself.
A transposed or mirrored warp, or landmarks read as (y, x), moves the re-detected points by tens of pixels.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ipadapter_ext.ip_adapter_core.faces.align import norm_crop, similarity, template


@pytest.fixture(scope="module")
def mtcnn():
    facenet = pytest.importorskip("facenet_pytorch", reason="facenet-pytorch missing: REAL-IMAGE ALIGNMENT NOT "
                                  "CHECKED (pip install --no-deps -r requirements-test-nodeps.txt)")
    return facenet.MTCNN(keep_all=True, device="cpu")


@pytest.fixture(scope="module")
def astronaut():
    data = pytest.importorskip("skimage.data")
    return data.astronaut()  # [512, 512, 3] uint8 RGB


def landmarks(mtcnn, picture: np.ndarray) -> np.ndarray:
    """The five landmarks [5, 2] (x, y) of the one face MTCNN finds in ``picture`` (uint8 RGB)."""
    from PIL import Image

    with torch.no_grad():
        boxes, probs, points = mtcnn.detect(Image.fromarray(picture), landmarks=True)
    assert boxes is not None and len(boxes) == 1 and probs[0] > 0.99, (boxes, probs)
    return np.asarray(points[0], np.float64)


@pytest.mark.parametrize("size", [112, 224])
def test_aligned_crop_puts_the_landmarks_where_the_transform_says(mtcnn, astronaut, size):
    found = landmarks(mtcnn, astronaut)
    matrix = similarity(found, template(size))
    expected = found @ matrix[:, :2].T + matrix[:, 2]
    crop = norm_crop(torch.from_numpy(astronaut).float() / 255, found, size)
    assert crop.shape == (size, size, 3)
    again = landmarks(mtcnn, (crop.numpy() * 255).round().astype(np.uint8))
    off = np.linalg.norm(again - expected, axis=1)
    assert off.max() < 2.0, f"re-detected landmarks off by {off.round(2)} px"
    eyes = np.linalg.norm(again[:2] - template(size)[:2], axis=1) * 112 / size
    assert eyes.max() < 3.5, f"eyes {eyes.round(2)} px (in the 112 frame) from the ArcFace template"


def test_a_mirrored_warp_would_be_caught(mtcnn, astronaut):
    """The check can fail: landmarks read as (y, x) give a crop whose re-detected eyes are far off."""
    found = landmarks(mtcnn, astronaut)
    swapped = found[:, ::-1].copy()
    crop = norm_crop(torch.from_numpy(astronaut).float() / 255, swapped, 112)
    from PIL import Image

    with torch.no_grad():
        boxes, _, points = mtcnn.detect(Image.fromarray((crop.numpy() * 255).round().astype(np.uint8)),
                                        landmarks=True)
    if boxes is None:
        return  # no face at all in the crop: caught
    matrix = similarity(swapped, template(112))
    expected = swapped @ matrix[:, :2].T + matrix[:, 2]
    assert np.linalg.norm(np.asarray(points[0], np.float64) - expected, axis=1).max() > 10
