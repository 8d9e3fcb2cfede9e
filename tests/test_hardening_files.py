"""Files a user (or someone else's workflow) hands us: saved embeds are validated before
use, the CLIP vision finder reads every layout ComfyUI loads and says why it skipped a
file, pickles are opened only where torch makes that safe, and run_workflow.py uploads
nothing from outside its input folders."""
from __future__ import annotations

import dataclasses
import json
import logging
import random

import pytest
import safetensors.torch
import torch

from support.adapter_files import SD15_HIDDEN, CodeRunningPickle
from ipadapter_ext.ip_adapter_core.files import config as cfgmod
from ipadapter_ext.ip_adapter_core.files.model_folders import NotAnEncoder, encoder_of_file
from ipadapter_ext.ip_adapter_core.files.config import AdapterConfig, ResamplerConfig
from ipadapter_ext.ip_adapter_core.prompt.embeds import ImagePrompt
from ipadapter_ext.ip_adapter_core.prompt.embeds_io import FIELD_KINDS, FORMAT, load_prompt, save_prompt
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError, IPAdapterFileError
from ipadapter_ext.ip_adapter_core.files.formats import read_flat_state_dict, torch_unpickles_safely
from support.package_alias import REPO_ROOT

H, G = "ViT-H/14", "ViT-bigG/14"
# (class embedding width, visual projection width) of the OpenCLIP ViT-H/14 and ViT-bigG/14 releases
# (their config.json: hidden_size, projection_dim), written out here, not taken from the code
CLIP_WIDTHS = {H: (1280, 1024), G: (1664, 1280)}

SD15_BASE = AdapterConfig("sd15", "linear", 4, H, "image_embeds", 1024, 768, tuple(SD15_HIDDEN),
                          "project zero image_embeds")
SD15_PLUS = AdapterConfig("sd15", "resampler", 16, H, "penultimate_hidden_states", 1280, 768, tuple(SD15_HIDDEN),
                          "project encoder features of an all-zero normalised image",
                          ResamplerConfig(768, 4, 12, 64, 16, 1280, 768, 4))
SDXL_BIGG = AdapterConfig("sdxl", "linear", 4, G, "image_embeds", 1280, 2048, (640,) * 70,
                          "project zero image_embeds")


# --------------------------------------------------------------------------- A: embeds files

def _tokens(n, width=768, seed=0):
    return torch.randn(1, n, width, generator=torch.Generator().manual_seed(seed))


