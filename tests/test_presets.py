"""The preset loader finds files by their tensors: renamed, misnamed, duplicated, in extra
folders and subfolders; says what to download when one is missing; re-reads only changed files.

The expected file of each preset comes from the variant each file was written as (the table
below), not from the code's classification. SD1.5 adapters are written by adapter_files
(random weights); SDXL adapters (~700 MB each) and the ViT-bigG encoder (3.7 GB) are written
as safetensors of the real shapes with zero data in a sparse file, which costs no disk or
time: the scan reads headers only. The ViT-H encoder is host_models' cached file."""
import json
import logging
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch

from support.adapter_files import VARIANTS, image_proj_state, ip_layers_state, write_adapter
from ipadapter_ext.ip_adapter_core.files import model_folders

pytestmark = pytest.mark.host

SD15, SDXL = "sd15", "sdxl"


# ---------------------------------------------------------------- files

def write_sparse_safetensors(path: Path, shapes: dict) -> Path:
    """A valid fp16 safetensors file of these shapes whose data are zeros, stored sparsely."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 2 * int(torch.Size(shape).numel())
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)
    return path


def write_sparse_adapter(directory: Path, variant: str, name: str) -> Path:
    """An adapter of ``variant``'s real shapes (from adapter_files), zeros for data."""
    family, projection, tokens, _, feat, cross = VARIANTS[variant]
    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"):  # shapes only; no memory, no random numbers drawn
        sections = {"image_proj": image_proj_state(projection, tokens, feat, cross, family, gen),
                    "ip_adapter": ip_layers_state(family, cross, gen)}
    return write_sparse_safetensors(Path(directory) / name, {f"{s}.{k}": tuple(v.shape)
                                                             for s, d in sections.items() for k, v in d.items()})


def write_vit_bigg(path: Path) -> Path:
    """The two tensors that identify an HF-layout ViT-bigG/14 (width 1664, projection 1280)."""
    return write_sparse_safetensors(path, {"vision_model.embeddings.class_embedding": (1664,),
                                           "visual_projection.weight": (1280, 1664)})


def place(directory: Path, name: str, source: Path) -> Path:
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    return path


# A models folder and an extra_model_paths.yaml folder. name -> variant it really is.
MAIN = {"ip-adapter_sd15.safetensors": "ip-adapter-plus_sd15",            # misnamed: a plus file
        "my face.bin": "ip-adapter-full-face_sd15",                       # renamed, pickle
        "zz_standard.safetensors": "ip-adapter_sd15",
        "sub/aa_standard_copy.safetensors": "ip-adapter_sd15",            # duplicate, in a subfolder
        "ip-adapter_sd15_vit-G.safetensors": "ip-adapter_sdxl_vit-h"}     # misnamed: SDXL ViT-H base
EXTRA = {"vitg15.safetensors": "ip-adapter_sd15_vit-G",
         "xl_big.safetensors": "ip-adapter_sdxl",
         "deep/plus_xl.safetensors": "ip-adapter-plus_sdxl_vit-h"}
# (preset, family) -> (folder, name) of the file it must pick, and the encoder file
EXPECTED = {
    ("LIGHT", SD15): ("main", "sub/aa_standard_copy.safetensors", "CLIP-ViT-H.safetensors"),
    ("STANDARD", SD15): ("main", "sub/aa_standard_copy.safetensors", "CLIP-ViT-H.safetensors"),
    ("VIT-G", SD15): ("extra", "vitg15.safetensors", "image_encoder/model.safetensors"),
    ("PLUS", SD15): ("main", "ip-adapter_sd15.safetensors", "CLIP-ViT-H.safetensors"),
    ("PLUS FACE", SD15): ("main", "ip-adapter_sd15.safetensors", "CLIP-ViT-H.safetensors"),
    ("FULL FACE", SD15): ("main", "my face.bin", "CLIP-ViT-H.safetensors"),
    ("STANDARD", SDXL): ("main", "ip-adapter_sd15_vit-G.safetensors", "CLIP-ViT-H.safetensors"),
    ("VIT-G", SDXL): ("extra", "xl_big.safetensors", "image_encoder/model.safetensors"),
    ("PLUS", SDXL): ("extra", "deep/plus_xl.safetensors", "CLIP-ViT-H.safetensors"),
    ("PLUS FACE", SDXL): ("extra", "deep/plus_xl.safetensors", "CLIP-ViT-H.safetensors"),
}


