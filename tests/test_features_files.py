"""CLIP features files. ComfyUI_IPAdapter_plus's .ipadpt, written here exactly as its IPAdapterSaveEmbeds writes
them (``torch.save(embeds, file)`` of one tensor; layouts from its IPAdapterEncoder before and after its March 2024
rewrite), load to the very tensors saved, run no code, and anything else is refused naming the file; our
.ipafeatures files round-trip; and in the host, Project on loaded features equals Project on the originals.

Every load returns ComfyUI's own CLIP_VISION_OUTPUT class, hence the host marker."""
from __future__ import annotations

import pytest
import torch

from support.adapter_files import CodeRunningPickle
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
from ipadapter_ext.ip_adapter_core.files.formats import torch_unpickles_safely
from ipadapter_ext.ip_adapter_core.prompt import features_io
from ipadapter_ext.ip_adapter_core.prompt.features_io import FORMAT, list_files, load_features, save_features
from ipadapter_ext.ip_adapter_core.prompt.vision import BLACK_IMAGE_ATTR, ZERO_IMAGE_ATTR

pytestmark = [pytest.mark.host,
              pytest.mark.skipif(not torch_unpickles_safely(), reason="this torch cannot open pickles safely")]

EMBEDS, STATES = "image_embeds", "penultimate_hidden_states"  # ComfyUI's field names, written out


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# name: (field, positive, negative or None). Batches of 2 images where a first-generation pair [2, B, D] could be
# mistaken for the states of two images [2, T, W]: ViT-H states (257 tokens, 1280 wide), bigG image_embeds (1280).
LAYOUTS = {
    "image_embeds": (EMBEDS, _randn(3, 1024), None),
    "penultimate": (STATES, _randn(2, 257, 1280), None),
    "first-gen image_embeds pair": (EMBEDS, _randn(2, 1280), torch.zeros(2, 1280)),
    "first-gen penultimate pair": (STATES, _randn(1, 257, 1664), _randn(1, 257, 1664, seed=1)),
}


def _their_file(path, tensor, legacy=False):
    """As IPAdapterSaveEmbeds writes it; ``legacy``: torch's pre-1.6 pickle format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensor, str(path), **({"_use_new_zipfile_serialization": False} if legacy else {}))
    return path


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_their_files_load_to_the_saved_features(tmp_path, layout, dtype):
    field, pos, neg = LAYOUTS[layout]
    pos, neg = pos.to(dtype), None if neg is None else neg.to(dtype)
    saved = pos if neg is None else torch.stack((pos, neg))  # their first generation's EMBEDS
    got_pos, got_neg = load_features(_their_file(tmp_path / "IP_embeds_00001.ipadpt", saved))
    other = STATES if field == EMBEDS else EMBEDS
    assert getattr(got_pos, other, None) is None
    assert got_pos[field].dtype == torch.float32 and torch.equal(got_pos[field], pos.float())
    if neg is None:
        assert got_neg is None
    else:
        assert torch.equal(got_neg[field], neg.float())


def test_their_legacy_format_file_loads(tmp_path):
    pos = _randn(1, 257, 1280).half()
    got, neg = load_features(_their_file(tmp_path / "old.ipadpt", pos, legacy=True))
    assert neg is None and torch.equal(got[STATES], pos.float())


def test_a_file_carrying_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = _their_file(tmp_path / "evil.ipadpt", CodeRunningPickle(marker))
    with pytest.raises(IPAdapterError, match="refused without being executed") as e:
        load_features(path)
    assert str(path) in str(e.value) and "Save Features" in str(e.value)
    assert not marker.exists(), "loading the features file executed its code"


REFUSED = {
    "dict of tensors": ({"image_embeds": _randn(1, 1024)}, "found a dict with keys ['image_embeds']"),
    "list": ([_randn(1, 1024), _randn(1, 1024)], "found a list of 2 items"),
    "int tensor": (torch.ones(1, 1024, dtype=torch.int64), "dense floating-point"),
    "rank 5": (_randn(2, 1, 1, 257, 8), "rank 5"),
    "rank 1": (_randn(1024), "rank 1"),
    "zero size": (torch.zeros(0, 1024), "every size must be at least 1"),
    "rank 4 not a pair": (_randn(3, 1, 257, 8), "first generation's positive and negative stacked"),
    "too wide": (torch.zeros(1, 9000, dtype=torch.float16), "at most 8192"),
    # 4 KB on disk standing for 16 MB: the same trick reaches terabytes within the size bounds
    "expanded": (torch.zeros(1, 1024).expand(4096, 1024), "stores only 4,096 bytes"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_other_contents_are_refused_naming_the_file(tmp_path, case):
    obj, fragment = REFUSED[case]
    path = _their_file(tmp_path / "bad.ipadpt", obj)
    with pytest.raises(IPAdapterError) as e:
        load_features(path)
    assert str(path) in str(e.value) and fragment in str(e.value), str(e.value)


def test_an_oversized_pickle_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = _their_file(tmp_path / "big.ipadpt", _randn(4, 257, 1280))
    monkeypatch.setattr(features_io, "MAX_PICKLE_BYTES", path.stat().st_size - 1)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called on an oversized file"))
    with pytest.raises(IPAdapterError, match="so it was not read") as e:
        load_features(path)
    assert str(path) in str(e.value)


def _encoder_output(black=False):
    """What IP-Adapter Encode Image gives: ComfyUI's fields, and the negative our encoder adds."""
    from comfy.clip_vision import Output

    out = Output()
    out[EMBEDS] = _randn(2, 1024).half()
    out[STATES] = _randn(2, 257, 1280, seed=1)
    out["last_hidden_state"] = _randn(2, 257, 1280, seed=2)
    if black:
        out[BLACK_IMAGE_ATTR] = _randn(1, 1024, seed=3)
    else:
        out[ZERO_IMAGE_ATTR] = _randn(1, 257, 1280, seed=3)
    return out