def _write_embeds(path, positive, negative, config_json):
    """An embeds file as save_prompt lays it out, with whatever contents a test wants."""
    meta = {"format": FORMAT, "config": config_json if isinstance(config_json, str) else json.dumps(config_json),
            "adapter": "x.safetensors"}
    safetensors.torch.save_file({"positive": positive.clone(), "negative": negative.clone()}, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("config", [SD15_BASE, SD15_PLUS], ids=["linear", "resampler"])
def test_embeds_roundtrip_keeps_config_and_tokens(tmp_path, config):
    pos, neg = _tokens(2 * config.num_tokens), _tokens(2 * config.num_tokens, seed=1)
    path = save_prompt(ImagePrompt(pos, neg, config, "a.safetensors"), tmp_path / "p.ipaembeds")
    back = load_prompt(path)
    assert back.config == config and torch.equal(back.positive, pos) and torch.equal(back.negative, neg)


def _cfg(config=SD15_BASE):
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _edit(d, **changes):
    d = dict(d)
    for k, v in changes.items():
        if v is KeyError:
            del d[k]
        else:
            d[k] = v
    return d


t4 = _tokens(4)
MALFORMED = {  # name: (positive, negative, config, fragment of the message)
    "wrong ndim": (torch.zeros(4, 768), torch.zeros(4, 768), _cfg(), "found [4, 768]"),
    "frames differ": (torch.zeros(2, 4, 768), torch.zeros(3, 4, 768), _cfg(), "holds 2 frames but 'negative' 3"),
    "no frames": (torch.zeros(0, 4, 768), torch.zeros(0, 4, 768), _cfg(), "[frames, tokens, 768]"),
    "wrong width": (torch.zeros(1, 4, 2048), torch.zeros(1, 4, 2048), _cfg(), "found [1, 4, 2048]"),
    "token count mismatch": (t4, _tokens(8), _cfg(), "'negative' has 8"),
    "not a multiple": (_tokens(6), _tokens(6), _cfg(), "positive multiple of that"),
    "no tokens": (torch.zeros(1, 0, 768), torch.zeros(1, 0, 768), _cfg(), "holds 0 tokens"),
    "int dtype": (torch.zeros(1, 4, 768, dtype=torch.int32), torch.zeros(1, 4, 768, dtype=torch.int32), _cfg(),
                  "floating-point"),
    "extra field": (t4, t4, _edit(_cfg(), adapter_rank=4), "unknown ['adapter_rank']"),
    "face kind on a CLIP config": (t4, t4, _edit(_cfg(), face="faceid"), "FaceID reads the 512-wide"),
    "bad face kind": (t4, t4, _edit(_cfg(), face="faceid-ultra"), "'face' must be one of"),
    "missing field": (t4, t4, _edit(_cfg(), uncond=KeyError), "missing ['uncond']"),
    "bad family": (t4, t4, _edit(_cfg(), family="sd4"), "'family' must be one of ['sd15', 'sdxl', 'flux', 'sd3']"),
    "bad projection": (t4, t4, _edit(_cfg(), projection="faceid-ultra"), "'projection' must be one of"),
    "bad encoder": (t4, t4, _edit(_cfg(), encoder="ViT-B/16"), "'encoder' must be one of"),
    "bad feature": (t4, t4, _edit(_cfg(), feature="last_hidden_state"), "'feature' must be one of"),
    "string number": (t4, t4, _edit(_cfg(), num_tokens="4"), "'num_tokens' must be a positive integer"),
    "bool number": (t4, t4, _edit(_cfg(), cross_dim=True), "'cross_dim' must be a positive integer"),
    "bad layer list": (t4, t4, _edit(_cfg(), layer_hidden=[320, "640"]), "list of positive integers"),
    "family vs width": (t4, t4, _edit(_cfg(), family="sdxl"), "cross_dim 768"),
    "resampler extra field": (_tokens(16), _tokens(16), _edit(_cfg(SD15_PLUS), resampler={
        **_cfg(SD15_PLUS)["resampler"], "foo": 1}), "config.resampler must have exactly"),
    "resampler missing field": (_tokens(16), _tokens(16), _edit(_cfg(SD15_PLUS), resampler=_edit(
        _cfg(SD15_PLUS)["resampler"], depth=KeyError)), "missing ['depth']"),
    "resampler on linear": (t4, t4, _edit(_cfg(), resampler=_cfg(SD15_PLUS)["resampler"]), "belongs exactly"),
    "config not json": (t4, t4, "{family: sd15", "not JSON"),
    "config not an object": (t4, t4, "[1, 2]", "expected a JSON object"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_embeds_are_refused_naming_the_file(tmp_path, case):
    pos, neg, config, fragment = MALFORMED[case]
    path = _write_embeds(tmp_path / "bad.ipaembeds", pos, neg, config)
    with pytest.raises(IPAdapterError) as e:
        load_prompt(path)
    msg = str(e.value)
    assert str(path) in msg and fragment in msg and "Save Embeds" in msg, msg


def test_every_config_field_has_a_type_check():
    want = {(cls, f.name) for cls in (AdapterConfig, ResamplerConfig) for f in dataclasses.fields(cls)}
    assert set(FIELD_KINDS) == want


@pytest.mark.host
def test_load_embeds_node_rereads_a_changed_file(tmp_path):
    import folder_paths
    from comfy_api.internal import first_real_override

    from ipadapter_ext.nodes.embeds_files import IPALoadEmbeds

    # the name ComfyUI's executor looks for (execution.IsChangedCache), overridden for real
    assert first_real_override(IPALoadEmbeds, "fingerprint_inputs") is not None
    saved = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    try:
        first = ImagePrompt(_tokens(4, seed=1), _tokens(4, seed=2), SD15_BASE)
        save_prompt(first, tmp_path / "x.ipaembeds")
        fp1 = IPALoadEmbeds.fingerprint_inputs(embeds_file="x.ipaembeds")
        assert torch.equal(IPALoadEmbeds.execute("x.ipaembeds").result[0].positive, first.positive)
        # same name, same size, new tokens: a size/mtime check could miss this, the node must not
        second = ImagePrompt(_tokens(4, seed=3), _tokens(4, seed=4), SD15_BASE)
        save_prompt(second, tmp_path / "x.ipaembeds")
        fp2 = IPALoadEmbeds.fingerprint_inputs(embeds_file="x.ipaembeds")
        assert fp1 != fp2
        assert fp2 == IPALoadEmbeds.fingerprint_inputs(embeds_file="x.ipaembeds")  # stable while unchanged
        assert torch.equal(IPALoadEmbeds.execute("x.ipaembeds").result[0].positive, second.positive)
    finally:
        folder_paths.set_input_directory(saved)


# --------------------------------------------------------------------------- B: CLIP vision files

def test_encoder_tables_are_one_table():
    assert cfgmod.ENCODER_BY_EMBEDS_DIM == {1024: H, 1280: G, 768: cfgmod.VIT_L}
    assert cfgmod.ENCODER_BY_HIDDEN_DIM == {1280: H, 1664: G, 1024: cfgmod.VIT_L}
    assert all(cfgmod.encoder_by_widths(*CLIP_WIDTHS[e]) == e for e in (H, G))
    assert cfgmod.encoder_by_widths(1024, 768) == cfgmod.VIT_L  # XLabs' Flux adapters
    assert cfgmod.encoder_by_widths(768, 512) is None  # ViT-B/16


def test_vit_l_at_336_px_is_told_apart_by_its_positions(tmp_path):
    """Kolors' ViT-L/14-336 has ViT-L/14's widths but 577 positions; XLabs' adapters need the 224-px one; another
    size is named with it."""
    from ipadapter_ext.ip_adapter_core.files.model_folders import encoder_of_file

    for positions, name in ((257, cfgmod.VIT_L), (577, cfgmod.VIT_L_336), (1025, f"{cfgmod.VIT_L} at 448 px")):
        sd = {**_clip_state("hf", None, widths=(1024, 768)),
              "vision_model.embeddings.position_embedding.weight": torch.zeros(positions, 1024, dtype=torch.float16)}
        safetensors.torch.save_file(sd, str(tmp_path / f"{positions}.safetensors"))
        assert encoder_of_file(tmp_path / f"{positions}.safetensors") == name


def _clip_state(layout, encoder, widths=None):
    """Only the tensors that identify an encoder, at its real shapes."""
    width, proj = widths or CLIP_WIDTHS[encoder]
    if layout == "hf":
        return {"vision_model.embeddings.class_embedding": torch.zeros(width, dtype=torch.float16),
                "visual_projection.weight": torch.zeros(proj, width, dtype=torch.float16)}
    return {"visual.class_embedding": torch.zeros(width, dtype=torch.float16),
            "visual.proj": torch.zeros(width, proj, dtype=torch.float16),
            # ComfyUI converts OpenCLIP keys only when this key exists; its shape is never read
            "visual.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(3, 1, dtype=torch.float16)}


def _write_clip(path, sd, container):
    if container == "safetensors":
        safetensors.torch.save_file(sd, str(path))
    elif container == "zip pickle":
        torch.save(sd, path)
    elif container == "state_dict pickle":  # as training checkpoints wrap it; ComfyUI unwraps it
        torch.save({"state_dict": sd, "epoch": 3}, path)
    else:  # the pre-1.6 pickle format, which cannot be memory-mapped
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    return path


CONTAINERS = {"safetensors": ".safetensors", "zip pickle": ".bin", "state_dict pickle": ".pt",
              "legacy pickle": ".ckpt"}


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("layout", ["hf", "openclip"])
@pytest.mark.parametrize("encoder", [H, G])
def test_encoder_is_read_from_every_layout_comfy_loads(tmp_path, encoder, layout, container):
    path = _write_clip(tmp_path / f"enc{CONTAINERS[container]}", _clip_state(layout, encoder), container)
    assert encoder_of_file(path) == encoder


def test_pickles_are_opened_weights_only_and_memory_mapped(tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert encoder_of_file(_write_clip(tmp_path / "a.pth", _clip_state("hf", H), "zip pickle")) == H
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]


def test_clip_vision_pickle_with_code_is_skipped_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    torch.save({**_clip_state("hf", H), "payload": CodeRunningPickle(marker)}, path)
    with pytest.raises(NotAnEncoder, match="refused without being executed"):
        encoder_of_file(path)
    assert not marker.exists(), "reading the pickle executed its code"


@pytest.fixture
def clip_vision_folder(tmp_path):
    """ComfyUI's clip_vision folder pointed at an empty temporary one, restored after."""
    import folder_paths

    folder = tmp_path / "clip_vision"
    folder.mkdir()
    saved = folder_paths.folder_names_and_paths["clip_vision"]
    folder_paths.folder_names_and_paths["clip_vision"] = ([str(folder)], saved[1])
    folder_paths.filename_list_cache.clear()
    yield folder
    folder_paths.folder_names_and_paths["clip_vision"] = saved
    folder_paths.filename_list_cache.clear()


def _fill_with_non_encoders(folder):
    rnd = random.Random(0)
    (folder / "a-garbage.safetensors").write_bytes(b"\xff" * 8 + rnd.randbytes(4096))
    (folder / "a-noise.bin").write_bytes(b"\x00" * 8 + rnd.randbytes(4096))
    safetensors.torch.save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 320)},
                                str(folder / "a-lora.safetensors"))
    safetensors.torch.save_file(_clip_state("hf", None, widths=(1024, 768)), str(folder / "a-vit-l.safetensors"))
    safetensors.torch.save_file(_clip_state("hf", None, widths=(768, 512)), str(folder / "a-vit-b.safetensors"))


@pytest.mark.host
def test_finder_reads_openclip_and_pickles_and_says_why_it_skipped(clip_vision_folder, caplog):
    from ipadapter_ext.ip_adapter_core.files.model_folders import find_clip_vision_file

    folder = clip_vision_folder
    _fill_with_non_encoders(folder)
    _write_clip(folder / "b-openclip-h.safetensors", _clip_state("openclip", H), "safetensors")
    _write_clip(folder / "c-hf-bigg.bin", _clip_state("hf", G), "zip pickle")
    assert find_clip_vision_file(SD15_BASE) == str(folder / "b-openclip-h.safetensors")
    assert find_clip_vision_file(SDXL_BIGG) == str(folder / "c-hf-bigg.bin")

    (folder / "c-hf-bigg.bin").unlink()
    import folder_paths

    folder_paths.filename_list_cache.clear()
    with caplog.at_level(logging.INFO, logger="ipadapter"), pytest.raises(IPAdapterError) as e:
        find_clip_vision_file(SDXL_BIGG)
    msg = str(e.value)
    expected = {"a-garbage.safetensors": "unreadable: not a valid safetensors file",
                "a-noise.bin": "unreadable: it is neither a safetensors file nor a PyTorch checkpoint",
                "a-lora.safetensors": "not a CLIP vision model",
                "a-vit-l.safetensors": f"encoder {cfgmod.VIT_L}, not {G}",
                "a-vit-b.safetensors": "unsupported encoder (width 768, projection 512",
                "b-openclip-h.safetensors": f"encoder {H}, not {G}"}
    for name, why in expected.items():
        assert f"'{name}': {why}" in msg, msg
        assert any(name in r.getMessage() and why in r.getMessage() and r.levelno == logging.INFO
                   for r in caplog.records), name
    assert f"no {G} CLIP vision model found" in msg


@pytest.mark.host
def test_finder_message_names_at_most_twenty_skipped_files(clip_vision_folder, caplog):
    """A folder of many other files gives a message of bounded length; the log still names every one."""
    from ipadapter_ext.ip_adapter_core.files.model_folders import LISTED, find_clip_vision_file

    for i in range(LISTED + 5):
        (clip_vision_folder / f"lora-{i:02d}.safetensors").write_bytes(b"\xff" * 64)
    with caplog.at_level(logging.INFO, logger="ipadapter"), pytest.raises(IPAdapterError) as e:
        find_clip_vision_file(SD15_BASE)
    msg = str(e.value)
    assert msg.count("'lora-") == LISTED and "and 5 more (the log names each)" in msg
    assert sum("lora-" in r.getMessage() for r in caplog.records) == LISTED + 5


@pytest.mark.host
def test_finder_skips_pickles_on_old_torch(clip_vision_folder, monkeypatch):
    from ipadapter_ext.ip_adapter_core.files.model_folders import find_clip_vision_file

    _write_clip(clip_vision_folder / "hf-h.bin", _clip_state("hf", H), "zip pickle")
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(IPAdapterError, match=r"'hf-h.bin': unreadable: it is a pickle, and torch 2.5.1 .*upgrade "
                                             r"torch to 2.6"):
        find_clip_vision_file(SD15_BASE)


# --------------------------------------------------------------------------- D: pickles and torch

@pytest.mark.parametrize("version,safe", [("2.5.1", False), ("2.5.1+cu124", False), ("1.13.1", False),
                                          ("2.6.0", True), ("2.6.0+cpu", True), ("2.10.0", True),
                                          ("2.14.1+cu130", True), ("3.0.0", True), ("nightly", False)])
def test_torch_version_gate(version, safe):
    assert torch_unpickles_safely(version) is safe


def test_bin_adapter_refused_on_old_torch_without_unpickling(tmp_path, monkeypatch):
    path = tmp_path / "ip-adapter.bin"
    torch.save({"image_proj": {"proj.weight": torch.zeros(2, 2)}, "ip_adapter": {}}, path)
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called on old torch"))
    with pytest.raises(IPAdapterFileError) as e:
        read_flat_state_dict(path)
    msg = str(e.value)
    assert str(path) in msg and "torch 2.5.1" in msg and ".safetensors" in msg and "upgrade torch to 2.6" in msg, msg


def test_safetensors_adapter_still_reads_on_old_torch(tmp_path, monkeypatch):
    path = tmp_path / "ip-adapter.safetensors"
    safetensors.torch.save_file({"image_proj.proj.weight": torch.ones(2, 2)}, str(path))
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    assert torch.equal(read_flat_state_dict(path)["image_proj.proj.weight"], torch.ones(2, 2))


# --------------------------------------------------------------------------- C: run_workflow uploads

class _RecordingClient:
    def __init__(self):
        self.uploads = []

    def upload_image(self, path):
        self.uploads.append(path)
        return path.name


@pytest.fixture
def run_workflow():
    from support.repo_scripts import script

    return script("run_workflow")


LOAD_IMAGE_INFO = {"LoadImage": {"input": {"required": {"image": [["on-server.png"], {"image_upload": True}]}}}}


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "secret.txt").write_text("private")
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "ok.png").write_bytes(b"png")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.png").write_bytes(b"png")
    (folder / "link.png").symlink_to(tmp_path / "secret.txt")
    return folder