def write_variant(directory: Path, name: str, variant: str) -> Path:
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if VARIANTS[variant][0] == SDXL:
        return write_sparse_adapter(directory, variant, name)
    return write_adapter(path.parent, variant, "bin" if name.endswith(".bin") else "safetensors", name=path.name)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    from support.host_models import clip_vision_vit_h

    root = tmp_path_factory.mktemp("models")
    dirs = {k: root / k for k in ("main", "extra", "clip_vision")}
    for folder, table in (("main", MAIN), ("extra", EXTRA)):
        for name, variant in table.items():
            write_variant(dirs[folder], name, variant)
    (dirs["main"] / "notes.safetensors").write_text("not a model at all")           # foreign: junk
    write_sparse_safetensors(dirs["extra"] / "lora.safetensors",                     # foreign: a LoRA
                             {"lora_unet_down_blocks_0.lora_down.weight": (4, 320)})
    (dirs["main"] / "readme.txt").write_text("ignored: not a model extension")
    cv = dirs["clip_vision"]
    cv.mkdir()
    os.symlink(clip_vision_vit_h(), cv / "CLIP-ViT-H.safetensors")                  # cached, real layout
    write_vit_bigg(cv / "image_encoder" / "model.safetensors")
    (cv / "truncated.bin").write_bytes(b"PK\x03\x04 truncated")
    write_adapter(cv, "ip-adapter_sd15", name="misplaced_adapter.safetensors")     # not an encoder
    return dirs


@pytest.fixture
def presets():
    """The module, with an empty classification cache (model_folders.py; tests count classifier calls)."""
    from ipadapter_ext.ip_adapter_core.files import presets

    from ipadapter_ext.ip_adapter_core.files import model_folders

    saved = dict(model_folders.CLASSIFIED)
    model_folders.CLASSIFIED.clear()
    yield presets
    model_folders.CLASSIFIED.clear()
    model_folders.CLASSIFIED.update(saved)


def point_folders(monkeypatch, ipadapter: list, clip_vision: list) -> None:
    """Register the folders as extra_model_paths.yaml would (ipadapter: yaml folder + models/ipadapter)."""
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "ipadapter",
                        ([str(p) for p in ipadapter], {".safetensors", ".bin"}))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "clip_vision",
                        ([str(p) for p in clip_vision], {".safetensors", ".bin"}))


@pytest.fixture
def folders(library, monkeypatch):
    point_folders(monkeypatch, [library["extra"], library["main"]], [library["clip_vision"]])
    return library


def meta_model(family: str):
    """A ComfyUI ModelPatcher of the family's real UNet config on meta (no weights)."""
    import comfy.model_detection
    import comfy.model_patcher
    from support.host_unet import comfy_unet_config

    model_config = comfy.model_detection.model_config_from_unet_config(comfy_unet_config(family))
    model = model_config.get_model({}, device="meta")
    return comfy.model_patcher.ModelPatcher(model, load_device="cpu", offload_device="cpu")


@pytest.fixture(scope="module")
def models():
    return {family: meta_model(family) for family in (SD15, SDXL)}


# ---------------------------------------------------------------- presets pick by tensors

@pytest.mark.parametrize("preset,family", sorted(EXPECTED))
def test_each_preset_finds_its_files_by_their_tensors(folders, presets, models, preset, family):
    from ipadapter_ext.ip_adapter_core.files.base_model import model_family

    assert model_family(models[family]) == family
    folder, name, encoder = EXPECTED[preset, family]
    got = presets.preset_files(preset, model_family(models[family]))
    assert Path(got.adapter) == folders[folder] / name
    assert Path(got.clip_vision) == folders["clip_vision"] / encoder
    assert got.config.family == family


@pytest.mark.parametrize("preset", ["LIGHT", "FULL FACE"])
def test_sd15_only_presets_are_refused_on_sdxl(folders, presets, preset):
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError

    with pytest.raises(IPAdapterError, match=rf"preset {preset}: there is no SDXL release.*STANDARD"):
        presets.preset_files(preset, SDXL)


