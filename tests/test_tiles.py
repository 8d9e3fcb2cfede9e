"""Tiled references: tile boxes and masks against boxes written out by hand; the tiled node
with one tile against Encode -> Project -> Weight -> Apply; the enhancer against its stated
mix, computed here from separately encoded cells."""
import pytest
import torch
import torch.nn.functional as F

from ipadapter_ext.ip_adapter_core.prompt import tiles as T
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError

# (height, width, tile) -> boxes (y0, x0, y1, x1), worked out by hand:
# n = ceil(long / s) tiles, starts round(i·(long - s)/(n - 1)).
BOXES = {
    (64, 64, 0): [(0, 0, 64, 64)],                                           # 1:1, one tile
    (64, 128, 0): [(0, 0, 64, 64), (0, 64, 64, 128)],                        # 2:1, no overlap
    (100, 210, 0): [(0, 0, 100, 100), (0, 55, 100, 155), (0, 110, 100, 210)],  # 2.1:1: 3 tiles
    (300, 100, 0): [(0, 0, 100, 100), (100, 0, 200, 100), (200, 0, 300, 100)],  # 1:3
    # 1000 wide × 333 tall: 4 tiles, starts 0, 222.33, 444.67, 667 rounded
    (333, 1000, 0): [(0, 0, 333, 333), (0, 222, 333, 555), (0, 445, 333, 778), (0, 667, 333, 1000)],
    # a given tile side: a 2×2 grid, rows overlapping by 32
    (64, 96, 48): [(0, 0, 48, 48), (0, 48, 48, 96), (16, 0, 64, 48), (16, 48, 64, 96)],
    (50, 40, 500): [(0, 0, 40, 40), (10, 0, 50, 40)],                        # tile larger than the image
}


@pytest.mark.parametrize("key", list(BOXES))
def test_tile_grid_boxes(key):
    h, w, tile = key
    assert T.tile_grid(h, w, tile) == BOXES[key]


