"""Face packs (ip_adapter_core/faces/packs.py) on synthetic ONNX files with insightface's input and output names
and shapes (tests/support/face_packs.py): a pack's detector and recogniser are found by what their graphs take
and give, not by their file names; antelopev2's nested folder is flattened; landmark models and damaged files
are passed over; a missing pack or model is refused saying which pack and what to do.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
from ipadapter_ext.ip_adapter_core.faces.packs import pack_dirs, pack_files

from support.face_packs import detector_model, open_session, write_pack


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
