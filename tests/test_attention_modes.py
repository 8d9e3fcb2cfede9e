"""Embeds scaling and the precise (row-routed) weight types: one attention layer computed by hand in
plain torch, against the patch's output, for every mode, a CFG batch (cond_or_uncond [1, 0]) and a
cfg-1 batch ([0]), on both of the patch's attention paths (64 queries: SDPA; 256: the few-key path).

The hand computation is the popular extension's formulas (CrossAttentionPatch.py), written out here
from scratch: λ on the output (V only), on K' and V' (K+V), the same with λ·C/1280 (C the layer's
width), or on K' and the token mean of V' only (K+mean(V)). A precise type's routed layer gives the
positive rows zero tokens (K' = V' = 0: they receive nothing) and the negative rows the image."""
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import rel_err
from ipadapter_ext.ip_adapter_core.prompt.embeds import ImagePrompt
from ipadapter_ext.ip_adapter_core.files.layers import layers_for
from ipadapter_ext.ip_adapter_core.files.loader import load_adapter
from ipadapter_ext.ip_adapter_core.apply.branch import Branch
from ipadapter_ext.ip_adapter_core.apply.unet_patch import Attn2Patch

MODES = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")
WEIGHT, SB, CB = 0.7, 2.0, 1.5


def attention(q, k, v, heads):
    """softmax(q kᵀ / √d) v per head, [B, N, H·D] in and out."""
    b, n, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
    w = (q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, n, c)


def image_term(q, tokens, wk, wv, heads, mode, lam):
    """One image branch for rows attending to ``tokens`` [1, T, cross]."""
    k, v = tokens @ wk.T, tokens @ wv.T
    k, v = k.expand(q.shape[0], -1, -1), v.expand(q.shape[0], -1, -1)
    if mode == "V only":
        return lam * attention(q, k, v, heads)
    if mode != "K+V":
        lam = lam * k.shape[-1] / 1280
    if mode == "K+mean(V) w/ C penalty":
        mean = v.mean(dim=1, keepdim=True)
        return attention(q, lam * k, v - mean + lam * mean, heads)
    return attention(q, lam * k, lam * v, heads)


@pytest.fixture(scope="module")
def adapter(adapter_file):
    loaded = load_adapter(adapter_file("ip-adapter_sd15"), dtype=torch.float32)
    return SimpleNamespace(model=loaded.model, config=loaded.config, patcher=None)


def tokens(adapter, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, adapter.config.cross_dim, generator=g)


@pytest.mark.parametrize("queries", [64, 256])
@pytest.mark.parametrize("layout", [(1, 0), (0,)])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("weight_type,key,routed,mult", [
    ("linear", ("input", 1, 0), False, 1.0),
    ("linear", ("middle", 0, 0), False, 1.0),
    ("style transfer precise", ("input", 8, 0), True, SB),       # a composition block: image to the negative
    ("style transfer precise", ("input", 7, 0), True, SB * 0.25),
    ("style transfer precise", ("output", 9, 0), False, 1.0),    # a style block: as linear
    ("composition precise", ("output", 4, 0), True, CB * 0.1),   # another block: image to the negative
    ("composition precise", ("input", 8, 0), False, 1.0),        # the composition block
])
def test_one_layer_by_hand(adapter, mode, layout, queries, weight_type, key, routed, mult):
    layer = next(l for l in layers_for("sd15") if l.key == key)
    pos, neg = tokens(adapter, 1), tokens(adapter, 2)
    prompt = ImagePrompt(pos, neg, adapter.config).weighted(WEIGHT, weight_type=weight_type, scaling=mode,
                                                            style_boost=SB, composition_boost=CB)
    patch = Attn2Patch(layer, ((Branch(adapter, prompt, None), prompt.layer_scale(key)),))
    per_chunk, heads = 2, layer.heads
    rows = per_chunk * len(layout)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(rows, queries, layer.hidden, generator=g)
    k_text, v_text = (torch.randn(rows, 77, layer.hidden, generator=g) for _ in range(2))
    side = int(queries ** 0.5)
    extra = {"n_heads": heads, "cond_or_uncond": list(layout), "original_shape": [per_chunk, 4, side, side]}
    with torch.no_grad():
        got = patch(q, k_text, v_text, extra)

        ipl = adapter.model.layer(layer.file_index)
        wk, wv = ipl.to_k_ip.weight.float(), ipl.to_v_ip.weight.float()
        want = attention(q, k_text, v_text, heads)
        lam = WEIGHT * mult
        for c, code in enumerate(layout):
            rows_c = slice(c * per_chunk, (c + 1) * per_chunk)
            if routed and code == 0:
                continue  # positive rows get zero tokens: nothing is added
            toks = pos if (code == 0 or routed) else neg
            want[rows_c] += image_term(q[rows_c], toks, wk, wv, heads, mode, lam)
    assert rel_err(got, want) < 1e-6
    # and the image term is really there (the check could not pass by adding nothing), except on a
    # routed layer of a cfg-1 batch: it has only positive rows, and they receive nothing
    text_only = attention(q, k_text, v_text, heads)
    assert (rel_err(got, text_only) > 1e-4) != (routed and layout == (0,))


def test_routed_positive_rows_receive_exactly_nothing(adapter):
    layer = next(l for l in layers_for("sd15") if l.key == ("input", 8, 0))
    prompt = ImagePrompt(tokens(adapter, 1), tokens(adapter, 2), adapter.config).weighted(
        1.0, weight_type="style transfer precise", scaling="K+mean(V) w/ C penalty")
    patch = Attn2Patch(layer, ((Branch(adapter, prompt, None), prompt.layer_scale(layer.key)),))
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 256, layer.hidden, generator=g)
    k, v = (torch.randn(2, 77, layer.hidden, generator=g) for _ in range(2))
    extra = {"n_heads": layer.heads, "cond_or_uncond": [0, 1], "original_shape": [1, 4, 16, 16]}
    plain = Attn2Patch(layer, ())
    with torch.no_grad():
        got, text = patch(q, k, v, extra), plain(q, k, v, extra)
    # the same text-attention call on the same [2, ...] batch in both, and the routed row adds nothing
    assert torch.equal(got[0], text[0])        # positive row: bit-identical to no image prompt
    assert not torch.equal(got[1], text[1])    # negative row: the image
