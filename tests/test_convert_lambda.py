"""λ per layer after converting: ours equals ComfyUI_IPAdapter_plus's, setting by setting (no host needed).

Theirs is transcribed below from ``ipadapter_execute`` (IPAdapterPlus.py:295-338: boosts force the precise
types, ``layer_weights`` make a dict of λ per block, the dict types) and ``ipadapter_attention``
(CrossAttentionPatch.py:85-124: the curves and weak types per block number t, λ = 0 for blocks not in a
dict, the precise types' routing "uncond = cond, cond = 0"). Their middle block never acts (its patch key is
never called), so theirs is 0 there. Ours is read from the converted graph: every IP-Adapter Weight on the
chain, λ = weight × layer_table × the custom block factor, summed over the chained prompts. Where the mapping
is exact the two agree on every layer, middle block included; for the plain weight types the middle block is
the one documented difference and is checked to be our formula's value.
"""
from __future__ import annotations

import pytest

from ipadapter_ext.ip_adapter_core.convert import convert
from ipadapter_ext.ip_adapter_core.files.layers import layers_for
from ipadapter_ext.ip_adapter_core.prompt.blocks import (IMAGE_TO_NEGATIVE, WEIGHT_TYPES, block_order, block_weights,
                                                         layer_table)
from support.plus_graphs import SD15_CKPT, SDXL_CKPT, core, theirs

MIDDLE = {"sd15": 6, "sdxl": 4}
PRECISE = ("style transfer precise", "composition precise")


def their_lambdas(family, weight_type, weight, layer_weights="", style_boost=None, composition_boost=None,
                  weight_composition=1.0):
    """{t: (λ, routed)} for their block numbers t, transcribed from their code (see the module docstring)."""
    is_sdxl = family == "sdxl"
    layers = 11 if is_sdxl else 16
    w = weight
    if style_boost is not None:
        weight_type = "style transfer precise"
    elif composition_boost is not None:
        weight_type = "composition precise"
    if layer_weights:
        w = {int(k): float(v) * w for k, v in [x.split(":") for x in layer_weights.split(",")]}
        weight_type = weight_type if weight_type in PRECISE else "linear"
    elif weight_type == "style transfer":
        w = {6: w} if is_sdxl else {t: w for t in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)}
    elif weight_type == "composition":
        w = {3: w} if is_sdxl else {4: w * 0.25, 5: w}
    elif weight_type == "strong style transfer":
        w = {t: w for t in ((0, 1, 2, 4, 5, 6, 7, 8, 9, 10) if is_sdxl else
                            (0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))}
    elif weight_type == "style and composition":
        w = {3: weight_composition, 6: w} if is_sdxl else {
            **{t: w for t in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)}, 4: weight_composition * 0.25,
            5: weight_composition}
    elif weight_type == "strong style and composition":
        w = {**{t: w for t in range(11)}, 3: weight_composition} if is_sdxl else {
            **{t: w for t in range(16)}, 4: weight_composition, 5: weight_composition}
    elif weight_type == "style transfer precise":
        wc = style_boost if style_boost is not None else w
        w = {3: wc, 6: w} if is_sdxl else {**{t: w for t in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)},
                                           4: wc * 0.25, 5: wc}
    elif weight_type == "composition precise":
        wc = w
        w = composition_boost if composition_boost is not None else w
        w = {**{t: w * .1 for t in range(11)}, 3: wc, 6: w} if is_sdxl else {
            **{t: w for t in range(16)}, 4: wc * 0.25, 5: wc, 6: w * .1, 7: w * .1, 8: w * .1}
    out = {}
    for t in range(layers):
        kind = "input" if t < MIDDLE[family] else "middle" if t == MIDDLE[family] else "output"
        lam, routed = w, False
        if weight_type == "ease in":
            lam = w * (0.05 + 0.95 * (1 - t / layers))
        elif weight_type == "ease out":
            lam = w * (0.05 + 0.95 * (t / layers))
        elif weight_type == "ease in-out":
            lam = w * (0.05 + 0.95 * (1 - abs(t - (layers / 2)) / (layers / 2)))
        elif weight_type == "reverse in-out":
            lam = w * (0.05 + 0.95 * (abs(t - (layers / 2)) / (layers / 2)))
        elif weight_type == "weak input" and kind == "input":
            lam = w * 0.2
        elif weight_type == "weak middle" and kind == "middle":
            lam = w * 0.2
        elif weight_type == "weak output" and kind == "output":
            lam = w * 0.2
        elif weight_type == "strong middle" and kind in ("input", "output"):
            lam = w * 0.2
        elif isinstance(w, dict):
            if t not in w:
                lam = 0.0
            else:
                if weight_type == "style transfer precise":
                    routed = (layers == 11 and t == 3) or (layers == 16 and t in (4, 5))
                elif weight_type == "composition precise":
                    routed = (layers == 11 and t != 3) or (layers == 16 and t not in (4, 5))
                lam = w[t]
        out[t] = (0.0 if kind == "middle" else float(lam), routed)
    return out