def test_foreign_files_are_skipped_with_a_debug_line(folders, presets, caplog):
    with caplog.at_level(logging.DEBUG, logger="ipadapter"):
        files = dict(model_folders.scan("ipadapter"))
        encoders = dict(model_folders.scan("clip_vision"))
    for path in (folders["main"] / "notes.safetensors", folders["extra"] / "lora.safetensors"):
        assert isinstance(files[str(path)], model_folders.Skipped)
        assert f"skipped {path}" in caplog.text
    assert str(folders["main"] / "readme.txt") not in files
    assert "LoRA" in files[str(folders["extra"] / "lora.safetensors")].reason
    assert isinstance(encoders[str(folders["clip_vision"] / "truncated.bin")], model_folders.Skipped)
    assert isinstance(encoders[str(folders["clip_vision"] / "misplaced_adapter.safetensors")], model_folders.Skipped)
    assert encoders[str(folders["clip_vision"] / "CLIP-ViT-H.safetensors")] == "ViT-H/14"


def test_header_read_equals_the_full_load(folders, presets):
    """The shapes-only classification is the config the adapter loads with."""
    from ipadapter_ext.ip_adapter_core.files.adapter import read_adapter

    for name in ("ip-adapter_sd15.safetensors", "my face.bin", "zz_standard.safetensors"):
        path = folders["main"] / name
        assert model_folders.adapter_config_of_file(path) == read_adapter(path)[0]


# ---------------------------------------------------------------- duplicates

def test_duplicates_pick_the_first_by_path_and_say_so(folders, presets, caplog):
    with caplog.at_level(logging.INFO, logger="ipadapter"):
        got = presets.preset_files("STANDARD", SD15)
    first, other = folders["main"] / "sub/aa_standard_copy.safetensors", folders["main"] / "zz_standard.safetensors"
    assert Path(got.adapter) == first
    line = next(r.getMessage() for r in caplog.records if "files fit" in r.getMessage())
    assert f"2 files fit, using {first}" in line and str(other) in line
    assert "load it with IP-Adapter Loader" in line  # standard and light: same tensors


def test_same_tensor_presets_take_their_own_release_when_both_are_installed(tmp_path, library, presets,
                                                                             monkeypatch, caplog):
    """h94's light/standard and plus/plus-face files have the same tensors: with both installed under their
    release names, each preset takes its own (the name decides only between same-tensor files; sorted by path
    alone, PLUS got plus-face and LIGHT got standard)."""
    ipa = tmp_path / "ipadapter"
    files = {"ip-adapter_sd15.safetensors": "ip-adapter_sd15", "ip-adapter_sd15_light.safetensors": "ip-adapter_sd15",
             "ip-adapter-plus_sd15.safetensors": "ip-adapter-plus_sd15",
             "ip-adapter-plus-face_sd15.safetensors": "ip-adapter-plus_sd15",
             "face_of_a_base.safetensors": "ip-adapter_sd15"}  # named 'face' but a base file: never PLUS FACE
    for name, variant in files.items():
        write_variant(ipa, name, variant)
    point_folders(monkeypatch, [ipa], [library["clip_vision"]])
    want = {"LIGHT": "ip-adapter_sd15_light.safetensors", "STANDARD": "face_of_a_base.safetensors",
            "PLUS": "ip-adapter-plus_sd15.safetensors", "PLUS FACE": "ip-adapter-plus-face_sd15.safetensors"}
    with caplog.at_level(logging.INFO, logger="ipadapter"):
        got = {p: Path(presets.preset_files(p, SD15).adapter).name for p in want}
    assert got == want  # STANDARD: no 'light' in either base name but the first by path
    assert "a name with 'face' first, then by path" in caplog.text


def test_duplicate_order_does_not_depend_on_folder_order(library, presets, monkeypatch):
    point_folders(monkeypatch, [library["main"], library["extra"]], [library["clip_vision"]])
    a = presets.preset_files("STANDARD", SD15).adapter
    point_folders(monkeypatch, [library["extra"], library["main"]], [library["clip_vision"]])
    assert presets.preset_files("STANDARD", SD15).adapter == a


# ---------------------------------------------------------------- missing files

def test_missing_adapter_says_what_to_download_and_where(tmp_path, library, presets, monkeypatch):
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError

    ipa = tmp_path / "ipadapter"
    ipa.mkdir()
    write_adapter(ipa, "ip-adapter_sd15", name="full-face.safetensors")  # named like one, but base
    (ipa / "junk.safetensors").write_text("x" * 20)
    point_folders(monkeypatch, [ipa], [library["clip_vision"]])
    with pytest.raises(IPAdapterError) as e:
        presets.preset_files("FULL FACE", SD15)
    msg = str(e.value)
    assert msg.startswith("preset FULL FACE: no SD1.5 IP-Adapter")
    assert "ip-adapter-full-face_sd15.safetensors" in msg
    assert "https://huggingface.co/h94/IP-Adapter/resolve/main/models/ip-adapter-full-face_sd15.safetensors" in msg
    assert str(ipa) in msg and "models/ipadapter" in msg
    assert "full-face.safetensors: SD1.5 base" in msg  # what was found instead
    assert "junk.safetensors: not used (is neither a safetensors file" in msg


