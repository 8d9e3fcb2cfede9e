"""Model files and folders whose cost a few bytes can blow up (issue 19, item 4): a pickle whose
dicts share references is refused naming the file, as are absurd nesting and size; the preset
scan walks each real folder once (symlink loops), classifies each file once whatever names it
has (symlinks, hard links), and its classification cache is bounded.

The pickles are built here with plain dicts and torch.save, the folders with os.symlink and
os.link; what is expected (which files, how many classifications) is counted by hand from
the tree each test makes, not from the scan's own output."""
from __future__ import annotations

import os

import pytest
import torch

from ipadapter_ext.ip_adapter_core.files import formats as F
from ipadapter_ext.ip_adapter_core.errors import IPAdapterFileError


def shared_chain(levels: int) -> dict:
    """d_k = {"a": d_(k-1), "b": d_(k-1)}: a few hundred bytes pickled (each dict is stored once
    and referenced twice), 2^levels paths when walked as a tree."""
    d = {"w": torch.zeros(1)}
    for _ in range(levels):
        d = {"a": d, "b": d}
    return d


def test_shared_references_are_refused_naming_the_file(tmp_path):
    # within the nesting cap: refused for the sharing itself (before the fix: 4,096 keys, accepted)
    shallow = tmp_path / "shallow.bin"
    torch.save(shared_chain(12), shallow)
    # by hand: d0 is met first at 'a' × 12, then again one level up, as the sibling 'b'
    first, again = ".".join("a" * 12), ".".join("a" * 11) + ".b"
    with pytest.raises(IPAdapterFileError, match=f"holds the same dict at '{first}' and at '{again}'") as e:
        F.read_flat_state_dict(shallow)
    assert str(shallow) in str(e.value) and "safetensors" in str(e.value)

    # the file: 60 levels, 2^60 leaves as a tree; refused (whichever cap it meets first)
    path = tmp_path / "bomb.bin"
    torch.save(shared_chain(60), path)
    assert path.stat().st_size < 64 * 1024
    with pytest.raises(IPAdapterFileError) as e:
        F.read_flat_state_dict(path)
    assert str(path) in str(e.value)


def test_preset_classification_refuses_the_same_pickle(tmp_path):
    from ipadapter_ext.ip_adapter_core.files.model_folders import adapter_config_of_file

    path = tmp_path / "bomb.bin"
    torch.save({"image_proj": shared_chain(12), "ip_adapter": {}}, path)
    with pytest.raises(IPAdapterFileError, match="holds the same dict at"):
        adapter_config_of_file(path)


def test_deep_and_wide_pickles_are_refused(tmp_path):
    # literal sizes, far beyond any model file (nesting 2-3, a few hundred keys), so that the test
    # also says what happened before the caps existed: both files were accepted
    deep = {"w": torch.zeros(1)}
    for _ in range(40):
        deep = {"x": deep}
    torch.save(deep, tmp_path / "deep.bin")
    with pytest.raises(IPAdapterFileError, match="nests dicts more than 16 deep") as e:
        F.read_flat_state_dict(tmp_path / "deep.bin")
    assert str(tmp_path / "deep.bin") in str(e.value)

    torch.save({"ip_adapter": {str(i): i for i in range(100_001)}}, tmp_path / "wide.bin")
    with pytest.raises(IPAdapterFileError, match="more than 100,000 dict entries"):
        F.read_flat_state_dict(tmp_path / "wide.bin")


def test_a_plain_nested_state_dict_still_flattens(tmp_path):
    a, b = torch.ones(2), torch.zeros(3)
    torch.save({"image_proj": {"proj": {"weight": a}}, "ip_adapter": {"1.to_k_ip.weight": b},
                "epoch": 3, "tied": {"again": a}}, tmp_path / "ok.bin")
    flat = F.read_flat_state_dict(tmp_path / "ok.bin")
    assert list(flat) == ["image_proj.proj.weight", "ip_adapter.1.to_k_ip.weight", "tied.again"]
    assert torch.equal(flat["image_proj.proj.weight"], a) and torch.equal(flat["tied.again"], a)


# ---------------------------------------------------------------- the preset scan

@pytest.fixture
def model_folders(monkeypatch):
    """The module with an empty cache; ``model_folders.calls``: the inode of each file classified."""
    from ipadapter_ext.ip_adapter_core.files import model_folders

    saved = dict(model_folders.CLASSIFIED)
    model_folders.CLASSIFIED.clear()
    calls = []
    monkeypatch.setattr(model_folders, "adapter_config_of_file", lambda p: calls.append(os.stat(p).st_ino) or
                        model_folders.Skipped("test file"))
    model_folders.calls = calls
    yield model_folders
    model_folders.CLASSIFIED.clear()
    model_folders.CLASSIFIED.update(saved)
    del model_folders.calls


def test_scan_survives_symlink_loops_and_classifies_each_file_once(tmp_path, model_folders, monkeypatch):
    root = tmp_path / "ipadapter"
    (root / "sub").mkdir(parents=True)
    (root / "a.safetensors").write_bytes(b"not a model")
    (root / "sub" / "b.bin").write_bytes(b"not a model either")
    # A folder that contains itself: before the fix the walk went 40 links deep (the kernel's limit)
    # and classified a.safetensors under each of those 41 names. Two such links would make 2^40
    # walks before the fix, so the test has one: it must fail, not hang, without the fix.
    os.symlink(root, root / "loop")
    os.symlink(root / "a.safetensors", root / "z_alias.safetensors")  # a second name for a
    os.link(root / "sub" / "b.bin", root / "c_hard.bin")      # a hard link: a second name for b
    monkeypatch.setattr(model_folders, "folders", lambda kind: [str(root), str(root / "sub")])  # overlapping

    files = model_folders.scan("ipadapter")
    # by hand: two real files; each listed once, under its first name by path
    assert [p for p, _ in files] == [str(root / "a.safetensors"), str(root / "c_hard.bin")]
    assert sorted(model_folders.calls) == sorted({os.stat(root / "a.safetensors").st_ino,
                                            os.stat(root / "sub" / "b.bin").st_ino})
    assert all(isinstance(r, model_folders.Skipped) for _, r in files)

    model_folders.scan("ipadapter")
    assert len(model_folders.calls) == 2  # nothing changed: nothing classified again


def test_scan_cache_is_bounded_and_keeps_the_most_recent(tmp_path, model_folders, monkeypatch):
    root = tmp_path / "ipadapter"
    root.mkdir()
    for name in "abc":
        (root / f"{name}.safetensors").write_bytes(name.encode() * 16)
    monkeypatch.setattr(model_folders, "folders", lambda kind: [str(root)])
    monkeypatch.setattr(model_folders, "CACHE_SIZE", 2, raising=False)

    model_folders.scan("ipadapter")
    assert len(model_folders.calls) == 3
    assert len(model_folders.CLASSIFIED) == 2
    # the two scanned last are kept: b and c are cache hits, a is classified again
    model_folders.calls.clear()
    os.remove(root / "a.safetensors")
    model_folders.scan("ipadapter")
    assert model_folders.calls == []
