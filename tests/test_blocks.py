"""λ per layer has one owner (blocks.py): no second definition of the block groups or weight types in the
product code, and the one function from settings to per-layer λ is what the weight node and the converter use.
No host needed."""
import re
import subprocess
from pathlib import Path

import pytest

from ipadapter_ext.ip_adapter_core.prompt import blocks
from ipadapter_ext.ip_adapter_core.prompt.blocks import (BLOCK_CHOICES, DEFAULT_ROUTE, INSTANTSTYLE_BLOCKS,
                                                         IPADAPTER_PLUS_BLOCKS, WEIGHT_TYPES, block_weights,
                                                         layer_lambdas, layer_table)
from ipadapter_ext.ip_adapter_core.convert import plus_nodes
from ipadapter_ext.ip_adapter_core.files.layers import layers_for

REPO = Path(__file__).resolve().parent.parent
HOME = "ip_adapter_core/prompt/blocks.py" if (REPO / "ip_adapter_core/prompt").is_dir() else "ip_adapter_core/blocks.py"
# a ComfyUI block written as data: ("input", 8), ('output', 1) ...
BLOCK_KEY = re.compile(r"\(\s*[\"'](input|output|middle)[\"']\s*,\s*\d+\s*\)")
# a table of blocks or weight types under any name that says so
TABLE_NAME = re.compile(r"^\s*[A-Z_]*(BLOCKS|BLOCK_PRESETS|BLOCK_GROUPS|WEIGHT_TYPES)\b\s*[:=]", re.M)
# their node schemas (convert/plus_nodes.py) are a transcription of the other extension's option lists
THEIR_SCHEMAS = "ip_adapter_core/convert/plus_nodes.py"


def product_files():
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "ip_adapter_core", "nodes", "scripts", "bench", "web/js", "__init__.py"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return [f for f in out if f.endswith((".py", ".js")) and (REPO / f).is_file()]


def test_block_groups_and_weight_types_are_defined_once():
    files = product_files()
    assert HOME in files and len(files) > 40, files
    second = []
    for f in files:
        if f == HOME:
            continue
        text = (REPO / f).read_text(encoding="utf-8")
        second += [f"{f}: block {m.group(0)}" for m in BLOCK_KEY.finditer(text)]
        second += [f"{f}: table {m.group(0).strip()}" for m in TABLE_NAME.finditer(text) if f != THEIR_SCHEMAS]
    assert not second, f"λ per layer has one home, {HOME}; found a second definition: {second}"
    # the check can fail: the home itself holds what it looks for
    home = (REPO / HOME).read_text(encoding="utf-8")
    assert BLOCK_KEY.search(home) and TABLE_NAME.search(home)


def test_their_weight_types_are_ours():
    """Their schema lists the option names their nodes accept; ours transcribe the same types."""
    assert WEIGHT_TYPES == plus_nodes.WEIGHT_TYPES


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_two_sd15_vocabularies_are_side_by_side(family):
    """The blocks input (InstantStyle's positions) and the weight types (the popular extension's groups) agree
    on SDXL and differ on SD1.5 only as the comment in blocks.py says."""
    blocks_of = {l.key[:2] for l in layers_for(family)}
    for table in (INSTANTSTYLE_BLOCKS, IPADAPTER_PLUS_BLOCKS):
        for group in ("style", "composition"):
            assert set(table[family][group]) <= blocks_of, (family, group)
    same = INSTANTSTYLE_BLOCKS[family] == IPADAPTER_PLUS_BLOCKS[family]
    assert same == (family == "sdxl")


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("weight_type", ["linear", "ease in", "style transfer precise", "composition precise"])
@pytest.mark.parametrize("choice,custom", [("all", ""), ("style", ""), ("style and composition", ""),
                                           ("custom", "input 8 = 0.5, output 1 = 2")])
def test_layer_lambdas_is_the_product_of_the_weight_type_and_the_blocks(family, weight_type, choice, custom):
    if choice == "custom" and family == "sd15":
        custom = "input 8 = 0.5, output 4 = 2"
    got = layer_lambdas(family, weight_type, choice, custom, 2.0, 3.0)
    table = layer_table(family, weight_type, 2.0, 3.0)
    chosen = block_weights(family, choice, custom)
    assert set(got) == {l.key for l in layers_for(family)}
    for key, (mult, route) in got.items():
        assert route == table[key][1]
        assert mult == table[key][0] * (1.0 if chosen is None else chosen.get(key, 0.0))
    assert choice in BLOCK_CHOICES and any(r != DEFAULT_ROUTE for _, r in got.values()) == ("precise" in weight_type)


def test_the_prompt_uses_layer_lambdas():
    """ImagePrompt.weighted stores exactly layer_lambdas' multipliers and non-default routes."""
    import torch

    from ipadapter_ext.ip_adapter_core.files.config import AdapterConfig
    from ipadapter_ext.ip_adapter_core.prompt.embeds import ImagePrompt

    cfg = AdapterConfig("sdxl", "linear", 4, "ViT-H/14", "image_embeds", 1024, 2048, (640,) * 70, "x")
    p = ImagePrompt(torch.zeros(1, 4, 2048), torch.zeros(1, 4, 2048), cfg)
    w = p.weighted(0.7, "style", weight_type="composition precise", composition_boost=3.0)
    want = layer_lambdas("sdxl", "composition precise", "style", "", 1.0, 3.0)
    assert dict(w.layer_weights) == {k: m for k, (m, _) in want.items()}
    assert dict(w.layer_routes) == {k: r for k, (_, r) in want.items() if r != DEFAULT_ROUTE}
    assert blocks.SCALING_MODES[0] == w.scaling