@pytest.mark.parametrize("key", list(BOXES))
def test_tile_masks_partition_the_image(key):
    h, w, _ = key
    boxes = BOXES[key]
    m = T.tile_masks(boxes, h, w)
    assert m.shape == (len(boxes), h, w)
    assert torch.allclose(m.sum(0), torch.ones(h, w), atol=1e-6)
    for (y0, x0, y1, x1), mi in zip(boxes, m):
        outside = torch.ones(h, w, dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        assert (mi[outside] == 0).all() and (mi[~outside] > 0).all()


def test_tile_masks_share_overlaps_evenly():
    m = T.tile_masks(BOXES[333, 1000, 0], 333, 1000)
    # column 100: tile 0 only; 300: tiles 0 and 1; 500: tiles 1 and 2; 700: tiles 2 and 3; 900: tile 3
    want = {100: (1, 0, 0, 0), 300: (.5, .5, 0, 0), 500: (0, .5, .5, 0), 700: (0, 0, .5, .5), 900: (0, 0, 0, 1)}
    for x, vals in want.items():
        assert m[:, 7, x].tolist() == list(vals), x
    q = T.tile_masks(BOXES[64, 96, 48], 64, 96)
    assert q[:, 20, 10].tolist() == [.5, 0, .5, 0] and q[:, 40, 60].tolist() == [0, .5, 0, .5]
    assert q[:, 5, 5].tolist() == [1, 0, 0, 0] and q[:, 60, 90].tolist() == [0, 0, 0, 1]


def test_bad_geometry_is_refused():
    with pytest.raises(IPAdapterError, match="tile_size"):
        T.tile_grid(10, 10, -1)
    with pytest.raises(IPAdapterError, match="enhance_tiles"):
        T.enhance_cells(torch.rand(1, 3, 8, 3), 4)


def test_enhance_cells_and_merge_against_explicit_loops():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 9, 13, 3, generator=g)
    cells = T.enhance_cells(image, 2)  # cells 4×6, the last row and column dropped
    want = torch.stack([image[b, i * 4:(i + 1) * 4, j * 6:(j + 1) * 6] for b in range(2) for i in range(2)
                        for j in range(2)])
    assert torch.equal(cells, want)

    tiles, gs, d = 3, 4, 5
    states = torch.randn(2 * tiles * tiles, 1 + gs * gs, d, generator=g)
    merged = T.merge_cells(states, tiles, "penultimate_hidden_states")
    vec = torch.randn(2 * tiles * tiles, 7, generator=g)
    assert torch.allclose(T.merge_cells(vec, tiles, "image_embeds"), vec.view(2, 9, 7).mean(1))
    for b in range(2):
        s = states[b * 9:(b + 1) * 9]
        assert torch.allclose(merged[b, 0], s[:, 0].mean(0), atol=1e-6)
        for r in range(gs):
            for c in range(gs):
                # pooled token (r, c) averages the stitched tokens (3r..3r+2, 3c..3c+2)
                acc = torch.zeros(d)
                for R in range(3 * r, 3 * r + 3):
                    for C in range(3 * c, 3 * c + 3):
                        tile, (lr, lc) = (R // gs) * tiles + C // gs, (R % gs, C % gs)
                        acc += s[tile, 1 + lr * gs + lc]
                assert torch.allclose(merged[b, 1 + r * gs + c], acc / 9, atol=1e-5)


# ---------------------------------------------------------------- in the host

@pytest.fixture(scope="module")
def vit_h():
    import comfy.clip_vision

    from support import host_models

    return comfy.clip_vision.load(str(host_models.clip_vision_vit_h()))


@pytest.fixture(scope="module")
def sd15():
    from support.host_unet import comfy_model

    return comfy_model("sd15")


def _attn2(model):
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


@pytest.mark.host
def test_one_tile_equals_the_untiled_prompt(vit_h, sd15, adapter_file):
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.nodes.apply import IPAApply
    from ipadapter_ext.nodes.image_prompt import IPAEncodeImage, IPAProject
    from ipadapter_ext.nodes.tiles import IPAApplyTiled
    from ipadapter_ext.nodes.weight import IPAWeight

    h = load_adapter_handle(adapter_file("ip-adapter-plus_sd15"))
    image = torch.rand(1, 48, 48, 3, generator=torch.Generator().manual_seed(2))
    tiled, crops, masks = IPAApplyTiled.execute(sd15, h, vit_h, image, 0.8, "where the tile lies", 0.1, 0.9).result
    assert torch.equal(crops, image) and torch.equal(masks, torch.ones(1, 48, 48))

    emb = IPAProject.execute(h, IPAEncodeImage.execute(vit_h, image, "squash").result[0], "concat").result[0]
    plain = IPAApply.execute(sd15, h, IPAWeight.execute(emb, 0.8, "all", "", 0.1, 0.9).result[0]).result[0]
    a, b = _attn2(tiled), _attn2(plain)
    assert set(a) == set(b) and len(a) == 16
    for key in a:
        (ba, sa), = a[key].branches
        (bb, sb), = b[key].branches
        assert sa == sb and ba.mask is None and bb.mask is None
        assert torch.equal(ba.prompt.positive, bb.prompt.positive)
        assert torch.equal(ba.prompt.negative, bb.prompt.negative)
        assert (ba.prompt.weight, ba.prompt.start_at, ba.prompt.end_at) == (0.8, 0.1, 0.9)


@pytest.mark.host
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_two_tiles_where_they_lie_and_everywhere(vit_h, sd15, adapter_file, family):
    """The same tiles, masks and per-tile prompts on every cross-attention layer of SD1.5 (16) and SDXL
    (70; a UNet of the real SDXL layout on the meta device: applying needs no weights)."""
    from support.host_unet import sdxl_family_model

    from ipadapter_ext.ip_adapter_core.files.layers import layers_for
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.ip_adapter_core.prompt.vision import encode, image_prompt
    from ipadapter_ext.nodes.tiles import IPAApplyTiled

    unet = sd15 if family == "sd15" else sdxl_family_model()[0]
    h = load_adapter_handle(adapter_file(f"ip-adapter-plus_{family}" + ("_vit-h" if family == "sdxl" else "")))
    width = h.config.cross_dim
    image = torch.rand(1, 32, 64, 3, generator=torch.Generator().manual_seed(3))
    model, crops, masks = IPAApplyTiled.execute(unet, h, vit_h, image, 1.0, "where the tile lies").result
    assert torch.equal(crops, torch.cat([image[:, :, :32], image[:, :, 32:]]))
    assert masks.shape == (2, 32, 64) and masks[0, :, :32].eq(1).all() and masks[0, :, 32:].eq(0).all()
    patches = _attn2(model)
    assert set(patches) == {l.key for l in layers_for(family)} and len(patches) == (16 if family == "sd15" else 70)
    wants = [image_prompt(h, encode(vit_h, crops[i:i + 1], "squash")).positive for i in range(2)]
    for key, patch in patches.items():
        branches = [b for b, _ in patch.branches]
        assert len(branches) == 2
        for i, b in enumerate(branches):
            assert torch.equal(b.mask, masks[i:i + 1])
            assert torch.equal(b.prompt.positive, wants[i])
    key = layers_for(family)[0].key
    branches = [b for b, _ in patches[key].branches]
    one, _, _ = IPAApplyTiled.execute(unet, h, vit_h, image, 1.0, "everywhere").result
    (b, _), = _attn2(one)[key].branches
    assert b.mask is None and b.prompt.positive.shape == (1, 32, width)
    both = torch.cat([x.prompt.positive for x in branches], dim=1)
    assert torch.allclose(b.prompt.positive, both, atol=1e-3)


@pytest.mark.host
def test_enhancer_ratio_zero_is_plain_and_others_are_the_mix(vit_h):
    from ipadapter_ext.ip_adapter_core.prompt.vision import ZERO_IMAGE_ATTR, encode
    from ipadapter_ext.nodes.tiles import IPAEncodeEnhanced

    image = torch.rand(1, 40, 48, 3, generator=torch.Generator().manual_seed(4))
    plain = encode(vit_h, image, "center")
    zero = IPAEncodeEnhanced.execute(vit_h, image, 2, 0.0).result[0]
    for key in ("image_embeds", "penultimate_hidden_states", ZERO_IMAGE_ATTR):
        assert torch.equal(getattr(zero, key), getattr(plain, key)), key

    mixed = IPAEncodeEnhanced.execute(vit_h, image, 2, 0.25).result[0]
    cells = encode(vit_h, torch.cat([image[:, :20, :24], image[:, :20, 24:], image[:, 20:, :24],
                                     image[:, 20:, 24:]]), "center")
    want_embeds = 0.75 * plain.image_embeds + 0.25 * cells.image_embeds.mean(0, keepdim=True)
    assert torch.allclose(mixed.image_embeds, want_embeds, atol=1e-4)
    s = cells.penultimate_hidden_states.float()
    grid = s[:, 1:].reshape(4, 16, 16, -1)
    stitched = torch.cat([torch.cat([grid[0], grid[1]], dim=1), torch.cat([grid[2], grid[3]], dim=1)], dim=0)
    pooled = F.avg_pool2d(stitched.permute(2, 0, 1), 2).permute(1, 2, 0).reshape(1, 256, -1)
    merged = torch.cat([s[:, :1].mean(0, keepdim=True), pooled], dim=1)
    want = 0.75 * plain.penultimate_hidden_states + 0.25 * merged
    assert torch.allclose(mixed.penultimate_hidden_states, want, atol=1e-3)
    assert torch.equal(getattr(mixed, ZERO_IMAGE_ATTR), getattr(plain, ZERO_IMAGE_ATTR))


@pytest.fixture(scope="module")
def encode_each_once(vit_h):
    """tiles.encode, one image at a time and cached by its pixels: the encoder is not under test here (ViT-H
    takes seconds an image on CPU), and every frame's tiles then get the same features in a batch and alone."""
    from ipadapter_ext.ip_adapter_core.prompt.vision import encode

    seen = {}

    def encode_each(clip_vision, image, crop="center"):
        outs = []
        for one in image:
            key = (crop, one.numpy().tobytes())
            if key not in seen:
                seen[key] = encode(clip_vision, one[None], crop)
            outs.append(seen[key])
        out = type(outs[0])()
        for name, value in vars(outs[0]).items():
            batched = name in ("image_embeds", "penultimate_hidden_states", "last_hidden_state")
            out[name] = torch.cat([getattr(o, name) for o in outs]) if batched else value
        return out

    return encode_each


@pytest.mark.host
@pytest.mark.parametrize("placement", ["where the tile lies", "everywhere"])
def test_one_per_frame_gives_frame_k_the_tiles_of_image_k(vit_h, sd15, adapter_file, encode_each_once, monkeypatch,
                                                          placement):
    """batch "one per frame" (ComfyUI_IPAdapter_plus's IPAdapterTiledBatch): the UNet's output for frame k of a
    2-latent batch (uncond and cond rows) equals latent k run alone with image k tiled on its own; "together"
    gives every frame both images' tiles, as the node did before the option, and differs."""
    from support.host_unet import unet_forward

    from ipadapter_ext.ip_adapter_core.apply.run_state import RunState
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.nodes.tiles import IPAApplyTiled

    monkeypatch.setattr(T, "encode", encode_each_once)
    h = load_adapter_handle(adapter_file("ip-adapter-plus_sd15"))
    g = torch.Generator().manual_seed(6)
    images = torch.rand(2, 32, 64, 3, generator=g)  # 2 tiles each
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 768, generator=g)

    def forward(model, k=None):  # rows: uncond then cond of the frames (both, or frame k alone)
        xs, cs = (x, ctx) if k is None else (x[k:k + 1], ctx[k:k + 1])
        sigma = torch.full((2 * xs.shape[0],), 7.0)
        run = RunState.for_sampling(model, sigma, xs.shape)
        return unet_forward(model, torch.cat([xs, xs]), sigma, torch.cat([cs, cs]), (1, 0), run=run)

    def tiled(image, batch="together"):
        return IPAApplyTiled.execute(sd15, h, vit_h, image, 0.9, placement, 0.0, 1.0, 0, "linear", batch).result[0]

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max())

    per_frame = tiled(images, "one per frame")
    (branch, _), *_ = _attn2(per_frame)[("input", 1, 0)].branches
    assert branch.prompt.positive.shape == ((2, 32, 768) if placement == "everywhere" else (2, 16, 768))
    got = forward(per_frame)
    for k in range(2):
        alone = forward(tiled(images[k:k + 1]), k)
        assert rel(got[k::2], alone) < 1e-5, (k, rel(got[k::2], alone))
    together = tiled(images)
    (branch, _), *_ = _attn2(together)[("input", 1, 0)].branches
    assert branch.prompt.positive.shape == ((1, 64, 768) if placement == "everywhere" else (1, 32, 768))
    assert rel(forward(together), got) > 1e-3
