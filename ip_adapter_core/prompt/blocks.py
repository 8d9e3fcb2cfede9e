"""λ per layer: one owner for every setting that makes one cross-attention layer's λ differ from another's.

A layer's λ is ``weight × weight-type multiplier × blocks multiplier`` (× a schedule's value over time,
schedules.py), and each layer's rows attend to the token set their route names. ``layer_lambdas`` is the
one function from (family, settings) to that table; the IP-Adapter Weight node (through
``embeds.ImagePrompt.weighted``) and the workflow converter both use it. Torch-free, so the converter and
the tests can read the tables without the host; a layer table (layers.py) is the only input. A new model
family adds rows here (its block groups), not new code paths.

Weight types (``weight_type``) transcribe cubiq/ComfyUI_IPAdapter_plus, whose workflows artists share. It
weights the layers of one SpatialTransformer block alike and numbers the blocks in the UNet's forward order
(input blocks, the middle block, output blocks): 16 on SD1.5, 11 on SDXL (its ``transformer_index``). Its
types are a curve over that number, a factor for one kind of block, or a choice of the blocks that carry
style and composition. One deliberate difference: that extension never patches the middle block (it
registers its patch under ("middle", 1), a key ComfyUI never calls), so in its hands "weak middle" changes
nothing, "strong middle" weakens every other block and leaves nothing strong, and the middle-block entries
of "strong style transfer" and "composition precise" never act. Here the middle block is patched like every
other layer, so those types do what their names say; every other layer gets exactly their factor.

Blocks (``blocks``, ``custom_blocks``) are ours: all layers, InstantStyle's style / composition blocks, or
a multiplier per named block.

Embeds scaling (``embeds_scaling``): where λ enters a layer, on the output (the paper) or on K'/V' inside the
attention (attention.scale_kv does the maths).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from types import MappingProxyType

from ..errors import IPAdapterError
from ..files.flux_layout import DOUBLE, FLUX, SINGLE
from ..files.sd3_layout import SD3
from ..files.layers import layers_for
from ..input_bounds import MAX_CUSTOM_BLOCK_ENTRIES, MAX_ENTRY_CHARS, check_count, read_number

WEIGHT_TYPES = ("linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
                "weak middle", "strong middle", "style transfer", "composition", "strong style transfer",
                "style and composition", "style transfer precise", "composition precise")
BLOCK_CHOICES = ("all", "style", "composition", "style and composition", "custom")

# Where λ enters (the popular extension's "embeds scaling"): on the output (the paper), or on K' and
# V' inside the attention, optionally with its penalty of the layer width C over 1280.
V_ONLY, K_V, K_V_PENALTY, K_MEAN_V_PENALTY = "V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"
SCALING_MODES = (V_ONLY, K_V, K_V_PENALTY, K_MEAN_V_PENALTY)

# Which blocks carry style and which composition, with a factor inside the group: two vocabularies, on
# purpose. They agree on SDXL (InstantStyle, arXiv 2404.02733: up_blocks.0.attentions.1 carries style,
# down_blocks.2.attentions.1 layout). On SD1.5, which the paper does not study, they differ: the `blocks`
# input takes the analogous single positions (the first attention of the lowest-resolution up level, the
# last of the deepest down level), while the weight types keep the popular extension's own SD1.5 choice
# (the outer levels for style; input 7 at a quarter beside input 8 for composition) so that a converted
# workflow gets exactly the λ it had there.
INSTANTSTYLE_BLOCKS = MappingProxyType({                     # ours: the `blocks` input
    "sdxl": MappingProxyType({"style": MappingProxyType({("output", 1): 1.0}),
                              "composition": MappingProxyType({("input", 8): 1.0})}),
    "sd15": MappingProxyType({"style": MappingProxyType({("output", 4): 1.0}),
                              "composition": MappingProxyType({("input", 8): 1.0})}),
})
IPADAPTER_PLUS_BLOCKS = MappingProxyType({                   # theirs: the weight types
    "sdxl": INSTANTSTYLE_BLOCKS["sdxl"],
    "sd15": MappingProxyType({
        "style": MappingProxyType({**{("input", n): 1.0 for n in (1, 2, 4, 5)},
                                   **{("output", n): 1.0 for n in range(5, 12)}}),
        "composition": MappingProxyType({("input", 7): 0.25, ("input", 8): 1.0})}),
})

# The token sets a branch's K'/V' stack holds (attention.py stacks them in this order).
IMAGE_SET, NEGATIVE_SET, ZERO_SET = 0, 1, 2
# Which token set the positive and the negative rows of a batch attend to (*_SET above).
DEFAULT_ROUTE = (IMAGE_SET, NEGATIVE_SET)
# The precise types' move: the image goes to the negative rows, the positive rows get zero tokens
# (K' = V' = 0, so they receive nothing), so classifier-free guidance steers away from it there.
IMAGE_TO_NEGATIVE = (ZERO_SET, IMAGE_SET)

@dataclass(frozen=True)
class Part:
    """What a group weight type does to one group of blocks: a factor, optionally times one of the
    boosts (a multiple of λ), and the token-set route."""

    factor: float
    boost: str = ""                       # "" | "style" | "composition"
    route: tuple[int, int] = DEFAULT_ROUTE


# name: (style blocks, composition blocks, all other blocks)
GROUP_TYPES = MappingProxyType({
    "style transfer": (Part(1), Part(0), Part(0)),
    "composition": (Part(0), Part(1), Part(0)),
    "strong style transfer": (Part(1), Part(0), Part(1)),
    "style and composition": (Part(1), Part(1, "composition"), Part(0)),
    "style transfer precise": (Part(1), Part(1, "style", IMAGE_TO_NEGATIVE), Part(0)),
    "composition precise": (Part(1, "composition", IMAGE_TO_NEGATIVE), Part(1),
                            Part(0.1, "composition", IMAGE_TO_NEGATIVE)),
})


def _curve(name: str, t: int, n: int) -> float:
    """The popular extension's curves over the block number t of n blocks."""
    if name == "ease in":
        return 0.05 + 0.95 * (1 - t / n)
    if name == "ease out":
        return 0.05 + 0.95 * (t / n)
    if name == "ease in-out":
        return 0.05 + 0.95 * (1 - abs(t - n / 2) / (n / 2))
    if name == "reverse in-out":
        return 0.05 + 0.95 * (abs(t - n / 2) / (n / 2))
    raise KeyError(name)


