"""The layer maps against the real model structures: diffusers' attn_processors order
(which numbers the file's layers) and the UNet ComfyUI builds and calls."""
import re

import pytest
import torch

from ipadapter_ext.ip_adapter_core.files.layers import LAYERS
from support.unet_configs import sd15_config, sdxl_config

CONFIGS = {"sd15": sd15_config, "sdxl": sdxl_config}


def test_sd15_table_matches_reference_numbers():
    """File index (diffusers' attn_processors order) -> ComfyUI key for SD1.5, spelled out by hand."""
    want = {1: ("input", 1, 0), 3: ("input", 2, 0), 5: ("input", 4, 0), 7: ("input", 5, 0),
            9: ("input", 7, 0), 11: ("input", 8, 0), 13: ("output", 3, 0), 15: ("output", 4, 0),
            17: ("output", 5, 0), 19: ("output", 6, 0), 21: ("output", 7, 0), 23: ("output", 8, 0),
            25: ("output", 9, 0), 27: ("output", 10, 0), 29: ("output", 11, 0), 31: ("middle", 0, 0)}
    assert {l.file_index: l.key for l in LAYERS["sd15"]} == want
    assert [l.hidden for l in LAYERS["sd15"]][-1] == 1280 and all(l.heads == 8 for l in LAYERS["sd15"])


def test_sdxl_middle_block_is_last():
    layers = LAYERS["sdxl"]
    assert [l.file_index for l in layers] == list(range(1, 140, 2))
    assert [l.key for l in layers[60:]] == [("middle", 0, t) for t in range(10)]
    assert all(l.dim_head == 64 for l in layers)


def _diffusers_meta_unet(family):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**CONFIGS[family]())


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_file_index_follows_diffusers_attn_processors(family):
    """File index i is the i-th entry of diffusers' attn_processors: check each table entry
    names the diffusers attn2 module that sits at position i, with its width."""
    unet = _diffusers_meta_unet(family)
    names = list(unet.attn_processors)
    modules = dict(unet.named_modules())
    for layer in LAYERS[family]:
        name = names[layer.file_index]
        assert name.endswith("attn2.processor"), name
        attn = modules[name[: -len(".processor")]]
        assert (attn.to_q.out_features, attn.heads) == (layer.hidden, layer.heads), name
    assert len(names) == 2 * len(LAYERS[family])


@pytest.mark.host
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_table_matches_comfyui_unet_and_key_conversion(family):
    """Build ComfyUI's own UNet on the meta device from the config ComfyUI detects for the
    diffusers structure; every attn2 it contains, and the key ComfyUI will call it with,
    must be in the table with the same width and heads, and the diffusers name of each file
    index must convert (through ComfyUI's own key map) to the same ComfyUI key."""
    import comfy.model_detection
    import comfy.ops
    import comfy.utils
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = _diffusers_meta_unet(family)
    sd = {k: torch.empty(v.shape, device="meta") for k, v in unet.state_dict().items()}
    cfg = comfy.model_detection.unet_config_from_diffusers_unet(sd)
    assert cfg is not None, "ComfyUI did not recognise the diffusers structure"
    cfg = {k: v for k, v in cfg.items() if k != "dtype"}
    with torch.device("meta"):
        comfy_unet = UNetModel(**cfg, device="meta", operations=comfy.ops.disable_weight_init)

    found = {}
    for block, seq in (("input", comfy_unet.input_blocks), ("middle", [comfy_unet.middle_block]),
                       ("output", comfy_unet.output_blocks)):
        for number, mod in enumerate(seq):
            for name, sub in mod.named_modules():
                m = re.fullmatch(r"(?:\d+\.)?transformer_blocks\.(\d+)\.attn2", name)
                if m:
                    found[(block, number, int(m.group(1)))] = (sub.to_q.out_features, sub.heads)
    table = {l.key: (l.hidden, l.heads) for l in LAYERS[family]}
    assert found == table

    # diffusers name -> ComfyUI weight name, by ComfyUI's own converter
    to_comfy = comfy.utils.unet_to_diffusers(cfg)
    names = list(unet.attn_processors)
    for layer in LAYERS[family]:
        dname = names[layer.file_index][: -len(".processor")] + ".to_q.weight"
        cname = to_comfy[dname]
        m = re.fullmatch(r"(input_blocks|middle_block|output_blocks)\.?(\d*)\.1\.transformer_blocks\.(\d+)"
                         r"\.attn2\.to_q\.weight", cname)
        assert m, cname
        block = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}[m.group(1)]
        assert (block, int(m.group(2) or 0), int(m.group(3))) == layer.key, (dname, cname)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_narrower_unets_of_the_same_structure_have_the_same_keys(family):
    """Training and test UNets (e.g. 32 base channels) keep every key and file index; only the
    widths scale, so their adapters are handled like any other."""
    from ipadapter_ext.ip_adapter_core.files.layers import base_channels, layers_of_width

    std, tiny = layers_of_width(family, 320), layers_of_width(family, 32)
    assert [(l.key, l.file_index) for l in tiny] == [(l.key, l.file_index) for l in std]
    assert [l.hidden * 10 for l in tiny] == [l.hidden for l in std]
    assert base_channels(family, tiny[0].hidden) == 32 and base_channels(family, std[0].hidden) == 320