def our_lambdas(api, family):
    """{t: (λ, routed)} from every IP-Adapter Weight in a converted graph (their prompts add)."""
    order = block_order(family)
    keys = {b: [l.key for l in layers_for(family) if l.key[:2] == b] for b in order}
    total = {t: 0.0 for t in range(len(order))}
    routed = {t: False for t in range(len(order))}
    for node in api.values():
        if node["class_type"] != "IPAWeight":
            continue
        i = node["inputs"]
        table = layer_table(family, i["weight_type"], i["style_boost"], i["composition_boost"])
        blocks = block_weights(family, i["blocks"], i["custom_blocks"])
        for t, block in enumerate(order):
            values = set()
            for key in keys[block]:
                mult, route = table[key]
                lam = i["weight"] * mult * (1.0 if blocks is None else blocks.get(key, 0.0))
                values.add(round(lam, 12))
                if lam and route == IMAGE_TO_NEGATIVE:
                    routed[t] = True
            assert len(values) == 1, (block, values)      # every layer of a block alike
            total[t] += values.pop()
    return {t: (total[t], routed[t]) for t in total}


def graph(family, kind, values, links=None):
    g = core(SDXL_CKPT if family == "sdxl" else SD15_CKPT, ["30", 0])
    g["20"] = theirs("IPAdapterUnifiedLoader", {"preset": "PLUS (high strength)"}, {"model": ["1", 0]})
    g["30"] = theirs(kind, values, {"model": ["1", 0], "ipadapter": ["20", 1], "image": ["5", 0], **(links or {})})
    return g


def compare(family, ours, their, skip_middle):
    for t, (lam, routed) in their.items():
        if skip_middle and t == MIDDLE[family]:
            continue
        assert ours[t][0] == pytest.approx(lam, abs=1e-9), (t, ours[t], lam)
        if lam:
            assert ours[t][1] == routed, (t, ours[t], routed)


LAYER_WEIGHTS = {"sd15": "0:0.3, 4:0.8, 5:1.1, 6:0.5, 9:0.7, 15:0.2", "sdxl": "0:0.5, 3:1.2, 4:0.7, 6:1.0, 10:0.3"}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
def test_mad_scientist_layer_weights(family, weight_type):
    g = graph(family, "IPAdapterMS", {"weight": 0.8, "weight_type": weight_type,
                                      "layer_weights": LAYER_WEIGHTS[family]})
    api, report = convert(g)
    assert not report.kept, report.text()
    compare(family, our_lambdas(api, family), their_lambdas(family, weight_type, 0.8, LAYER_WEIGHTS[family]),
            skip_middle=False)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
def test_advanced_weight_types(family, weight_type):
    """Without layer_weights every type maps to the type of the same name; the middle block is the one
    documented difference (ours gets the formula's value, theirs nothing)."""
    g = graph(family, "IPAdapterAdvanced", {"weight": 0.8, "weight_type": weight_type})
    api, _ = convert(g)
    ours = our_lambdas(api, family)
    compare(family, ours, their_lambdas(family, weight_type, 0.8), skip_middle=True)
    mid = MIDDLE[family]
    i = next(n["inputs"] for n in api.values() if n["class_type"] == "IPAWeight")
    formula = {k[:2]: v[0] for k, v in layer_table(family, weight_type, i["style_boost"],
                                                    i["composition_boost"]).items()}
    assert ours[mid][0] == pytest.approx(0.8 * formula[("middle", 0)])


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("boost", [0.0, 0.35, 1.7])
@pytest.mark.parametrize("kind,name", [("IPAdapterPreciseStyleTransfer", "style_boost"),
                                       ("IPAdapterPreciseComposition", "composition_boost")])
def test_precise_nodes_boosts(family, boost, kind, name):
    g = graph(family, kind, {"weight": 0.8, name: boost})
    api, report = convert(g)
    assert not report.converted[-1]["lost"], report.text()
    their = their_lambdas(family, "linear", 0.8, **{name: boost})
    # composition precise gives the middle block λ here (0.1·boost), theirs never calls it
    compare(family, our_lambdas(api, family), their, skip_middle=kind.endswith("Composition"))


@pytest.mark.parametrize("expand", [False, True])
def test_style_and_composition_sdxl(expand):
    g = graph("sdxl", "IPAdapterStyleComposition", {"weight_style": 1.3, "weight_composition": 0.6,
                                                    "expand_style": expand},
              {"image_style": ["5", 0], "image_composition": ["6", 0]})
    del g["30"]["inputs"]["image"]
    api, _ = convert(g)
    their = their_lambdas("sdxl", "strong style and composition" if expand else "style and composition", 1.3,
                          weight_composition=0.6)
    compare("sdxl", our_lambdas(api, "sdxl"), their, skip_middle=expand)


def test_boost_limits_are_reported():
    api, report = convert(graph("sdxl", "IPAdapterPreciseComposition", {"weight": 0.0, "composition_boost": 0.5}))
    assert any("weight 0" in lost for lost in report.converted[-1]["lost"])
    api, report = convert(graph("sdxl", "IPAdapterPreciseStyleTransfer", {"weight": 0.1, "style_boost": 4.0}))
    assert any("clamped" in lost for lost in report.converted[-1]["lost"])
    weights = [n for n in api.values() if n["class_type"] == "IPAWeight"]
    assert weights[0]["inputs"]["style_boost"] == 5.0