@pytest.mark.parametrize("value", ["/etc/hostname", "../secret.txt", "..\\secret.txt", "../../../etc/passwd",
                                   "sub/deep.png", "C:secret.txt", "link.png", "<abs secret>"])
def test_workflow_cannot_upload_files_outside_its_input_folders(run_workflow, inputs, value):
    if value == "<abs secret>":
        value = str(inputs.parent / "secret.txt")
    client = _RecordingClient()
    prompt = {"7": {"class_type": "LoadImage", "inputs": {"image": value}}}
    with pytest.raises(run_workflow.comfy_server.ComfyError) as e:
        run_workflow.upload_inputs(client, prompt, LOAD_IMAGE_INFO, [inputs])
    msg = str(e.value)
    assert "node 7" in msg and "input 'image'" in msg and f"'{value}'" in msg and "refusing" in msg, msg
    assert client.uploads == []


def test_workflow_uploads_plain_names_from_its_input_folder(run_workflow, inputs):
    client = _RecordingClient()
    prompt = {"7": {"class_type": "LoadImage", "inputs": {"image": "ok.png"}},
              "8": {"class_type": "LoadImage", "inputs": {"image": "on-server.png"}}}
    assert run_workflow.upload_inputs(client, prompt, LOAD_IMAGE_INFO, [inputs]) == ["ok.png"]
    assert client.uploads == [inputs / "ok.png"]
