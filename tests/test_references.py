"""Reference preparation (crop position, interpolation, sharpening) and noise negatives, each
checked against an independent computation written here (PIL, explicit loops); then, in the
host, IP-Adapter Encode Image encodes exactly what IP-Adapter Prepare Reference shows and is
unchanged without the new options."""
import types

import numpy as np
import pytest
import torch
from PIL import Image

from ipadapter_ext.ip_adapter_core.prompt import references as R
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError

MEAN = (0.48145466, 0.4578275, 0.40821073)
PIL_FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def rand_image(h, w, b=1, seed=0):
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(seed))


def pil_resize(img: torch.Tensor, h: int, w: int, interpolation: str) -> torch.Tensor:
    """[H, W, 3] -> [h, w, 3] with PIL in 32-bit float mode, one channel at a time, clamped to 0..1."""
    chans = [np.asarray(Image.fromarray(img[..., c].numpy().astype(np.float32)).resize(
        (w, h), PIL_FILTERS[interpolation])) for c in range(3)]
    return torch.from_numpy(np.stack(chans, -1)).clamp(0, 1)


def adaptive_avg(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Area resizing by its definition: output cell i averages source rows floor(i·H/h) .. ceil((i+1)·H/h)."""
    H, W, _ = img.shape
    out = torch.empty(h, w, 3)
    for i in range(h):
        r0, r1 = (i * H) // h, -((-(i + 1) * H) // h)
        for j in range(w):
            c0, c1 = (j * W) // w, -((-(j + 1) * W) // w)
            out[i, j] = img[r0:r1, c0:c1].mean(dim=(0, 1))
    return out


# ---------------------------------------------------------------- interpolation and crop

@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "lanczos"])
@pytest.mark.parametrize("hw", [(96, 96), (300, 300), (57, 90)])
def test_interpolation_matches_pil(interpolation, hw):
    """squash (no crop) isolates the filter: shrinking, enlarging, and an aspect change."""
    img = rand_image(*hw, b=2)
    got = R.prepare_reference(img, 64, interpolation, "squash")
    assert got.shape == (2, 64, 64, 3) and got.dtype == img.dtype
    for k in range(2):
        want = pil_resize(img[k], 64, 64, interpolation)
        assert torch.allclose(got[k], want, atol=3e-5), (interpolation, hw, (got[k] - want).abs().max())


@pytest.mark.parametrize("hw,size", [((10, 10), 4), ((23, 17), 5), ((4, 6), 9)])
def test_area_is_adaptive_average_pooling(hw, size):
    img = rand_image(*hw)
    got = R.prepare_reference(img, size, "area", "squash")[0]
    assert torch.allclose(got, adaptive_avg(img[0], size, size), atol=1e-6)


# (image height, width, crop) -> the square (top, left, side) kept, worked out by hand
CROPS = [((60, 100, "center"), (0, 20, 60)), ((60, 100, "left"), (0, 0, 60)), ((60, 100, "right"), (0, 40, 60)),
         ((60, 100, "top"), (0, 20, 60)), ((60, 100, "bottom"), (0, 20, 60)),
         ((101, 60, "center"), (20, 0, 60)), ((101, 60, "top"), (0, 0, 60)), ((101, 60, "bottom"), (41, 0, 60)),
         ((101, 60, "left"), (20, 0, 60)), ((101, 60, "right"), (20, 0, 60)), ((50, 50, "bottom"), (0, 0, 50))]


@pytest.mark.parametrize("case,box", CROPS, ids=[f"{h}x{w}-{c}" for (h, w, c), _ in CROPS])
def test_crop_positions_keep_the_hand_computed_square(case, box):
    h, w, crop = case
    top, left, side = box
    img = rand_image(h, w, seed=h + w)
    got = R.prepare_reference(img, 32, "bilinear", crop)[0]
    want = pil_resize(img[0, top:top + side, left:left + side], 32, 32, "bilinear")
    assert torch.allclose(got, want, atol=3e-5)


@pytest.mark.parametrize("hw,inner,offset", [((40, 80), (8, 16), (4, 0)), ((80, 40), (16, 8), (0, 4)),
                                             ((30, 70), (7, 16), (4, 0)), ((32, 32), (16, 16), (0, 0))])
def test_pad_letterboxes_on_the_mean_colour(hw, inner, offset):
    """Long side resized to 16; the short one round(short·16/long); centred, offsets rounded down."""
    img = rand_image(*hw)
    got = R.prepare_reference(img, 16, "bicubic", "pad", mean=MEAN)[0]
    canvas = torch.tensor(MEAN).expand(16, 16, 3).clone()
    (ih, iw), (t, l) = inner, offset
    canvas[t:t + ih, l:l + iw] = pil_resize(img[0], ih, iw, "bicubic")
    assert torch.allclose(got, canvas, atol=3e-5)
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[t:t + ih, l:l + iw] = False
    assert torch.equal(got[outside], torch.tensor(MEAN).expand(int(outside.sum()), 3))  # exactly: normalises to 0


def test_alpha_channel_is_dropped_and_bad_inputs_are_named():
    img = rand_image(20, 20)
    rgba = torch.cat([img, torch.ones(1, 20, 20, 1)], -1)
    assert torch.equal(R.prepare_reference(rgba, 8), R.prepare_reference(img, 8))
    with pytest.raises(IPAdapterError, match="crop_position: expected one of"):
        R.prepare_reference(img, 8, "bicubic", "middle")
    with pytest.raises(IPAdapterError, match="interpolation: expected one of"):
        R.prepare_reference(img, 8, "hamming")
    with pytest.raises(IPAdapterError, match=r"image: expected an IMAGE batch .* got shape \(20, 20, 3\)"):
        R.prepare_reference(img[0], 8)
    with pytest.raises(IPAdapterError, match="sharpening: expected 0..1, got 1.5"):
        R.prepare_reference(img, 8, sharpening=1.5)


# ---------------------------------------------------------------- sharpening

def hand_sharpen(img: torch.Tensor, a: float) -> torch.Tensor:
    """(1 - a)·x + a·(K * x), K = [[0,-1,0],[-1,5,-1],[0,-1,0]], edges replicated, clamped; explicit loops."""
    H, W, _ = img.shape
    out = torch.empty_like(img)
    for i in range(H):
        for j in range(W):
            def px(y, x):
                return img[min(max(y, 0), H - 1), min(max(x, 0), W - 1)]
            k = 5 * px(i, j) - px(i - 1, j) - px(i + 1, j) - px(i, j - 1) - px(i, j + 1)
            out[i, j] = ((1 - a) * img[i, j] + a * k).clamp(0, 1)
    return out


@pytest.mark.parametrize("amount", [0.0, 0.3, 1.0])
def test_sharpening_is_the_hand_computed_kernel_blend(amount):
    img = rand_image(5, 6, b=2, seed=3) * 0.6 + 0.2
    got = R.sharpen(img, amount)
    for k in range(2):
        assert torch.allclose(got[k], hand_sharpen(img[k], amount), atol=1e-6)
    if amount == 0:
        assert torch.equal(got, img)
    square = img[:, :5, :5]  # size = image size, squash: no resizing, only the sharpening
    assert torch.allclose(R.prepare_reference(square, 5, "bilinear", "squash", amount), R.sharpen(square, amount))


def test_sharpening_follows_the_resize_and_spares_the_pad_border():
    img = rand_image(40, 80)
    got = R.prepare_reference(img, 16, "bilinear", "pad", 0.7, mean=MEAN)[0]
    inner = hand_sharpen(pil_resize(img[0], 8, 16, "bilinear"), 0.7)
    assert torch.allclose(got[4:12], inner, atol=1e-4)
    assert torch.equal(got[:4], torch.tensor(MEAN).expand(4, 16, 3))


# ---------------------------------------------------------------- noise negatives

def test_no_image_means_black_224_and_strength_0_is_the_image():
    assert torch.equal(R.noise_negative(None, "fade", 0.0), torch.zeros(1, 224, 224, 3))
    img = rand_image(300, 400, b=2)
    x = torch.stack([pil_resize(img[k, :, 50:350], 224, 224, "bicubic") for k in range(2)])  # centre square
    for kind in R.NOISE_KINDS:
        assert torch.allclose(R.noise_negative(img, kind, 0.0), x, atol=3e-5), kind


def test_fade_is_a_blend_with_one_uniform_draw():
    img = rand_image(224, 224)
    full = R.noise_negative(img, "fade", 1.0)  # = U: the draw depends on the image and seed, not the strength
    assert 0 <= full.min() and full.max() <= 1 and abs(full.mean().item() - 0.5) < 0.01
    assert abs(full.std().item() - (1 / 12) ** 0.5) < 0.01
    assert torch.allclose(R.noise_negative(img, "fade", 0.3), 0.7 * img + 0.3 * full, atol=1e-6)


def test_dissolve_replaces_whole_pixels_with_probability_strength():
    img = rand_image(224, 224)
    u = R.noise_negative(img, "dissolve", 1.0)
    got = R.noise_negative(img, "dissolve", 0.3)
    kept = (got == img).all(-1)
    replaced = (got == u).all(-1)
    assert (kept | replaced).all()
    assert abs(replaced.float().mean().item() - 0.3) < 0.01


def test_gaussian_adds_strength_times_normal_noise():
    grey = torch.full((1, 224, 224, 3), 0.5)
    d = R.noise_negative(grey, "gaussian", 0.1) - grey  # 5 sigma from the clamp: practically unclamped
    assert abs(d.mean().item()) < 0.002 and abs(d.std().item() - 0.1) < 0.002
    assert torch.allclose(R.noise_negative(grey, "gaussian", 0.05) - grey, d / 2, atol=1e-6)  # one draw of N
    black1, black2 = R.noise_negative(None, "gaussian", 0.2), R.noise_negative(None, "gaussian", 0.4)
    inside = (black2 > 0) & (black2 < 1)
    assert torch.allclose(black2[inside], 2 * black1[inside], atol=1e-6) and (black1[black2 == 0] == 0).all()


def pixel_multiset(x):
    rows = x.reshape(-1, 3).numpy()
    return rows[np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))]


@pytest.mark.parametrize("strength", [0.25, 1.0])
def test_shuffle_keeps_the_pixel_multiset(strength):
    img = rand_image(224, 224, b=2)
    got = R.noise_negative(img, "shuffle", strength)
    for k in range(2):
        assert np.array_equal(pixel_multiset(got[k]), pixel_multiset(img[k]))
        moved = (got[k] != img[k]).any(-1).float().mean().item()
        assert strength * 0.95 < moved <= strength  # a drawn pixel may land where it was
    assert not torch.equal(got[0], got[1])


def test_noise_is_deterministic_from_image_and_seed():
    img = rand_image(64, 64)
    for kind in R.NOISE_KINDS:
        a = R.noise_negative(img, kind, 0.5, seed=7)
        assert torch.equal(a, R.noise_negative(img.clone(), kind, 0.5, seed=7))
        assert not torch.equal(a, R.noise_negative(img, kind, 0.5, seed=8))
        assert not torch.equal(a, R.noise_negative(rand_image(64, 64, seed=1), kind, 0.5, seed=7))


def test_blur_is_the_documented_gaussian():
    impulse = torch.zeros(1, 11, 11, 3)
    impulse[0, 5, 5] = 1
    for r in (1, 2, 4):
        sigma = 0.3 * (r - 1) + 0.8
        t = torch.arange(-r, r + 1, dtype=torch.float32)
        k = torch.exp(-t ** 2 / (2 * sigma ** 2))
        k = k / k.sum()
        want = torch.zeros(11, 11)
        want[5 - r:6 + r, 5 - r:6 + r] = k[:, None] * k[None, :]
        got = R.gaussian_blur(impulse, r)[0]
        assert torch.allclose(got, want[..., None].expand(11, 11, 3), atol=1e-6), r
    flat = torch.full((1, 224, 224, 3), 0.25)
    assert torch.allclose(R.noise_negative(flat, "fade", 0.0, blur=3), flat, atol=1e-6)
    noisy = R.noise_negative(flat, "fade", 1.0)
    assert R.noise_negative(flat, "fade", 1.0, blur=3).std() < noisy.std() / 2


def test_noise_inputs_are_checked():
    with pytest.raises(IPAdapterError, match="type: expected one of"):
        R.noise_negative(None, "salt")
    with pytest.raises(IPAdapterError, match="strength: expected 0..1, got 2"):
        R.noise_negative(None, "fade", 2)
    with pytest.raises(IPAdapterError, match="blur: expected a radius"):
        R.noise_negative(None, "fade", 1.0, -1)


# ---------------------------------------------------------------- the encoder's input (host-free stub)

def test_encode_prepare_defaults_are_unchanged_and_options_use_prepare_reference():
    from ipadapter_ext.ip_adapter_core.prompt.vision import prepare

    cv = types.SimpleNamespace(image_size=224, image_mean=list(MEAN))
    img = rand_image(96, 128, b=2)
    for crop, flag in (("center", True), ("squash", False)):
        pixels, f = prepare(cv, img, crop, None)
        assert torch.equal(pixels, img) and f is flag
        assert torch.equal(prepare(cv, img, crop, None, "default", 0.0)[0], img)
    pixels, f = prepare(cv, img, "pad", None)
    canvas = torch.tensor(MEAN).expand(2, 128, 128, 3).clone()
    canvas[:, 16:112] = img
    assert torch.equal(pixels, canvas) and f is False
    for crop, interp, sharp in (("top", "default", 0.0), ("center", "lanczos", 0.0), ("pad", "default", 0.4)):
        pixels, f = prepare(cv, img, crop, None, interp, sharp)
        want = R.prepare_reference(img, 224, "bicubic" if interp == "default" else interp, crop, sharp, MEAN)
        assert f is False and torch.equal(pixels, want)
    with pytest.raises(IPAdapterError, match="interpolation: expected one of"):
        prepare(cv, img, "center", None, "box")


# ---------------------------------------------------------------- in the host

@pytest.fixture(scope="module")
def vit_h():
    import comfy.clip_vision

    from support import host_models

    return comfy.clip_vision.load(str(host_models.clip_vision_vit_h()))


@pytest.fixture
def spy(vit_h, monkeypatch):
    """Records (pixels, crop) of every encode_image call; the real encoder runs only when asked."""
    calls, real = [], vit_h.encode_image

    def fake(image, crop=True):
        calls.append((image.clone(), crop))
        if spy_state["run"]:
            return real(image, crop=crop)
        from comfy.clip_vision import Output
        out = Output()
        out["image_embeds"] = torch.zeros(image.shape[0], 1024)
        return out

    spy_state = {"run": False}
    monkeypatch.setattr(vit_h, "encode_image", fake)
    if getattr(vit_h, "_ipadapter_zero_image", None) is None:  # not compared here: skip its encoder pass
        vit_h._ipadapter_zero_image = torch.zeros(1, 257, 1280)
    return types.SimpleNamespace(calls=calls, state=spy_state, real=real)


@pytest.mark.host
def test_encode_image_sees_exactly_the_prepared_reference(vit_h, spy):
    from ipadapter_ext.nodes.image_prompt import IPAEncodeImage
    from ipadapter_ext.nodes.references import IPAPrepareReference

    img = rand_image(180, 250)
    preview = IPAPrepareReference.execute(img, "lanczos", "right", 0.5).result[0]
    assert preview.shape == (1, 224, 224, 3)
    spy.state["run"] = True
    with torch.inference_mode():
        out = IPAEncodeImage.execute(vit_h, img, "right", None, "lanczos", 0.5).result[0]
        from_preview = IPAEncodeImage.execute(vit_h, preview, "center").result[0]  # the preview, encoded as is
    (pixels, crop), (pixels2, crop2) = spy.calls
    assert torch.equal(pixels, preview) and crop is False
    assert torch.equal(pixels2, preview)  # 224×224 already: ComfyUI's crop and resize leave it alone
    # exact: the same pixels through the same encoder at batch 1
    assert torch.equal(out.image_embeds, from_preview.image_embeds)
    assert torch.equal(out.penultimate_hidden_states, from_preview.penultimate_hidden_states)


@pytest.mark.host
def test_encode_image_without_the_options_is_unchanged(vit_h, spy):
    """Today's behaviour: center -> ComfyUI's own crop, squash -> its resize, pad -> our mean canvas."""
    from ipadapter_ext.nodes.image_prompt import IPAEncodeImage

    img = rand_image(96, 128, b=2)
    mask = torch.ones(96, 128)
    mask[:, :40] = 0
    for crop in ("center", "squash", "pad"):
        spy.calls.clear()
        IPAEncodeImage.execute(vit_h, img, crop, mask)
        IPAEncodeImage.execute(vit_h, img, crop, mask, "default", 0.0)
        (a, fa), (b, fb) = spy.calls
        want = img.clone()
        want[:, :, :40] = torch.tensor(MEAN)
        if crop == "pad":
            canvas = torch.tensor(MEAN).expand(2, 128, 128, 3).clone()
            canvas[:, 16:112] = want
            want = canvas
        assert torch.equal(a, want) and torch.equal(b, want) and fa is fb is (crop == "center")
    spy.state["run"] = True
    spy.calls.clear()
    with torch.inference_mode():
        ours = IPAEncodeImage.execute(vit_h, img[:1], "center").result[0]
        theirs = spy.real(img[:1], crop=True)
    # exact: ComfyUI's own crop and encoder on the same image at batch 1
    assert torch.equal(ours.image_embeds, theirs.image_embeds)
    assert torch.equal(ours.penultimate_hidden_states, theirs.penultimate_hidden_states)


@pytest.mark.host
def test_noise_negative_node_feeds_encode_image():
    from ipadapter_ext.nodes.references import IPANoiseNegative

    img = rand_image(100, 150)
    a = IPANoiseNegative.execute("dissolve", 0.5, 2, img, 3).result[0]
    assert a.shape == (1, 224, 224, 3) and torch.equal(a, R.noise_negative(img, "dissolve", 0.5, 2, 3))
    assert torch.equal(IPANoiseNegative.execute("fade", 0.0, 0).result[0], torch.zeros(1, 224, 224, 3))