WEAK = 0.2
_WEAK_BLOCKS = {"weak input": ("input",), "weak output": ("output",), "weak middle": ("middle",),
                "strong middle": ("input", "output")}


def block_order(family: str) -> tuple[tuple[str, int], ...]:
    """The (block, number) of every attention block in the UNet's forward order."""
    rank = {"input": 0, "middle": 1, "output": 2}
    return tuple(sorted({l.key[:2] for l in layers_for(family)}, key=lambda b: (rank[b[0]], b[1])))


def layer_table(family: str, weight_type: str, style_boost: float = 1.0, composition_boost: float = 1.0):
    """{layer key: (multiplier of λ, route)} for every attn2 layer of ``family``."""
    if weight_type not in WEIGHT_TYPES:
        raise IPAdapterError(f"weight_type: expected one of {', '.join(WEIGHT_TYPES)}; got {weight_type!r}.")
    for name, value in (("style_boost", style_boost), ("composition_boost", composition_boost)):
        if not math.isfinite(value):
            raise IPAdapterError(f"{name}: must be a finite number; got {value}. 1.0 leaves λ as it is.")
    order = block_order(family)
    number = {b: t for t, b in enumerate(order)}
    boosts = {"": 1.0, "style": style_boost, "composition": composition_boost}
    table = {}
    for layer in layers_for(family):
        block = layer.key[:2]
        route = DEFAULT_ROUTE
        if weight_type == "linear":
            mult = 1.0
        elif weight_type in _WEAK_BLOCKS:
            mult = WEAK if block[0] in _WEAK_BLOCKS[weight_type] else 1.0
        elif weight_type in GROUP_TYPES:
            style, comp, other = GROUP_TYPES[weight_type]
            groups = IPADAPTER_PLUS_BLOCKS[family]
            if block in groups["style"]:
                part, inner = style, groups["style"][block]
            elif block in groups["composition"]:
                part, inner = comp, groups["composition"][block]
            else:
                part, inner = other, 1.0
            mult, route = part.factor * inner * boosts[part.boost], part.route
        else:
            mult = _curve(weight_type, number[block], len(order))
        table[layer.key] = (mult, route)
    return table


# ---------------------------------------------------------------------------- blocks

