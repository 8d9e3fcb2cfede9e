"""Weight types and λ schedules against expectations written out by hand (no host needed).

The expectations are ComfyUI_IPAdapter_plus's definitions (IPAdapterPlus.py ``ipadapter_execute``,
CrossAttentionPatch.py ``ipadapter_attention``) transcribed per block number t, the way that extension
counts SpatialTransformer blocks in the forward pass: SD1.5 t = 0..15 is input 1 2 4 5 7 8, middle,
output 3..11; SDXL t = 0..10 is input 4 5 7 8, middle, output 0..5. With weight w = 1, style_boost
sb = 2 and composition_boost cb = 3 (as multiples of w), so every entry shows where it comes from.
One difference, by design: their middle block (t 6 / t 4) is never patched; ours is, with the value
the same formula gives (see blocks.py)."""
import pytest

from ipadapter_ext.ip_adapter_core.prompt.blocks import DEFAULT_ROUTE, IMAGE_TO_NEGATIVE, WEIGHT_TYPES, layer_table
from ipadapter_ext.ip_adapter_core.errors import IPAdapterError
from ipadapter_ext.ip_adapter_core.files.layers import layers_for
from ipadapter_ext.ip_adapter_core.prompt.schedules import make_schedule, parse_keyframes

SB, CB = 2.0, 3.0
BLOCKS = {
    "sd15": [("input", 1), ("input", 2), ("input", 4), ("input", 5), ("input", 7), ("input", 8), ("middle", 0),
             ("output", 3), ("output", 4), ("output", 5), ("output", 6), ("output", 7), ("output", 8), ("output", 9),
             ("output", 10), ("output", 11)],
    "sdxl": [("input", 4), ("input", 5), ("input", 7), ("input", 8), ("middle", 0),
             ("output", 0), ("output", 1), ("output", 2), ("output", 3), ("output", 4), ("output", 5)],
}
# transformer layers per block in the real UNets (SDXL: 2 at the 640-channel level, 10 at 1280)
DEPTH = {"sd15": [1] * 16, "sdxl": [2, 2, 10, 10, 10, 10, 10, 10, 2, 2, 2]}

N = {"sd15": 16, "sdxl": 11}
R = IMAGE_TO_NEGATIVE  # (zeros on the positive rows, the image on the negative rows)

# t -> value (absent: 0); or a function of t for the curves. Routed blocks listed in ROUTED.
EXPECTED = {
    "sd15": {
        "linear": {t: 1.0 for t in range(16)},
        "weak input": {**{t: 0.2 for t in range(6)}, **{t: 1.0 for t in range(6, 16)}},
        "weak output": {**{t: 1.0 for t in range(7)}, **{t: 0.2 for t in range(7, 16)}},
        "weak middle": {**{t: 1.0 for t in range(16)}, 6: 0.2},
        "strong middle": {**{t: 0.2 for t in range(16)}, 6: 1.0},
        "style transfer": {0: 1, 1: 1, 2: 1, 3: 1, 9: 1, 10: 1, 11: 1, 12: 1, 13: 1, 14: 1, 15: 1},
        "composition": {4: 0.25, 5: 1.0},
        "strong style transfer": {0: 1, 1: 1, 2: 1, 3: 1, 6: 1, 7: 1, 8: 1, 9: 1, 10: 1, 11: 1, 12: 1, 13: 1, 14: 1,
                                  15: 1},
        "style and composition": {0: 1, 1: 1, 2: 1, 3: 1, 4: CB * 0.25, 5: CB, 9: 1, 10: 1, 11: 1, 12: 1, 13: 1,
                                  14: 1, 15: 1},
        "style transfer precise": {0: 1, 1: 1, 2: 1, 3: 1, 4: SB * 0.25, 5: SB, 9: 1, 10: 1, 11: 1, 12: 1, 13: 1,
                                   14: 1, 15: 1},
        "composition precise": {0: CB, 1: CB, 2: CB, 3: CB, 4: 0.25, 5: 1.0, 6: CB * .1, 7: CB * .1, 8: CB * .1,
                                9: CB, 10: CB, 11: CB, 12: CB, 13: CB, 14: CB, 15: CB},
    },
    "sdxl": {
        "linear": {t: 1.0 for t in range(11)},
        "weak input": {**{t: 0.2 for t in range(4)}, **{t: 1.0 for t in range(4, 11)}},
        "weak output": {**{t: 1.0 for t in range(5)}, **{t: 0.2 for t in range(5, 11)}},
        "weak middle": {**{t: 1.0 for t in range(11)}, 4: 0.2},
        "strong middle": {**{t: 0.2 for t in range(11)}, 4: 1.0},
        "style transfer": {6: 1.0},
        "composition": {3: 1.0},
        "strong style transfer": {0: 1, 1: 1, 2: 1, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1, 9: 1, 10: 1},
        "style and composition": {3: CB, 6: 1.0},
        "style transfer precise": {3: SB, 6: 1.0},
        "composition precise": {0: CB * .1, 1: CB * .1, 2: CB * .1, 3: 1.0, 4: CB * .1, 5: CB * .1, 6: CB,
                                7: CB * .1, 8: CB * .1, 9: CB * .1, 10: CB * .1},
    },
}
for fam, n in N.items():
    EXPECTED[fam]["ease in"] = {t: 0.05 + 0.95 * (1 - t / n) for t in range(n)}
    EXPECTED[fam]["ease out"] = {t: 0.05 + 0.95 * (t / n) for t in range(n)}
    EXPECTED[fam]["ease in-out"] = {t: 0.05 + 0.95 * (1 - abs(t - n / 2) / (n / 2)) for t in range(n)}
    EXPECTED[fam]["reverse in-out"] = {t: 0.05 + 0.95 * (abs(t - n / 2) / (n / 2)) for t in range(n)}

