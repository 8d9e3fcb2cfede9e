"""Flux IP-Adapter files: XLabs v1 and v2 detected from keys and shapes (the published shapes, on the meta
device; and small ones of the same layout on disk), InstantX's layout and damaged files refused by name,
and Flux's λ-per-block rows (weight types, blocks, custom entries)."""
import pytest
import torch

from support.flux_models import CLIP_EMBEDS, CONTEXT, XLABS_TOKENS, instantx_state_dict, write_xlabs, xlabs_state_dict
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError, IPAdapterFileError
from ipadapter_ext.ip_adapter_core.files import config as C
from ipadapter_ext.ip_adapter_core.files.adapter import load_adapter, read_adapter
from ipadapter_ext.ip_adapter_core.files.formats import adapter_sections
from ipadapter_ext.ip_adapter_core.prompt.blocks import layer_lambdas


def detect(flat, path="ip_adapter.safetensors"):
    sections, rest = adapter_sections(flat)
    return C.detect_config(sections, path, rest)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_published_xlabs_shapes_are_detected(version):
    """19 double blocks of 3072 over 4096-wide tokens; v1 and v2 told apart by proj.weight's rows only."""
    cfg = detect(xlabs_state_dict(version, device="meta"))
    assert (cfg.family, cfg.projection, cfg.num_tokens, cfg.encoder, cfg.feature, cfg.feature_dim, cfg.cross_dim) \
        == ("flux", "linear", XLABS_TOKENS[version], "ViT-L/14", C.IMAGE_EMBEDS, CLIP_EMBEDS, CONTEXT)
    assert cfg.layer_hidden == (3072,) * 19 and cfg.ip_bias and not cfg.ip_inside and cfg.single_blocks == 0
    assert cfg.uncond == C.UNCOND_ENCODE_BLACK_IMAGE
    assert [l.key for l in cfg.layers] == [("double_block", i) for i in range(19)]
    assert {l.heads for l in cfg.layers} == {24}
    assert cfg.name == f"Flux.1 XLabs IP-Adapter {version} ({XLABS_TOKENS[version]} tokens, ViT-L/14 image_embeds)"


@pytest.mark.parametrize("fmt_name", ["flux-ip-adapter.safetensors", "ip-adapter_sd15.safetensors"])
def test_a_small_xlabs_file_loads_strictly_whatever_its_name(tmp_path, fmt_name):
    path = write_xlabs(tmp_path / fmt_name, "v2", double=2, hidden=256)
    cfg, _ = read_adapter(path)
    assert (cfg.family, cfg.num_tokens, cfg.layer_hidden) == ("flux", 16, (256, 256))
    assert "2 blocks 256 wide" in cfg.name
    model = load_adapter(path).model
    layer = model.layer(1)
    assert layer.to_k_ip.bias.shape == (256,) and layer.to_v_ip.weight.shape == (256, CONTEXT)
    flat = xlabs_state_dict("v2", 2, 256, dtype=torch.float32)
    assert torch.equal(layer.to_v_ip.bias, flat["double_blocks.1.processor.ip_adapter_double_stream_v_proj.bias"])
    assert torch.equal(model.image_proj.proj.weight, flat["ip_adapter_proj_model.proj.weight"])


def refused(flat, *fragments):
    with pytest.raises(IPAdapterFileError) as e:
        detect(flat, "some/ip_adapter.safetensors")
    msg = str(e.value)
    assert "some/ip_adapter.safetensors" in msg, msg
    for f in fragments:
        assert f.lower() in msg.lower(), msg


