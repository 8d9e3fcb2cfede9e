"""Combining several reference images: the seven modes against hand computation, per-image
weights, the two Combine nodes, and their agreement with IP-Adapter Project."""
import dataclasses
import functools
import math
from types import MappingProxyType

import pytest
import torch

from conftest import assert_close_reordered
from ipadapter_ext.ip_adapter_core.files.config import AdapterConfig
from ipadapter_ext.ip_adapter_core.prompt.embeds import ImagePrompt
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
from ipadapter_ext.ip_adapter_core.prompt.tokens import COMBINE_MODES, combine, parse_image_weights

MODES = ("concat", "add", "subtract", "average", "norm average", "max", "min")
F = torch.tensor([[1.0, 2.0, 3.0, 4.0],
                  [3.0, 0.0, -3.0, 1.0],
                  [2.0, -2.0, 0.0, 4.0]])
R14, R33 = math.sqrt(14), math.sqrt(33)  # norms of columns 0 and 3 of F over the 3 images
BY_HAND = {
    "concat": F.tolist(),
    "add": [[6.0, 0.0, 0.0, 9.0]],
    "subtract": [[1 - 2.5, 2 + 1, 3 + 1.5, 4 - 2.5]],
    "average": [[2.0, 0.0, 0.0, 3.0]],
    # the norm runs over the images per entry: (1, 3, 2) / √14, ...; columns 1 and 2 cancel
    "norm average": [[6 / 3 / R14, 0.0, 0.0, 9 / 3 / R33]],
    "max": [[3.0, 2.0, 3.0, 4.0]],
    "min": [[1.0, -2.0, -3.0, 1.0]],
}


def reference(f, mode):
    """Each mode written out over the image list, independently of tokens.combine."""
    imgs = list(f)
    if mode == "concat":
        return f
    if mode == "add":
        return functools.reduce(torch.add, imgs)[None]
    if mode == "subtract":
        return (imgs[0] - functools.reduce(torch.add, imgs[1:]) / (len(imgs) - 1))[None]
    if mode == "average":
        return (functools.reduce(torch.add, imgs) / len(imgs))[None]
    if mode == "norm average":
        norm = torch.sqrt(functools.reduce(torch.add, [x * x for x in imgs]))
        return (functools.reduce(torch.add, [x / norm for x in imgs]) / len(imgs))[None]
    return functools.reduce(torch.maximum if mode == "max" else torch.minimum, imgs)[None]


def test_mode_names_and_order_match_the_popular_extension():
    assert COMBINE_MODES == MODES


