"""λ weighting: block presets against the real block structure, custom lists, ranges."""
import pytest
import torch

from ipadapter_ext.ip_adapter_core.prompt.blocks import block_weights
from ipadapter_ext.ip_adapter_core.files.config import AdapterConfig
from ipadapter_ext.ip_adapter_core.prompt.embeds import ImagePrompt
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError


def test_sdxl_instantstyle_presets():
    # InstantStyle: style = up_blocks.0.attentions.1 = ComfyUI output 1 (10 transformer blocks),
    # composition = down_blocks.2.attentions.1 = ComfyUI input 8.
    assert set(block_weights("sdxl", "style")) == {("output", 1, t) for t in range(10)}
    assert set(block_weights("sdxl", "composition")) == {("input", 8, t) for t in range(10)}
    both = block_weights("sdxl", "style and composition")
    assert len(both) == 20 and set(both.values()) == {1.0}
    assert block_weights("sdxl", "all") is None


def test_sd15_presets_and_custom():
    assert set(block_weights("sd15", "style")) == {("output", 4, 0)}
    assert set(block_weights("sd15", "composition")) == {("input", 8, 0)}
    w = block_weights("sdxl", "custom", "input 8 = 1, output 1 = 0.5; output 1:3 = 0")
    assert w[("input", 8, 9)] == 1.0 and w[("output", 1, 0)] == 0.5 and w[("output", 1, 3)] == 0.0
    assert ("middle", 0, 0) not in w


@pytest.mark.parametrize("text,match", [("input 3 = 1", "valid blocks"), ("banana", "cannot read"),
                                        ("", "no entries")])
def test_custom_errors_say_what_is_valid(text, match):
    with pytest.raises(IPAdapterError, match=match):
        block_weights("sd15", "custom", text)


def test_weighted_prompt_and_ranges():
    cfg = AdapterConfig("sdxl", "linear", 4, "ViT-H/14", "image_embeds", 1024, 2048, (640,) * 70, "x")
    p = ImagePrompt(torch.zeros(1, 4, 2048), torch.zeros(1, 4, 2048), cfg)
    s = p.weighted(0.8, "style", start_at=0.1, end_at=0.9)
    assert s.layer_scale(("output", 1, 4)) == pytest.approx(0.8) and s.layer_scale(("input", 8, 0)) == 0
    assert p.layer_scale(("middle", 0, 9)) == 1.0 and s.start_at == 0.1
    with pytest.raises(IPAdapterError, match="start_at"):
        p.weighted(1.0, start_at=0.7, end_at=0.2)
