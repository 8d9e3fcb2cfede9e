"""Loading and variant detection: every released variant from both formats, and clear refusals."""
import os

import pytest
import torch

from support.adapter_files import VARIANTS, CodeRunningPickle, adapter_sections, write_adapter, write_sections
from ipadapter_ext.ip_adapter_core.files import config as C
from ipadapter_ext.ip_adapter_core.files.adapter import load_adapter, read_adapter
from ipadapter_ext.ip_adapter_core.errors import IPAdapterFileError

FEATURE = {"linear": C.IMAGE_EMBEDS, "resampler": C.PENULTIMATE, "mlp": C.PENULTIMATE}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_detected_from_keys_and_shapes(tmp_path, variant, fmt):
    family, projection, tokens, encoder, feat, cross = VARIANTS[variant]
    # A misleading name proves detection never reads it.
    path = write_adapter(tmp_path, variant, fmt, name=f"ip-adapter-faceid_sdxl_plus.{fmt}")
    cfg, _ = read_adapter(path)
    assert (cfg.family, cfg.projection, cfg.num_tokens, cfg.encoder, cfg.feature, cfg.feature_dim,
            cfg.cross_dim) == (family, projection, tokens, encoder, FEATURE[projection], feat, cross)
    assert cfg.uncond == (C.UNCOND_PROJECT_ZEROS if projection == "linear" else C.UNCOND_ENCODE_ZERO_IMAGE)
    assert len(cfg.layer_hidden) == (16 if family == "sd15" else 70)
    if projection == "resampler":
        dim, heads = {"sd15": (768, 12), "sdxl": (1280, 20)}[family]
        r = cfg.resampler
        assert (r.dim, r.heads, r.dim_head, r.depth, r.num_queries, r.embedding_dim, r.output_dim, r.ff_mult) \
            == (dim, heads, 64, 4, 16, 1280, cross, 4)
    model = load_adapter(path, dtype=torch.float32).model
    assert next(model.parameters()).dtype == torch.float32


def test_both_formats_load_identical_weights(adapter_file):
    a = load_adapter(adapter_file("ip-adapter-plus_sd15", "bin")).model.state_dict()
    b = load_adapter(adapter_file("ip-adapter-plus_sd15", "safetensors")).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float16 for v in a.values())  # stored dtype kept by default


def refused(path, *fragments):
    with pytest.raises(IPAdapterFileError) as e:
        read_adapter(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    for f in fragments:
        assert f.lower() in msg.lower(), msg
    return msg


# FaceID (h94/IP-Adapter-FaceID): name -> (kind, tokens per face, LoRA rank, CLIP vision needed), from FAMILIES.md §1
FACEID_EXPECTED = {
    "ip-adapter-faceid_sd15": ("faceid", 4, 128, None),
    "ip-adapter-faceid-plusv2_sd15": ("faceid-plus", 4, 128, "ViT-H/14"),
    "ip-adapter-faceid-portrait-v11_sd15": ("portrait", 16, 0, None),
    "ip-adapter-faceid_sdxl": ("faceid", 4, 128, None),
    "ip-adapter-faceid-plusv2_sdxl": ("faceid-plus", 4, 128, "ViT-H/14"),
    "ip-adapter-faceid-portrait_sdxl": ("portrait", 16, 0, None),
    "ip-adapter-faceid-portrait_sdxl_unnorm": ("portrait-unnorm", 16, 0, None),
}


@pytest.mark.parametrize("variant", sorted(FACEID_EXPECTED))
def test_detects_every_faceid_layout(variant):
    from support.adapter_files import FACEID_VARIANTS, forget_sections

    kind, tokens, rank, clip = FACEID_EXPECTED[variant]
    cfg = C.detect_config(adapter_sections(variant, dtype=torch.float16), variant)
    forget_sections()
    assert (cfg.face, cfg.num_tokens, cfg.lora_rank, cfg.clip_encoder) == (kind, tokens, rank, clip), cfg
    assert cfg.family == FACEID_VARIANTS[variant][0] and cfg.feature_dim == 512
    assert cfg.normed_face == (kind != "portrait-unnorm")
    assert "FaceID" in cfg.name and str(tokens) in cfg.name


def test_refuses_a_lora_on_a_non_faceid_projection(tmp_path):
    s = adapter_sections("ip-adapter_sd15")
    s["ip_adapter"]["1.to_k_lora.down.weight"] = torch.zeros(128, 320)
    refused(write_sections(s, tmp_path / "x.bin", "bin"), "LoRA", "not a FaceID one")


def test_refuses_a_faceid_lora_of_the_wrong_shape(tmp_path):
    from support.adapter_files import forget_sections

    s = adapter_sections("ip-adapter-faceid_sd15")
    forget_sections()
    s["ip_adapter"]["4.to_q_lora.down.weight"] = torch.zeros(128, 320)  # layer 2 is 640 wide
    refused(write_sections(s, tmp_path / "x.bin", "bin"), "4.to_q_lora.down.weight", "(128, 640)")
    del s["ip_adapter"]["4.to_q_lora.down.weight"]
    refused(write_sections(s, tmp_path / "y.bin", "bin"), "LoRA tensors", "missing")


def test_refuses_checkpoint_lora_clip_vision(tmp_path):
    import safetensors.torch as st

    z = torch.zeros(2, 2)
    cases = {"ckpt": ({"model.diffusion_model.input_blocks.0.0.weight": z}, "checkpoint", "models/checkpoints"),
             "lora": ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": z}, "LoRA", "models/loras"),
             "clipv": ({"vision_model.embeddings.class_embedding": z}, "CLIP vision", "models/clip_vision")}
    for name, (sd, *frags) in cases.items():
        p = tmp_path / f"{name}.safetensors"
        st.save_file(sd, str(p))
        refused(p, *frags)


def test_refuses_truncated_and_garbage(tmp_path):
    for fmt in ("safetensors", "bin"):
        p = write_adapter(tmp_path, "ip-adapter_sd15", fmt)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        refused(p, "download it again")
    g = tmp_path / "garbage.safetensors"
    g.write_bytes(os.urandom(4096))
    refused(g)
    e = tmp_path / "empty.bin"
    e.write_bytes(b"")
    refused(e, "empty")


def test_refuses_incomplete_or_reshaped(tmp_path):
    s = adapter_sections("ip-adapter_sd15")
    del s["ip_adapter"]["31.to_v_ip.weight"]
    refused(write_sections(s, tmp_path / "a.safetensors", "safetensors"), "31.to_v_ip")
    s = adapter_sections("ip-adapter_sd15")
    s["ip_adapter"]["5.to_k_ip.weight"] = torch.zeros(320, 768, dtype=torch.float16)
    refused(write_sections(s, tmp_path / "b.safetensors", "safetensors"), "layer 5", "(640, 768)")
    s = adapter_sections("ip-adapter_sd15")
    s["image_proj"] = {"weird.weight": torch.zeros(3)}
    refused(write_sections(s, tmp_path / "c.safetensors", "safetensors"), "unknown kind")


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    s = adapter_sections("ip-adapter_sd15")
    s["image_proj"]["payload"] = CodeRunningPickle(marker)
    p = tmp_path / "evil.bin"
    torch.save(s, p)
    assert not marker.exists()
    refused(p, "refused without being executed", "Unsupported global: GLOBAL io.open")
    assert not marker.exists(), "loading the pickle executed its code"
    # torch's advice to allow-list the global is not passed on, nor its terminal colour codes
    with pytest.raises(IPAdapterFileError) as e:
        read_adapter(p)
    assert "safe_globals" not in str(e.value) and "\x1b" not in str(e.value)