@pytest.mark.parametrize("mode", MODES)
def test_modes_on_hand_made_numbers(mode):
    assert torch.allclose(combine(F, mode), torch.tensor(BY_HAND[mode]), atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_modes_and_weights_on_real_shapes(mode):
    f = torch.randn(3, 257, 1280, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(combine(f, mode), reference(f, mode), atol=1e-5)
    w = [1.0, 0.5, -2.0]
    weighted = torch.stack([f[0] * 1.0, f[1] * 0.5, f[2] * -2.0])
    assert torch.allclose(combine(f, mode, w), reference(weighted, mode), atol=1e-5)
    e = torch.randn(3, 1024, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(combine(e, mode, w), reference(e * torch.tensor(w)[:, None], mode), atol=1e-5)


def test_concat_and_average_stay_bit_identical():
    f = torch.randn(4, 257, 1280)
    assert combine(f, "concat") is f and combine(f, "concat", [1, 1, 1, 1]) is f
    # weights of 1 skip the multiply, so this is the same mean of the same tensor: exact
    assert torch.equal(combine(f, "average", [1.0] * 4), f.mean(dim=0, keepdim=True))


def test_one_image_is_kept_and_subtract_needs_two():
    f = torch.randn(1, 257, 1280)
    for mode in set(MODES) - {"subtract"}:
        assert torch.equal(combine(f, mode), f), mode
    with pytest.raises(IPAdapterError, match="'subtract'.*2 or more images; image_features has 1"):
        combine(f, "subtract")


def test_norm_average_of_an_all_zero_entry_is_zero_not_nan():
    f = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    got = combine(f, "norm average")
    assert got[0, 0] == 0  # 0 / tiny: exactly zero
    # the rest is float32 arithmetic against the hand value in float64: equal up to its rounding
    torch.testing.assert_close(got[0, 1], torch.tensor((1 + 3) / 2 / math.sqrt(10)), rtol=1e-6, atol=0)


def test_image_weights_text():
    assert parse_image_weights("", 3) == [1.0, 1.0, 1.0]
    assert parse_image_weights("  ", 2) == [1.0, 1.0]
    assert parse_image_weights("1.0, 0.5, 0.8", 3) == [1.0, 0.5, 0.8]
    assert parse_image_weights("1;-0.5\n2", 3) == [1.0, -0.5, 2.0]


@pytest.mark.parametrize("text,match", [
    ("1, 0.5", r"image_weights: expected 3 weight\(s\).*found 2 \(1, 0.5\).*leave it empty"),
    ("1, 2, 3, 4", r"expected 3 weight\(s\).*found 4"),
    ("1, nan, 2", r"image_weights: every weight must be a finite number; found 1, nan, 2"),
    ("1, inf, 2", "finite number"),
    ("1, heavy, 2", r"image_weights: cannot read 'heavy' as a number"),
])
def test_bad_image_weights_are_refused(text, match):
    with pytest.raises(IPAdapterError, match=match):
        parse_image_weights(text, 3)


def test_bad_weights_and_mode_in_combine():
    with pytest.raises(IPAdapterError, match=r"image_weights: expected 3 weight\(s\)"):
        combine(F, "add", [1.0])
    with pytest.raises(IPAdapterError, match="finite"):
        combine(F, "concat", [1.0, float("nan"), 1.0])
    with pytest.raises(IPAdapterError, match="combine: expected one of"):
        combine(F, "median")


# ---------------------------------------------------------------- combining projected embeds

def config(kind="linear", tokens=4):
    return AdapterConfig("sd15", kind, tokens, "ViT-H/14", "image_embeds", 1024, 768, (320,) * 16, "x")


def embeds(seed, cfg=None, images=1, **weighting):
    cfg = cfg or config()
    g = torch.Generator().manual_seed(seed)
    t = cfg.num_tokens * images
    return ImagePrompt(torch.randn(1, t, 768, generator=g), torch.randn(1, t, 768, generator=g), cfg,
                       "a.safetensors", **weighting)


def combine_embeds(method, *prompts, weights=None):
    from ipadapter_ext.nodes.combine import IPACombineEmbeds

    inputs = {}
    for i, p in enumerate(prompts, 1):
        inputs[f"embeds_{i}"] = p
        inputs[f"weight_{i}"] = 1.0 if weights is None else weights[i - 1]
    return IPACombineEmbeds.execute(method, **inputs).result[0]


@pytest.mark.host
def test_combine_embeds_concat_puts_tokens_side_by_side():
    a, b = embeds(0), embeds(1)
    out = combine_embeds("concat", a, b, weights=[1.0, 0.5])
    assert torch.equal(out.positive, torch.cat([a.positive, 0.5 * b.positive], dim=1))
    assert torch.equal(out.negative, torch.cat([a.negative, b.negative], dim=1))
    assert out.config == a.config and out.positive.shape == (1, 8, 768)


@pytest.mark.host
@pytest.mark.parametrize("mode", MODES[1:])
def test_combine_embeds_elementwise_modes(mode):
    ps = [embeds(s) for s in range(3)]
    w = [1.0, 2.0, 0.5]
    out = combine_embeds(mode, *ps, weights=w)
    want = reference(torch.cat([p.positive * wi for p, wi in zip(ps, w)]), mode)
    assert torch.allclose(out.positive, want, atol=1e-6)
    assert torch.allclose(out.negative, sum(p.negative for p in ps) / 3, atol=1e-6)


@pytest.mark.host
def test_combine_embeds_resets_weighting_to_the_defaults():
    layer = MappingProxyType({("input", 1, 0): 1.0})
    a = embeds(0, weight=0.3, layer_weights=layer, start_at=0.2, end_at=0.7)
    out = combine_embeds("average", a, embeds(1))
    fresh = ImagePrompt(out.positive, out.negative, out.config, out.adapter_path)
    for f in dataclasses.fields(ImagePrompt):
        if f.name not in ("positive", "negative"):
            assert getattr(out, f.name) == getattr(fresh, f.name), f.name
    assert (out.weight, out.layer_weights, out.start_at, out.end_at) == (1.0, None, 0.0, 1.0)
    assert out.adapter_path == "a.safetensors"


@pytest.mark.host
def test_combine_embeds_refusals():
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterMismatchError

    plus = config("resampler", 16)
    with pytest.raises(IPAdapterMismatchError, match=r"embeds_2: made by a different kind of adapter \(SD1.5 plus"):
        combine_embeds("concat", embeds(0), embeds(1, plus))
    with pytest.raises(IPAdapterError, match="embeds_3: 8 image tokens, embeds_1 has 4; 'average'.*concat"):
        combine_embeds("average", embeds(0), embeds(1), embeds(2, images=2))
    with pytest.raises(IPAdapterError, match="'subtract'.*2 or more"):
        combine_embeds("subtract", embeds(0))
    with pytest.raises(IPAdapterError, match="weight_2: must be a finite number"):
        combine_embeds("add", embeds(0), embeds(1), weights=[1.0, float("inf")])


# ---------------------------------------------------------------- combining CLIP features (host)

def features(n=1, seed=0, zero=True, hidden=1280, embeds_dim=1024):
    from comfy.clip_vision import Output

    from ipadapter_ext.ip_adapter_core.prompt.vision import ZERO_IMAGE_ATTR

    g = torch.Generator().manual_seed(seed)
    out = Output()
    out["image_embeds"] = torch.randn(n, embeds_dim, generator=g)
    out["penultimate_hidden_states"] = torch.randn(n, 257, hidden, generator=g)
    if zero:  # one encoder's zero-image features are the same for every image
        out[ZERO_IMAGE_ATTR] = torch.randn(1, 257, hidden, generator=torch.Generator().manual_seed(hidden))
    return out


def batch(*outs):
    """Several outputs as one batch, as Encode Image gives for an IMAGE batch."""
    from comfy.clip_vision import Output

    from ipadapter_ext.ip_adapter_core.prompt.vision import ZERO_IMAGE_ATTR

    out = Output()
    for name in ("image_embeds", "penultimate_hidden_states"):
        out[name] = torch.cat([o[name] for o in outs])
    out[ZERO_IMAGE_ATTR] = getattr(outs[0], ZERO_IMAGE_ATTR)
    return out


def combine_features(method, *outs, weights=None):
    from ipadapter_ext.nodes.combine import IPACombineFeatures

    inputs = {}
    for i, o in enumerate(outs, 1):
        inputs[f"features_{i}"] = o
        inputs[f"weight_{i}"] = 1.0 if weights is None else weights[i - 1]
    return IPACombineFeatures.execute(method, **inputs).result[0]


def project(h, image_features, combine="concat", image_weights=""):
    from ipadapter_ext.nodes.image_prompt import IPAProject

    return IPAProject.execute(h, image_features, combine, None, None, image_weights).result[0]


def handle(path):
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle

    return load_adapter_handle(path)


@pytest.mark.host
@pytest.mark.parametrize("mode", MODES)
def test_combine_features_over_all_images_of_all_inputs(mode):
    from ipadapter_ext.ip_adapter_core.prompt.vision import ZERO_IMAGE_ATTR

    a, b = features(2, seed=0, zero=False), features(1, seed=1)
    out = combine_features(mode, a, b, weights=[1.0, 0.5])
    for name in ("image_embeds", "penultimate_hidden_states"):
        weighted = torch.cat([a[name], 0.5 * b[name]])
        assert torch.allclose(out[name], reference(weighted, mode), atol=1e-5), name
    assert getattr(out, "last_hidden_state", None) is None  # not in the inputs
    assert getattr(out, ZERO_IMAGE_ATTR) is getattr(b, ZERO_IMAGE_ATTR)  # the first input that has it


@pytest.mark.host
def test_combine_features_keeps_fields_common_to_all_and_their_dtype():
    a, b = features(1, seed=0), features(1, seed=1)
    a["last_hidden_state"] = torch.randn(1, 257, 1280).half()
    b["last_hidden_state"] = torch.randn(1, 257, 1280).half()
    a["image_embeds"] = None  # as some encoders leave it
    out = combine_features("add", a, b)
    assert getattr(out, "image_embeds", None) is None
    assert out["last_hidden_state"].dtype == torch.float16
    want = (a["last_hidden_state"].float() + b["last_hidden_state"].float()).half()
    assert torch.equal(out["last_hidden_state"], want)


@pytest.mark.host
def test_combine_features_refuses_other_encoders_and_bad_weights():
    from ipadapter_ext.ip_adapter_core.errors import IPAdapterMismatchError

    vit_h, bigg = features(1), features(1, seed=1, hidden=1664, embeds_dim=1280)
    with pytest.raises(IPAdapterMismatchError, match=r"features_3: its image_embeds .* \(1280,\) vs \(1024,\).*"
                                                     "different CLIP vision models"):
        combine_features("average", vit_h, features(2, seed=2), bigg)
    with pytest.raises(IPAdapterError, match="weight_2: must be a finite number"):
        combine_features("average", vit_h, vit_h, weights=[1.0, float("nan")])


@pytest.mark.host
@pytest.mark.parametrize("variant", ["ip-adapter_sd15", "ip-adapter-plus_sd15"])
def test_project_average_equals_projecting_combined_features(adapter_file, variant):
    h = handle(adapter_file(variant))
    a, b = features(1, seed=0), features(1, seed=1)
    # exact: both paths weight and average the same features with the same ops, then project one
    # [positive; negative] batch of the same shape (same kernels, same shapes)
    for weights, text in (([1.0, 1.0], "1, 1"), ([1.0, 0.5], "1.0, 0.5")):
        direct = project(h, batch(a, b), "average", text)
        via_node = project(h, combine_features("average", a, b, weights=weights))
        assert torch.equal(direct.positive, via_node.positive), text
        assert torch.equal(direct.negative, via_node.negative), text
    plain = project(h, batch(a, b), "average")  # empty image_weights: the behaviour before weights existed
    assert torch.equal(plain.positive, project(h, batch(a, b), "average", "1, 1").positive)


@pytest.mark.host
@pytest.mark.parametrize("variant", ["ip-adapter_sd15", "ip-adapter-plus_sd15", "ip-adapter-full-face_sd15"])
def test_combine_embeds_concat_equals_project_concat(adapter_file, variant):
    h = handle(adapter_file(variant))
    a, b = features(1, seed=0), features(1, seed=1)
    both = project(h, batch(a, b))
    joined = combine_embeds("concat", project(h, a), project(h, b))
    # a batch of four rows against two of two: other BLAS kernels, so equal up to summation order only
    assert_close_reordered(joined.positive, both.positive)
    assert_close_reordered(joined.negative, both.negative)


@pytest.mark.host
def test_project_negatives_are_averaged_outside_concat(adapter_file):
    from ipadapter_ext.nodes.image_prompt import IPAProject

    h = handle(adapter_file("ip-adapter_sd15"))
    pos, neg = features(2, seed=0), features(2, seed=3)
    got = IPAProject.execute(h, pos, "max", neg).result[0]
    mean_neg = features(1, seed=3)
    mean_neg["image_embeds"] = neg["image_embeds"].mean(dim=0, keepdim=True)
    want = IPAProject.execute(h, features(1), "concat", mean_neg).result[0]
    assert torch.allclose(got.negative, want.negative, atol=1e-6)
    assert got.positive.shape == (1, 4, 768)


@pytest.mark.host
def test_project_refusals_name_the_input(adapter_file):
    h = handle(adapter_file("ip-adapter_sd15"))
    with pytest.raises(IPAdapterError, match=r"image_weights: expected 2 weight\(s\)"):
        project(h, features(2), "average", "1")
    with pytest.raises(IPAdapterError, match="'subtract'.*image_features has 1"):
        project(h, features(1), "subtract")


@pytest.mark.host
def test_schemas_input_order_and_tooltips():
    from ipadapter_ext.nodes import NODES
    from ipadapter_ext.nodes.combine import IPACombineEmbeds, IPACombineFeatures
    from ipadapter_ext.nodes.image_prompt import IPAProject

    assert IPACombineFeatures in NODES and IPACombineEmbeds in NODES
    for node, slot, display in ((IPACombineFeatures, "features", "IP-Adapter Combine Features"),
                                (IPACombineEmbeds, "embeds", "IP-Adapter Combine Embeds")):
        schema = node.define_schema()
        assert schema.display_name == display
        ids = [i.id for i in schema.inputs]
        assert ids == ["method"] + [x for i in range(1, 6) for x in (f"{slot}_{i}", f"weight_{i}")]
        assert all(i.tooltip for i in schema.inputs)
        assert list(schema.inputs[0].options) == list(MODES)
    project_inputs = IPAProject.define_schema().inputs
    assert [i.id for i in project_inputs][-1] == "image_weights"
    # the popular extension's modes in its order, then ours (projection only)
    assert list(project_inputs[2].options) == list(MODES) + ["one per frame"]
