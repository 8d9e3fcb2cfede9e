"""The two face analysis backends (ip_adapter_core/faces/insightface_backend.py): the insightface package, run
on the tests' synthetic packs (tests/support/face_packs.py), finds the same faces as this extension's own
onnxruntime analysis and gives the same embeddings. This makes insightface's own code a second, independent
reference for the detection (letterbox, SCRFD decoding, NMS), the alignment and the recogniser's input.

insightface is test-only here (requirements-test-nodeps.txt, installed without its dependencies); without it
the comparison skips saying so, and the backend's refusal is checked instead.
"""
from __future__ import annotations

import numpy as np
import pytest

from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
from ipadapter_ext.ip_adapter_core.faces import insightface_backend as backend

from support.face_packs import ARCFACE_112, as_images, face_at, similar, smooth_picture, write_pack


def scene():
    """Three faces: one on the template grid, one turned and scaled, one weak (below the 0.5 threshold)."""
    upright = np.array(ARCFACE_112) + [200, 150]
    turned = similar(ARCFACE_112, 1.8, 0.35, [330, 260])
    weak = np.array(ARCFACE_112) + [480, 60]

    def boxed(points, margin):
        return (*(points.min(0) - margin), *(points.max(0) + margin))

    return [face_at(8, 25, 30, upright, boxed(upright, 20), 0.9),
            face_at(16, 22, 24, turned, boxed(turned, 30), 0.8),
            face_at(32, 4, 17, weak, boxed(weak, 10), 0.3)]


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface")
    write_pack(root, faces=scene())
    return root


def test_insightface_finds_the_same_faces_and_embeddings(pack):
    pytest.importorskip("insightface", reason="insightface missing: THE BACKENDS ARE NOT COMPARED "
                        "(pip install --no-deps -r requirements-test-nodeps.txt)")
    pictures = as_images(smooth_picture(512, 768, phase=0.5), smooth_picture(512, 768, phase=2.0))  # letterboxed
    ours, ours_drawn, _ = backend.face_analyzer("buffalo_l", "CPU", "onnxruntime", [pack]).analyse(pictures, "all")
    theirs, theirs_drawn, _ = backend.face_analyzer("buffalo_l", "CPU", "insightface", [pack]).analyse(pictures,
                                                                                                       "all")
    assert len(ours) == len(theirs) == 4 and ours.image_index == theirs.image_index == (0, 0, 1, 1)
    np.testing.assert_allclose(theirs.boxes, ours.boxes, atol=1e-3)
    np.testing.assert_allclose(theirs.landmarks, ours.landmarks, atol=1e-3)
    np.testing.assert_allclose(theirs.scores, ours.scores, atol=1e-6)
    for (b1, k1), (b2, k2) in zip(ours_drawn, theirs_drawn):
        np.testing.assert_allclose(b2, b1, atol=1e-3)
    a, b = ours.embeddings.double(), theirs.embeddings.double()
    err = float((a - b).norm() / b.norm())
    # their crop is OpenCV's warpAffine, ours grid_sample: the same bilinear maths, rounded differently
    assert err < 5e-4, f"embeddings differ from insightface's by {err:.2e}"  # measured 6e-5
    assert (a - b).norm() < 0.1 * (a[0] - a[1]).norm(), "the difference is not small beside a face's"


def test_an_unknown_backend_and_a_missing_package_are_refused(pack, monkeypatch):
    with pytest.raises(IPAdapterError, match="backend: expected one of onnxruntime, insightface"):
        backend.face_analyzer("buffalo_l", "CPU", "dlib", [pack])
    import builtins

    real_import = builtins.__import__

    def no_insightface(name, *args, **kwargs):
        if name.startswith("insightface"):
            raise ImportError("No module named 'insightface'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_insightface)
    with pytest.raises(IPAdapterError, match="insightface is not installed.*onnxruntime"):
        backend.face_analyzer("buffalo_l", "CPU", "insightface", [pack])