def block_weights(family: str, blocks: str, custom: str = "") -> MappingProxyType | None:
    """Per-layer multipliers for a ``blocks`` choice (None = all layers at 1)."""
    if blocks == "all":
        return None
    layers = layers_for(family)
    groups = INSTANTSTYLE_BLOCKS[family]
    if blocks in ("style", "composition", "style and composition"):
        wanted = {}
        for name in blocks.split(" and "):
            wanted.update(groups[name])
        return MappingProxyType({l.key: wanted[l.key[:2]] for l in layers if l.key[:2] in wanted})
    if blocks == "custom":
        return MappingProxyType(parse_custom(family, custom))
    raise IPAdapterError(f"blocks: expected one of {BLOCK_CHOICES}, got {blocks!r}.")


_ENTRY = re.compile(r"^\s*(input|middle|output)\s+(\d+)(?:\s*:\s*(\d+))?\s*=\s*(-?[\d.]+)\s*$")
CUSTOM_EXAMPLE = "'input 8 = 1.0' or 'output 1:2 = 0.5', separated by commas"


def parse_custom(family: str, text: str) -> dict:
    """Parse ``"input 8 = 1, output 1 = 0.5, output 1:3 = 0"``: block, number, optional
    transformer index, multiplier. Layers not named get 0. Later entries win. At most
    MAX_CUSTOM_BLOCK_ENTRIES entries; multipliers as input_bounds.read_number allows."""
    layers = layers_for(family)
    parts = [p for p in re.split(r"[,;\n]", text or "") if p.strip()]
    check_count(len(parts), MAX_CUSTOM_BLOCK_ENTRIES, "custom_blocks", "entries")
    out = {}
    for part in parts:
        m = _ENTRY.match(part) if len(part) <= MAX_ENTRY_CHARS else None
        if not m:
            raise IPAdapterError(f"custom_blocks: cannot read {part.strip()[:80]!r}; write entries like "
                                 f"{CUSTOM_EXAMPLE}.")
        block, number, t = m.group(1), int(m.group(2)), m.group(3)
        value = read_number(m.group(4), f"custom_blocks ({block} {number})", CUSTOM_EXAMPLE)
        hit = [l.key for l in layers if l.key[:2] == (block, number) and (t is None or l.key[2] == int(t))]
        if not hit:
            valid = sorted({f"{b} {n}" for b, n, _ in (l.key for l in layers)})
            raise IPAdapterError(f"custom_blocks: {part.strip()!r} names no cross-attention layer of this "
                                 f"{family} model; valid blocks: {', '.join(valid)}.")
        out.update({k: value for k in hit})
    if not out:
        raise IPAdapterError("custom_blocks: blocks is 'custom' but no entries were given, e.g. 'input 8 = 1'.")
    return out


def layer_lambdas(family: str, weight_type: str = "linear", blocks: str = "all", custom: str = "",
                  style_boost: float = 1.0, composition_boost: float = 1.0, layers=None, scaling: str = V_ONLY) -> dict:
    """{layer key: (multiplier of λ, route)} for every attn2 layer of ``family``: the weight type's
    multiplier times the blocks choice's (a layer the choice leaves out gets 0), and the weight type's route.
    On Flux, for the blocks ``layers`` the adapter acts in (flux_blocks.py)."""
    if family in (FLUX, SD3):  # SD3.5's joint blocks are ComfyUI's ("double_block", i) too
        mults = flux_lambdas(layers, weight_type, blocks, custom, scaling in (V_ONLY, K_V), family)
        return {k: (m, DEFAULT_ROUTE) for k, m in mults.items()}
    table = layer_table(family, weight_type, style_boost, composition_boost)
    chosen = block_weights(family, blocks, custom)
    if chosen is None:
        return table
    return {k: (m * chosen.get(k, 0.0), r) for k, (m, r) in table.items()}


# ---------------------------------------------------------------------------- Flux
# Flux has no UNet levels, so the popular extension's weight types (curves over SpatialTransformer blocks,
# style / composition blocks found in SDXL's UNet) mean nothing there: only ``linear`` is accepted, and
# ``blocks`` takes ``all`` or ``custom`` with entries by block name, as ComfyUI's patch keys name them:
# "double 0-18 = 1, single 0-37 = 0.5, double 3 = 0". Embeds scaling: λ on the output (V only, as XLabs and
# diffusers do) or on K'/V' (K+V); the C-penalty modes scale by a UNet layer's width over 1280, which means
# nothing on Flux's blocks, so they are refused.