def test_missing_sdxl_adapter_names_the_sdxl_release(tmp_path, library, presets, monkeypatch):
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError

    point_folders(monkeypatch, [tmp_path], [library["clip_vision"]])
    with pytest.raises(IPAdapterError, match=r"preset PLUS FACE: no SDXL .*ip-adapter-plus-face_sdxl_vit-h"
                                             r"\.safetensors .*/sdxl_models/.*no model files"):
        presets.preset_files("PLUS FACE", SDXL)


def test_missing_encoder_says_what_to_download_and_where(tmp_path, library, presets, monkeypatch):
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError

    cv = tmp_path / "clip_vision"
    os.makedirs(cv)
    os.symlink(library["clip_vision"] / "CLIP-ViT-H.safetensors", cv / "vit-g.safetensors")  # misnamed ViT-H
    point_folders(monkeypatch, [library["extra"]], [cv])
    with pytest.raises(IPAdapterError) as e:
        presets.preset_files("VIT-G", SD15)
    msg = str(e.value)
    assert "needs the ViT-bigG/14 CLIP vision model; none found in models/clip_vision" in msg
    assert "h94/IP-Adapter/resolve/main/sdxl_models/image_encoder/model.safetensors" in msg
    assert "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors" in msg and str(cv) in msg
    assert "vit-g.safetensors: ViT-H/14" in msg


def test_unregistered_folder_is_an_empty_scan(presets, monkeypatch):
    import folder_paths

    monkeypatch.delitem(folder_paths.folder_names_and_paths, "ipadapter", raising=False)
    assert model_folders.scan("ipadapter") == []


# ---------------------------------------------------------------- the classification cache

def test_cache_is_used_until_a_file_changes(tmp_path, library, presets, monkeypatch):
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError

    ipa = tmp_path / "ipadapter"
    ipa.mkdir()
    path = write_adapter(ipa, "ip-adapter_sd15", name="a.safetensors")
    write_adapter(ipa, "ip-adapter-plus_sd15", name="b.safetensors")
    point_folders(monkeypatch, [ipa], [library["clip_vision"]])
    calls = []
    real = model_folders.adapter_config_of_file
    monkeypatch.setattr(model_folders, "adapter_config_of_file", lambda p: calls.append(p) or real(p))

    assert Path(presets.preset_files("STANDARD", SD15).adapter) == path
    assert len(calls) == 2
    assert Path(presets.preset_files("PLUS", SD15).adapter) == ipa / "b.safetensors"
    assert len(calls) == 2  # nothing changed: nothing read again

    write_adapter(ipa, "ip-adapter_sd15_vit-G", name="a.safetensors")  # another variant, other size
    assert Path(presets.preset_files("VIT-G", SD15).adapter) == path
    assert calls[2:] == [str(path)]
    with pytest.raises(IPAdapterError, match="preset STANDARD: no SD1.5"):
        presets.preset_files("STANDARD", SD15)
    assert len(calls) == 3

    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same size, touched
    model_folders.scan("ipadapter")
    assert calls[3:] == [str(path)]


# ---------------------------------------------------------------- the node

def test_node_loads_the_preset_files(folders, models, monkeypatch):
    import comfy.clip_vision

    from ipadapter_ext.nodes.presets import IPAUnifiedLoader

    loaded = []
    monkeypatch.setattr(comfy.clip_vision, "load", lambda p: loaded.append(p) or "clip vision model")
    handle, clip_vision = IPAUnifiedLoader.execute(models[SD15], "PLUS").result
    assert Path(handle.path) == folders["main"] / "ip-adapter_sd15.safetensors"
    assert (handle.config.projection, handle.config.num_tokens) == ("resampler", 16)
    assert loaded == [str(folders["clip_vision"] / "CLIP-ViT-H.safetensors")] and clip_vision == "clip vision model"


