"""Node inputs whose cost or effect had no bound (issue 19, item 5): tile_size below its minimum
and tile counts beyond the cap, the enhancer's cells encoded in chunks, numbers in text inputs
(custom_blocks, keyframes, image_weights) and frame weights that are non-finite, absurdly large,
too long to be a number or too many, and CLIP features holding NaN or inf at Project.

Expected tile counts are worked out by hand (ceil(H / s) · ceil(W / s)); the enhancer's expected
features are the stated mix computed here from a stand-in encoder whose features are each
image's mean colour, so every chunking must give them exactly."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from support.adapter_files import SD15_HIDDEN
from ipadapter_ext.ip_adapter_core import input_bounds as B
from ipadapter_ext.ip_adapter_core.prompt import tiles as T
from ipadapter_ext.ip_adapter_core.files.config import AdapterConfig
from ipadapter_ext.ip_adapter_core.prompt.blocks import block_weights
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
from ipadapter_ext.ip_adapter_core.prompt.frames import FrameSpec, curve_weights, parse_weights
from ipadapter_ext.ip_adapter_core.prompt.schedules import make_schedule
from ipadapter_ext.ip_adapter_core.prompt.tokens import parse_image_weights

HUGE = "9" * 400        # float() reads it as inf
BIG = "1" + "0" * 299   # 1e299: finite, 299 digits


# ---------------------------------------------------------------- tiles

@pytest.mark.parametrize("tile", range(1, 8))
def test_tile_size_below_eight_is_refused(tile):
    with pytest.raises(IPAdapterError, match=rf"tile_size: expected 0 \(the short side\) or at least 8 pixels; "
                                             rf"got {tile}"):
        T.tile_grid(768, 768, tile)


@pytest.mark.parametrize("h,w,tile,count", [
    (768, 768, 8, 96 * 96),      # the case: 9,216 tiles
    (768, 768, 95, 9 * 9),       # just over: ceil(768 / 95) = 9 per side
    (256, 16640, 0, 65),         # a 65:1 strip at its short side
])
def test_more_tiles_than_the_cap_are_refused(h, w, tile, count):
    with pytest.raises(IPAdapterError, match=rf"makes {count} tiles; at most 64 are allowed"):
        T.tile_grid(h, w, tile)


def test_tile_counts_up_to_the_cap_are_kept():
    assert len(T.tile_grid(768, 768, 96)) == 64            # 8 × 8
    assert len(T.tile_grid(256, 16384, 0)) == 64           # 64:1
    assert T.tile_grid(64, 64, 0) == [(0, 0, 64, 64)]


def test_tiled_prompts_refuse_before_encoding_or_masks():
    # no encoder at all: the refusal must come before any encoding (and the 9,216 masks)
    image = torch.zeros(1, 768, 768, 3)
    for tile in (3, 8):
        with pytest.raises(IPAdapterError, match="tile_size"):
            T.tiled_prompts(None, None, image, T.PLACEMENTS[0], tile)


@pytest.mark.host
def test_tile_size_schema_documents_the_minimum():
    from ipadapter_ext.nodes.tiles import IPAApplyTiled

    schema = IPAApplyTiled.define_schema()
    tile = next(i for i in schema.inputs if i.id == "tile_size")
    assert (tile.min, tile.step) == (0, 8)  # 0 = the short side; the core refuses 1..7
    assert "at least 8" in tile.tooltip and "64 tiles" in tile.tooltip


# ---------------------------------------------------------------- the enhancer's chunks

class MeanColourEncoder:
    """Stands in for a CLIP vision model: image_embeds = each image's mean colour, hidden states a
    class token and a 2×2 grid all equal to it; records the batch of every encoder call."""

    image_size = 224

    def __init__(self):
        self.calls = []
        self._ipadapter_zero_image = torch.zeros(1, 5, 3)  # vision.zero_image_features' cache

    def encode_image(self, pixels, crop=True):
        import comfy.clip_vision

        self.calls.append(pixels.shape[0])
        out = comfy.clip_vision.Output()
        out["image_embeds"] = pixels.mean((1, 2))
        out["penultimate_hidden_states"] = out["image_embeds"][:, None].expand(-1, 5, -1).clone()
        return out


@pytest.mark.host
def test_enhancer_encodes_its_cells_in_chunks():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 64, 64, 3, generator=g)
    enc = MeanColourEncoder()
    out = T.enhanced_features(enc, image, tiles=4, ratio=0.25)

    cells = 3 * 16
    assert enc.calls[0] == 3                                 # the whole images, one call
    assert sum(enc.calls[1:]) == cells and max(enc.calls[1:]) <= T.ENHANCE_BATCH == 16
    # by hand: a 4×4 grid of 16×16-pixel cells. image_embeds and the class token: the mean over the
    # cells; patch token (r, c) of the 2×2 grid: the mean of the 2×2 cells that pool into it
    whole = image.mean((1, 2))
    cell = image.reshape(3, 4, 16, 4, 16, 3).mean((2, 4))  # [image, row, column, colour]
    want = 0.75 * whole + 0.25 * cell.mean((1, 2))
    assert torch.allclose(out.image_embeds, want, atol=1e-6)
    assert torch.allclose(out.penultimate_hidden_states[:, 0], want, atol=1e-6)
    for r in range(2):
        for c in range(2):
            pooled = cell[:, 2 * r:2 * r + 2, 2 * c:2 * c + 2].mean((1, 2))
            assert torch.allclose(out.penultimate_hidden_states[:, 1 + 2 * r + c], 0.75 * whole + 0.25 * pooled,
                                  atol=1e-6)


# ---------------------------------------------------------------- custom_blocks

@pytest.mark.parametrize("text,match", [
    (f"input 8 = {HUGE}", "at most 128 characters|cannot read"),        # was accepted as inf
    ("input 8 = 5000", r"custom_blocks \(input 8\): every value must be a finite number between -1000 and 1000"),
    (f"input 8 = {'1' * 70}", r"a number of 70 characters.*at most 64"),
    ("input 8 = .", r"custom_blocks \(input 8\): cannot read '.' as a number"),  # was a bare ValueError
    (", ".join(["input 8 = 1"] * 1025), "custom_blocks: 1,025 entries; at most 1,024"),
])
def test_custom_blocks_refuse_absurd_numbers_and_counts(text, match):
    with pytest.raises(IPAdapterError, match=match):
        block_weights("sdxl", "custom", text)


def test_custom_blocks_keep_ordinary_values():
    w = block_weights("sdxl", "custom", ", ".join(["input 8 = 0.5"] * 1023) + ", output 1 = -1000")
    assert w[("input", 8, 0)] == 0.5 and w[("output", 1, 0)] == -1000.0


# ---------------------------------------------------------------- keyframes

@pytest.mark.parametrize("text,match", [
    ("0:5000", r"keyframes \(λ at 0\): every value must be a finite number between -1000 and 1000; found 5000"),
    ("0:1e300", "found 1e\\+300"),                                      # finite, was accepted
    (f"0:{BIG}", "cannot read"),                                        # 300 characters: not read
    (", ".join(f"{i / 1024}:1" for i in range(1025)), "keyframes: 1,025 points; at most 1,024"),
])
def test_keyframes_refuse_absurd_values_and_counts(text, match):
    with pytest.raises(IPAdapterError, match=match):
        make_schedule("keyframes", keyframes=text)


def test_keyframes_up_to_the_cap_are_kept():
    s = make_schedule("keyframes", keyframes=", ".join(f"{i / 1023}:{i % 2}" for i in range(1024)))
    assert len(s.keyframes) == 1024 and s.value(1.0, 0.0) == 1.0


# ---------------------------------------------------------------- image_weights

@pytest.mark.parametrize("text,match", [
    (f"1, {BIG}", r"image_weights: a number of 300 characters"),                 # finite: was accepted
    ("1, 1e300", "image_weights: every value must be a finite number between -1000 and 1000"),
    (f"1, {'0' * 65}", r"image_weights: a number of 65 characters.*at most 64"),
    (", ".join(["1"] * 5000), r"expected 2 weight\(s\).*found 5000 \(1, 1, 1, 1, 1, 1, 1, 1, \.\.\.\)"),
])
def test_image_weights_refuse_absurd_values_and_counts(text, match):
    with pytest.raises(IPAdapterError, match=match):
        parse_image_weights(text, 2)


# ---------------------------------------------------------------- frame weights

@pytest.mark.parametrize("make,match", [
    (lambda: FrameSpec(weights=(1.0, 1e6)), r"frame_weights: every value must be a finite number between -1000 and "
                                            r"1000; found 1e\+06"),
    (lambda: FrameSpec(weights=(1.0, float("inf"))), "finite number"),
    (lambda: FrameSpec(weights=(1.0,) * (B.MAX_FRAMES + 1)), "frame_weights: 100,001 weights; at most 100,000"),
    (lambda: parse_weights(torch.ones(B.MAX_FRAMES + 1)), "frame_weights: 100,001 weights; at most 100,000"),
    (lambda: parse_weights([1.0] * (B.MAX_FRAMES + 1)), "100,001 weights"),
    (lambda: curve_weights("linear", B.MAX_FRAMES + 1, 0.0, 1.0), "frames: expected at least 1 frame and at most"),
])
def test_frame_weights_refuse_absurd_values_and_counts(make, match):
    with pytest.raises(IPAdapterError, match=match):
        make()


def test_frame_weights_up_to_the_cap_are_kept():
    assert len(FrameSpec(weights=(0.5,) * B.MAX_FRAMES).weights) == B.MAX_FRAMES
    assert parse_weights(torch.full((3,), -1000.0)) == (-1000.0,) * 3


# ---------------------------------------------------------------- Project: non-finite CLIP features

SD15_BASE = AdapterConfig("sd15", "linear", 4, "ViT-H/14", "image_embeds", 1024, 768, tuple(SD15_HIDDEN),
                          "project zero image_embeds")


def _adapter():
    """An adapter handle as IPAProject uses it: its config and a projection (any linear map will do)."""
    proj = torch.nn.Sequential(torch.nn.Linear(1024, 4 * 768), torch.nn.Unflatten(-1, (4, 768)))
    return SimpleNamespace(config=SD15_BASE, path="a.safetensors", model=SimpleNamespace(image_proj=proj))


@pytest.mark.host
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_project_refuses_non_finite_features_naming_the_encoder(bad):
    from ipadapter_ext.nodes.image_prompt import IPAProject

    feats = torch.randn(3, 1024, generator=torch.Generator().manual_seed(1))
    feats[1, 7] = bad
    with pytest.raises(IPAdapterError, match=r"image_features: the ViT-H/14 CLIP features hold 1 NaN or infinite "
                                             r"value\(s\) \(image\(s\) \[1\] of the batch\).*--fp32-text-enc"):
        IPAProject.execute(_adapter(), SimpleNamespace(image_embeds=feats), "concat")

    good = SimpleNamespace(image_embeds=torch.zeros(3, 1024))
    with pytest.raises(IPAdapterError, match="negative_features: the ViT-H/14 CLIP features hold 1 NaN"):
        IPAProject.execute(_adapter(), good, "concat", negative_features=SimpleNamespace(image_embeds=feats))


@pytest.mark.host
def test_project_still_projects_finite_features():
    from ipadapter_ext.nodes.image_prompt import IPAProject

    embeds = IPAProject.execute(_adapter(), SimpleNamespace(image_embeds=torch.randn(2, 1024)), "concat").result[0]
    assert embeds.positive.shape == (1, 8, 768) and torch.isfinite(embeds.positive).all()