@pytest.mark.parametrize("black", [False, True], ids=["zero image", "black image"])
def test_our_files_round_trip(tmp_path, black):
    out = _encoder_output(black)
    got, neg = load_features(save_features(out, tmp_path / "f.ipafeatures"))
    extra = BLACK_IMAGE_ATTR if black else ZERO_IMAGE_ATTR
    assert neg is None and getattr(got, "last_hidden_state", None) is None  # no adapter reads it: not saved
    for name in (EMBEDS, STATES, extra):
        assert torch.equal(got[name], out[name].float()), name


def test_our_files_are_checked_like_theirs(tmp_path):
    import safetensors.torch

    cases = {"wrong tag": ({EMBEDS: _randn(1, 1024)}, {"format": "x"}, "expected format"),
             "unknown tensor": ({EMBEDS: _randn(1, 1024), "code": _randn(1)}, {"format": FORMAT}, "'code'"),
             "wrong rank": ({STATES: _randn(1, 1280)}, {"format": FORMAT}, "has rank 2"),
             "batches differ": ({EMBEDS: _randn(1, 1024), STATES: _randn(2, 257, 1280)}, {"format": FORMAT},
                                "different numbers of images")}
    for case, (tensors, meta, fragment) in cases.items():
        path = tmp_path / f"{case}.ipafeatures"
        safetensors.torch.save_file(tensors, str(path), metadata=meta)
        with pytest.raises(IPAdapterError) as e:
            load_features(path)
        assert str(path) in str(e.value) and fragment in str(e.value), (case, str(e.value))


def test_the_list_holds_both_kinds_recursively(tmp_path):
    for name in ("a.ipadpt", "sub/deeper/b.IPADPT", "sub/c.ipafeatures", "d.ipaembeds", "e.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert list_files(tmp_path) == ["a.ipadpt", "sub/c.ipafeatures", "sub/deeper/b.IPADPT"]


def test_nodes_load_into_project_as_the_original_features(tmp_path, adapter_file):
    """Save Features -> Load Features, and their first-generation file, into Project: the same tokens as Project on
    the features themselves; a file of the wrong feature for the adapter names itself."""
    import folder_paths
    from comfy.clip_vision import Output

    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.nodes.features_files import IPALoadFeatures, IPASaveFeatures
    from ipadapter_ext.nodes.image_prompt import IPAProject

    def project(features, negative=None):
        return IPAProject.execute(h, features, "concat", negative).result[0]

    h = load_adapter_handle(adapter_file("ip-adapter-plus_sd15"))
    saved = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    folder_paths.set_input_directory(str(tmp_path))
    folder_paths.set_output_directory(str(tmp_path))  # Save writes under input/ too: no move needed
    try:
        original = _encoder_output()
        IPASaveFeatures.execute(original, "ipadapter/features")
        pos, neg = torch.randn(2, 1, 257, 1280).half().unbind(0)
        _their_file(tmp_path / "old" / "pair.ipadpt", torch.stack((pos, neg)))
        _their_file(tmp_path / "base.ipadpt", _randn(1, 1024))
        files = IPALoadFeatures.define_schema().inputs[0].options
        assert files == ["base.ipadpt", "ipadapter/features_00001_.ipafeatures", "old/pair.ipadpt"]
        assert len({IPALoadFeatures.fingerprint_inputs(features_file=f) for f in files}) == 3

        loaded, none = IPALoadFeatures.execute(files[1]).result
        want, got = project(original), project(loaded, none)
        assert none is None and torch.equal(got.positive, want.positive) and torch.equal(got.negative, want.negative)

        loaded, loaded_neg = IPALoadFeatures.execute(files[2]).result
        as_features = [Output() for _ in range(2)]
        for out, t in zip(as_features, (pos, neg)):
            out[STATES] = t.float()
        want, got = project(*as_features), project(loaded, loaded_neg)
        assert torch.equal(got.positive, want.positive) and torch.equal(got.negative, want.negative)

        with pytest.raises(IPAdapterError) as e:
            project(IPALoadFeatures.execute(files[0]).result[0])
        msg = str(e.value)
        assert "base.ipadpt" in msg and "image_embeds (for base adapters" in msg and "needs penultimate" in msg, msg
    finally:
        folder_paths.set_input_directory(saved[0])
        folder_paths.set_output_directory(saved[1])