def test_node_refuses_a_model_of_another_family(folders, monkeypatch):
    import types

    from ipadapter_ext.ip_adapter_core.errors import IPAdapterMismatchError
    from ipadapter_ext.nodes.presets import IPAUnifiedLoader

    flux_like = types.SimpleNamespace(model=types.SimpleNamespace(
        model_config=types.SimpleNamespace(unet_config={"context_dim": 4096})))
    with pytest.raises(IPAdapterMismatchError, match="none of them"):
        IPAUnifiedLoader.execute(flux_like, "STANDARD")


# ---------------------------------------------------------------- Kolors and composition

def test_kolors_and_composition_presets_find_their_files(tmp_path, presets, monkeypatch):
    """KOLORS takes Kolors-IP-Adapter-Plus (told by its tensors) on a Kolors UNet only, with ViT-L/14 at 336 px
    (told from the 224-px one by its positions); COMPOSITION prefers a plus file named 'composition'."""
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
    from support.kolors_models import plus_state_dict

    ipa, cv = tmp_path / "ipadapter", tmp_path / "clip_vision"
    write_sparse_safetensors(ipa / "ip_adapter_plus_general.safetensors",
                             {k: tuple(v.shape) for k, v in plus_state_dict(device="meta").items()})
    write_variant(ipa, "z_plus.safetensors", "ip-adapter-plus_sd15")
    write_variant(ipa, "ip_plus_composition_sd15.safetensors", "ip-adapter-plus_sd15")
    point_folders(monkeypatch, [ipa], [cv])
    with pytest.raises(IPAdapterError, match=r"ViT-L/14-336 CLIP vision model; none found.*Kwai-Kolors/Kolors-IP-"
                                             r"Adapter-Plus/resolve/main/image_encoder/pytorch_model\.bin"):
        presets.preset_files("KOLORS", SDXL, "kolors")
    for positions, name in ((257, "vit-l.safetensors"), (577, "clip-vit-large-patch14-336.safetensors")):
        write_sparse_safetensors(cv / name, {"vision_model.embeddings.class_embedding": (1024,),
                                             "visual_projection.weight": (768, 1024),
                                             "vision_model.embeddings.position_embedding.weight": (positions, 1024)})
    got = presets.preset_files("KOLORS", SDXL, "kolors")
    assert (Path(got.adapter).name, Path(got.clip_vision).name) == ("ip_adapter_plus_general.safetensors",
                                                                     "clip-vit-large-patch14-336.safetensors")
    with pytest.raises(IPAdapterError, match="not a Kolors UNet.*ComfyUI-Kolors-MZ"):
        presets.preset_files("KOLORS", SDXL)
    with pytest.raises(IPAdapterError, match="is a Kolors UNet; the PLUS adapters were trained for SDXL.*KOLORS"):
        presets.preset_files("PLUS", SDXL, "kolors")
    write_sparse_safetensors(cv / "vit-h.safetensors", {"vision_model.embeddings.class_embedding": (1280,),
                                                        "visual_projection.weight": (1024, 1280)})
    assert Path(presets.preset_files("COMPOSITION", SD15).adapter).name == "ip_plus_composition_sd15.safetensors"
    assert Path(presets.preset_files("PLUS", SD15).adapter).name == "z_plus.safetensors"  # not the composition one


def test_the_sd35_adapter_takes_siglip_with_or_without_its_pooling_head(tmp_path, presets, monkeypatch):
    """ComfyUI's sigclip_vision_patch14_384 has no pooling head: InstantX's Flux adapter needs it, the SD3.5 adapter
    (penultimate states) does not."""
    from support.sd3_models import sd3_adapter_state_dict

    from ipadapter_ext.ip_adapter_core.files import model_folders as mf
    from ipadapter_ext.ip_adapter_core.files.config import detect_config
    from ipadapter_ext.ip_adapter_core.files.formats import adapter_sections

    cv = tmp_path / "clip_vision"
    write_sparse_safetensors(cv / "sigclip_vision_patch14_384.safetensors",
                             {mf.SIGLIP_WIDTH: (1152,), mf.HF_POSITIONS: (729, 1152)})
    point_folders(monkeypatch, [tmp_path], [cv])
    sections, rest = adapter_sections(sd3_adapter_state_dict(device="meta"))
    assert Path(mf.find_clip_vision_file(detect_config(sections, "sd3", rest))).name == \
        "sigclip_vision_patch14_384.safetensors"