ROUTED = {  # blocks where the image moves to the negative rows
    "sd15": {"style transfer precise": {4, 5}, "composition precise": set(range(16)) - {4, 5}},
    "sdxl": {"style transfer precise": {3}, "composition precise": set(range(11)) - {3}},
}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
def test_weight_type_per_layer_table(family, weight_type):
    table = layer_table(family, weight_type, style_boost=SB, composition_boost=CB)
    expected_blocks = EXPECTED[family][weight_type]
    routed = ROUTED[family].get(weight_type, set())
    layers = layers_for(family)
    assert len(table) == len(layers) == sum(DEPTH[family]) == {"sd15": 16, "sdxl": 70}[family]
    for t, (block, depth) in enumerate(zip(BLOCKS[family], DEPTH[family])):
        keys = [l.key for l in layers if l.key[:2] == block]
        assert len(keys) == depth, (block, keys)
        for key in keys:
            mult, route = table[key]
            assert mult == pytest.approx(expected_blocks.get(t, 0.0), abs=1e-12), (weight_type, key, t)
            assert route == (R if t in routed else DEFAULT_ROUTE), (weight_type, key, t)


def test_middle_block_is_weighted_not_skipped():
    # the popular extension's middle block never acts; here it gets its formula's value
    for family, t_mid in (("sd15", 6), ("sdxl", 4)):
        mid = [k for k in layer_table(family, "linear") if k[0] == "middle"]
        assert mid and all(layer_table(family, "linear")[k][0] == 1.0 for k in mid)
        assert all(layer_table(family, "weak middle")[k][0] == 0.2 for k in mid)
        n = N[family]
        assert layer_table(family, "ease in")[mid[0]][0] == pytest.approx(0.05 + 0.95 * (1 - t_mid / n))


def test_unknown_weight_type_and_bad_boost_are_refused():
    with pytest.raises(IPAdapterError, match="weight_type: expected one of"):
        layer_table("sd15", "style")
    with pytest.raises(IPAdapterError, match="style_boost: must be a finite"):
        layer_table("sd15", "style transfer precise", style_boost=float("nan"))


# ---------------------------------------------------------------- λ over time

def test_time_curves():
    start, end = 1.0, 0.2
    for curve, shape in (("linear", lambda u: u), ("ease in", lambda u: u * u),
                         ("ease out", lambda u: 1 - (1 - u) ** 2), ("ease in-out", lambda u: 3 * u * u - 2 * u ** 3)):
        s = make_schedule(curve, end)
        for u in (0.0, 0.25, 0.5, 0.9, 1.0):
            assert s.value(u, start) == pytest.approx(start + (end - start) * shape(u), abs=1e-12), (curve, u)
        assert s.constant(start) is None and s.constant(end) == end
    assert make_schedule("constant", 0.3) is None


def test_keyframes():
    s = make_schedule("keyframes", keyframes="0.0:1.0, 0.5:0.6, 1.0:0.2")
    assert [s.value(u, 9.0) for u in (0.0, 0.25, 0.5, 0.75, 1.0)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    late = make_schedule("keyframes", keyframes="1.0:0.0; 0.5:2")  # any order; flat outside
    assert [late.value(u, 9.0) for u in (0.0, 0.5, 0.75, 1.0)] == pytest.approx([2.0, 2.0, 1.0, 0.0])
    assert make_schedule("keyframes", keyframes="0:0.7, 1:0.7").constant(1.0) == 0.7
    for bad, msg in (("", "none were given"), ("0.5", "cannot read"), ("1.5:1", "cannot read"),
                     ("0:1, 0:2", "given twice"), ("0:nan", "cannot read")):
        with pytest.raises(IPAdapterError, match=msg):
            parse_keyframes(bad) if bad else make_schedule("keyframes", keyframes=bad)
    with pytest.raises(IPAdapterError, match="curve: expected one of"):
        make_schedule("cosine")