def test_damaged_xlabs_files_are_refused_by_name():
    base = xlabs_state_dict("v1", device="meta")
    missing = {k: v for k, v in base.items() if not k.startswith("double_blocks.7.")}
    refused(missing, "18 blocks", "missing", "download it again")
    wrong = dict(base)
    wrong["double_blocks.3.processor.ip_adapter_double_stream_v_proj.weight"] = torch.empty(3072, 2048, device="meta")
    refused(wrong, "3.to_v_ip.weight", "(3072, 2048)", "download it again")
    other_encoder = dict(base)
    other_encoder["ip_adapter_proj_model.proj.weight"] = torch.empty(4 * CONTEXT, 1024, device="meta")
    refused(other_encoder, "width 1024", "ViT-L/14")
    no_bias = {k: v for k, v in base.items() if not (k.startswith("double_blocks.") and k.endswith("bias"))}
    refused(no_bias, "layout this extension does not know", "XLabs", "InstantX")


def test_hostile_flux_shapes_are_refused_by_name():
    """Shapes no release has, in the places the detection reads: a clear refusal, never an exception of Python."""
    m = "meta"
    for key, shape, words in (("ip_adapter_proj_model.proj.weight", (16384,), "not a matrix"),
                              ("ip_adapter_proj_model.norm.weight", (4096, 1), "not a vector"),
                              ("ip_adapter_proj_model.norm.weight", (0,), "width 0")):
        flat = xlabs_state_dict("v1", device=m)
        flat[key] = torch.empty(shape, device=m)
        refused(flat, words)
    flat = {k: (torch.empty(v.shape[0], 0, device=m) if v.ndim == 2 and k.startswith("double") else v)
            for k, v in xlabs_state_dict("v1", device=m).items()}
    refused(flat, "layout this extension does not know")


def test_published_instantx_shapes_are_detected():
    cfg = detect(instantx_state_dict(device="meta"))
    assert (cfg.family, cfg.projection, cfg.num_tokens, cfg.encoder, cfg.feature, cfg.feature_dim, cfg.cross_dim) \
        == ("flux", "mlp-tokens", 128, C.SIGLIP, C.POOLED, 1152, CONTEXT)
    assert cfg.flux_kind == "instantx" and cfg.ip_inside and not cfg.ip_bias
    assert (cfg.double_blocks, cfg.single_blocks) == (19, 38) and cfg.uncond == C.UNCOND_PROJECT_ZEROS
    keys = [(l.key, l.file_index) for l in cfg.layers]
    assert keys == [(("double_block", i), i) for i in range(19)] + [(("single_block", i), 19 + i) for i in range(38)]
    assert cfg.name == "Flux.1 InstantX IP-Adapter (128 tokens, SigLIP so400m/14-384 pooled)"


def test_damaged_instantx_files_are_refused_by_name():
    refused({k: v for k, v in instantx_state_dict(device="meta").items() if not k.startswith("ip_adapter.56.")},
            "56 blocks", "layout this extension does not know")
    bad = instantx_state_dict(device="meta")
    bad["image_proj.proj.0.weight"] = torch.empty(2304, 1024, device="meta")
    refused(bad, "inconsistent shapes", "proj.0 [2304, 1024]")
    bad = instantx_state_dict(device="meta")
    bad["ip_adapter.3.to_k_ip.bias"] = torch.empty(3072, device="meta")
    refused(bad, "unexpected: ['3.to_k_ip.bias']")