FLUX_WEIGHT_TYPES = ("linear",)
_NAME = {FLUX: "Flux", SD3: "SD3.5 (its joint blocks are 'double' as ComfyUI names them)"}
FLUX_BLOCK_CHOICES = ("all", "custom")
FLUX_CUSTOM_EXAMPLE = "'double 0-18 = 1' or 'single 0-37 = 0.5', separated by commas"
_FLUX_NAMES = {"double": DOUBLE, "single": SINGLE}
_FLUX_ENTRY = re.compile(r"^\s*(double|single)\s+(\d+)(?:\s*-\s*(\d+))?\s*=\s*(\S+)\s*$")


def flux_lambdas(layers, weight_type: str, blocks: str, custom: str, scaling_ok: bool, family: str = FLUX) -> dict:
    """{block key: multiplier of λ} for the blocks ``layers`` of a Flux adapter (every block's rows attend to
    the default token sets: no weight type routes them otherwise)."""
    if weight_type not in FLUX_WEIGHT_TYPES:
        raise IPAdapterError(
            f"weight_type: '{weight_type}' is defined for the blocks of SD1.5 and SDXL UNets; {_NAME[family]} has none "
            f"of them. Use 'linear' on {_NAME[family]}, and blocks = custom for a weight per block (e.g. 'double 0-9 = "
            "1, double 10-18 = 0.5').")
    if not scaling_ok:
        raise IPAdapterError("embeds_scaling: the C-penalty modes scale λ by a UNet layer's width over 1280, which "
                             "means nothing on Flux. Use 'V only' (as XLabs) or 'K+V'.")
    if blocks == "all":
        chosen = {layer.key: 1.0 for layer in layers}
    elif blocks == "custom":
        chosen = parse_flux_custom(layers, custom)
    else:
        raise IPAdapterError(f"blocks: '{blocks}' names UNet blocks (InstantStyle's); on {_NAME[family]} use 'all' or "
                             "'custom' "
                             f"with entries like {FLUX_CUSTOM_EXAMPLE}.")
    return {layer.key: chosen.get(layer.key, 0.0) for layer in layers}


def parse_flux_custom(layers, text: str) -> dict:
    """``"double 0-18 = 1, single 3 = 0.5"`` -> {block key: multiplier}; blocks not named get 0, later
    entries win. A block the adapter does not act in is refused, naming the ones it has."""
    have = {layer.key for layer in layers}
    parts = [p for p in re.split(r"[,;\n]", text or "") if p.strip()]
    check_count(len(parts), MAX_CUSTOM_BLOCK_ENTRIES, "custom_blocks", "entries")
    out = {}
    for part in parts:
        m = _FLUX_ENTRY.match(part) if len(part) <= MAX_ENTRY_CHARS else None
        if not m:
            raise IPAdapterError(f"custom_blocks: cannot read {part.strip()[:80]!r}; on Flux write entries like "
                                 f"{FLUX_CUSTOM_EXAMPLE}.")
        kind, first = _FLUX_NAMES[m[1]], int(m[2])
        last = int(m[3]) if m[3] is not None else first
        value = read_number(m[4], f"custom_blocks ({m[1]} {m[2]})", FLUX_CUSTOM_EXAMPLE)
        keys = [(kind, i) for i in range(first, min(last, first + len(have)) + 1)]
        if last < first or not keys or any(k not in have for k in keys):
            raise IPAdapterError(f"custom_blocks: {part.strip()!r} names blocks this adapter does not act in; it "
                                 f"has {_ranges(have)}.")
        out.update({k: value for k in keys})
    if not out:
        raise IPAdapterError("custom_blocks: blocks is 'custom' but no entries were given, e.g. "
                             f"{FLUX_CUSTOM_EXAMPLE}.")
    return out


def _ranges(keys) -> str:
    """'double 0-18' / 'double 0-18 and single 0-37' for a set of block keys."""
    parts = []
    for word, kind in _FLUX_NAMES.items():
        idx = sorted(i for k, i in keys if k == kind)
        if idx:
            parts.append(f"{word} {idx[0]}-{idx[-1]}" if len(idx) > 1 else f"{word} {idx[0]}")
    return " and ".join(parts) or "no blocks"