def test_flux_model_and_redux_files_are_named():
    refused({"double_blocks.0.img_attn.qkv.weight": torch.empty(9, 3, device="meta")}, "Flux diffusion model",
            "models/diffusion_models")
    refused({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": torch.empty(9, 3, device="meta")},
            "Flux diffusion model")
    refused({"redux_up.weight": torch.empty(12288, 1152, device="meta")}, "Redux", "models/style_models")


# ---------------------------------------------------------------------------- λ per block on Flux

def flux_layers(double=19):
    return detect(xlabs_state_dict("v1", double=double, device="meta")).layers


def test_flux_blocks_all_and_custom():
    layers = flux_layers()
    table = layer_lambdas("flux", layers=layers)
    assert set(table) == {("double_block", i) for i in range(19)} and {m for m, _ in table.values()} == {1.0}
    table = layer_lambdas("flux", blocks="custom", custom="double 0-9 = 1, double 10-18 = 0.5; double 3 = 0",
                          layers=layers)
    mults = {k[1]: m for k, (m, _) in table.items()}
    assert mults == {**{i: 1.0 for i in range(10)}, **{i: 0.5 for i in range(10, 19)}, 3: 0.0}
    table = layer_lambdas("flux", blocks="custom", custom="double 18 = 2", layers=layers)
    assert {k[1] for k, (m, _) in table.items() if m} == {18}


@pytest.mark.parametrize("kwargs, fragments", [
    (dict(weight_type="ease in"), ["'ease in'", "SD1.5 and SDXL", "linear"]),
    (dict(weight_type="style transfer precise"), ["UNets", "custom"]),
    (dict(blocks="style"), ["UNet blocks", "'all' or 'custom'"]),
    (dict(blocks="custom", custom="single 0 = 1"), ["does not act in", "double 0-18"]),
    (dict(blocks="custom", custom="double 0-99999999999 = 1"), ["does not act in", "double 0-18"]),
    (dict(blocks="custom", custom="double 19 = 1"), ["does not act in"]),
    (dict(blocks="custom", custom="input 8 = 1"), ["cannot read", "double 0-18 = 1"]),
    (dict(blocks="custom", custom="double 1 = nan"), ["double 1"]),
    (dict(blocks="custom", custom=""), ["no entries"]),
    (dict(scaling="K+V w/ C penalty"), ["C-penalty", "V only"]),
])
def test_flux_refuses_what_is_defined_for_unets_only(kwargs, fragments):
    with pytest.raises(IPAdapterError) as e:
        layer_lambdas("flux", layers=flux_layers(), **kwargs)
    for f in fragments:
        assert f.lower() in str(e.value).lower(), str(e.value)


def test_flux_accepts_k_plus_v_scaling():
    assert layer_lambdas("flux", layers=flux_layers(2), scaling="K+V")


def test_flux_embeds_files_keep_their_config(tmp_path):
    """Saved features of a Flux adapter load back with their config (the Flux fields included); a file of an SD
    adapter written before those fields existed still loads; a family/field mismatch is refused."""
    import dataclasses
    import json

    from ipadapter_ext.ip_adapter_core.prompt.embeds import ImagePrompt
    from ipadapter_ext.ip_adapter_core.prompt.embeds_io import load_prompt, parse_config, save_prompt

    cfg = detect(xlabs_state_dict("v2", double=2, hidden=256, device="meta"))
    pos, neg = torch.randn(1, 16, CONTEXT), torch.randn(1, 16, CONTEXT)
    back = load_prompt(save_prompt(ImagePrompt(pos, neg, cfg, "x.safetensors"), tmp_path / "p.ipaembeds"))
    assert back.config == cfg and torch.equal(back.positive, pos)
    raw = dataclasses.asdict(cfg)
    with pytest.raises(IPAdapterError, match="not the config of an XLabs or InstantX Flux adapter"):
        parse_config(json.dumps({**raw, "flux_kind": "instantx"}), "p.ipaembeds")
    sd = detect({"image_proj.proj.weight": torch.empty(3072, 1024, device="meta"),
                 "image_proj.proj.bias": torch.empty(3072, device="meta"),
                 "image_proj.norm.weight": torch.empty(768, device="meta"),
                 "image_proj.norm.bias": torch.empty(768, device="meta"),
                 **{f"ip_adapter.{l.file_index}.to_{kv}_ip.weight": torch.empty(l.hidden, 768, device="meta")
                    for l in C.layers_of_width("sd15", 320) for kv in "kv"}})
    old = {k: v for k, v in dataclasses.asdict(sd).items() if k not in ("flux_kind", "single_blocks")}
    assert parse_config(json.dumps(old), "old.ipaembeds") == sd
    with pytest.raises(IPAdapterError, match="which only Flux adapters have"):
        parse_config(json.dumps({**old, "single_blocks": 3}), "p.ipaembeds")
