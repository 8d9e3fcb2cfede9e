"""Per-layer cost of the image branch: every SD1.5 attn2 layer, replayed with the exact
extra_options the host passed in a real step, timed against the unpatched call.

Why per layer: a whole step on a shared CPU varies by ±5–10% from run to run, while
the branch costs well under 1% of a step. One attention call is short enough to
repeat many times, interleaved with its reference, and the medians of the paired
differences are stable to a few microseconds.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .common import calibrate_inner, interleave
from .models import CFG_LAYOUT

log = logging.getLogger("bench.layers")

ROWS = len(CFG_LAYOUT)


@dataclass
class LayerCall:
    """One attn2 call as the host makes it, ready to replay."""

    key: tuple
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    extra: dict
    keys: tuple = ()   # every layer this call stands for (same shapes, same code path)

    @property
    def count(self) -> int:
        return len(self.keys) or 1

    @property
    def heads(self):
        return self.extra["n_heads"]


def layer_calls(captured: dict, latent: int, device, dtype=torch.float32, seed: int = 0,
                grouped: bool = True) -> list[LayerCall]:
    """Build the calls for ``latent`` from the ones captured at the capture latent:
    token counts scale with the latent area (every level halves an even size), the
    extra_options are the host's own with the two shape entries set for this latent.

    ``grouped``: one call per distinct (query tokens, width) -- SD1.5 has 4 among its
    16 layers -- standing for every layer of that shape. The patch runs the same code
    on the same shapes for each of them, so timing one and counting it ``count`` times
    buys 4× the repetitions, i.e. tighter medians, for the same run time."""
    from ipadapter_ext.ip_adapter_core.files.layers import layers_for
    from ipadapter_ext.ip_adapter_core.apply.run_state import RunState
    from ipadapter_ext.ip_adapter_core.apply.transformer_options import RUN_KEY

    g = torch.Generator().manual_seed(seed)
    run = None
    groups = {}
    for layer in layers_for("sd15"):
        rec = captured[layer.key]
        shape = (rec["q"], rec["k"]) if grouped else layer.key
        groups.setdefault(shape, []).append(layer.key)
    out = []
    for keys in groups.values():
        rec = captured[keys[0]]
        cap_latent = rec["extra"]["original_shape"][-1]
        scale = latent // cap_latent
        rows, n, hidden = rec["q"]
        n = n * scale * scale
        extra = dict(rec["extra"])
        extra["original_shape"] = [*extra["original_shape"][:2], latent, latent]
        # one run state for every call, as in a sampling run: caches fill once, then are looked up
        run = run or RunState(latent_shape=tuple(extra["original_shape"]))
        extra[RUN_KEY] = run
        a = extra.get("activations_shape")
        if a is not None:
            extra["activations_shape"] = [*a[:2], a[2] * scale, a[3] * scale]
        q = torch.randn(rows, n, hidden, generator=g)
        k = torch.randn(rows, rec["k"][1], hidden, generator=g)
        v = torch.randn(rows, rec["k"][1], hidden, generator=g)
        out.append(LayerCall(keys[0], *(t.to(device, dtype) for t in (q, k, v)), extra, tuple(keys)))
    return out


def plain_call(call: LayerCall):
    """The unpatched attention exactly as CrossAttention.forward calls it."""
    from comfy.ldm.modules.attention import optimized_attention

    return lambda: optimized_attention(call.q, call.k, call.v, call.heads, attn_precision=None,
                                       transformer_options=call.extra)


def patch_call(patches: dict, call: LayerCall):
    p = patches[call.key]
    return lambda: p(call.q, call.k, call.v, call.extra)


def attn2_patches(model) -> dict:
    return model.model_options["transformer_options"]["patches_replace"]["attn2"]


@dataclass
class LayerRow:
    tokens: int
    latent: int
    key: tuple
    n_query: int
    width: int
    count: int     # layers of this shape in the UNet
    plain_s: float
    added_s: dict  # candidate name -> median added seconds per call


def measure(calls: list[LayerCall], candidates: dict, tokens: int, latent: int, rounds: int, device,
            target_s: float = 0.001) -> list[LayerRow]:
    """``candidates``: name -> attn2 patches dict. Returns one row per layer.

    Samples are short (~1 ms, several calls when a call is shorter): on a shared CPU a
    short sample more often runs inside one scheduler slice, and its neighbour in the
    round (the reference) then ran under the same conditions."""
    with torch.no_grad():
        rows = []
        for call in calls:
            fns = {"plain": plain_call(call)}
            fns.update({name: patch_call(p, call) for name, p in candidates.items()})
            for f in fns.values():
                f()  # fill each patch's caches before timing: steady state is what a step sees
            inner = {n: calibrate_inner(f, device, target_s) for n, f in fns.items()}
            res = interleave(fns, "plain", rounds, device, inner)
            rows.append(LayerRow(tokens, latent, call.key, call.q.shape[1], call.q.shape[2], call.count,
                                 res.med("plain"), {n: res.added(n) for n in candidates}))
            log.debug("%s %s n=%d plain %.3f ms %s", tokens, call.key, call.q.shape[1], res.med("plain") * 1e3,
                      " ".join(f"{n}=+{res.added(n) * 1e3:.3f}" for n in candidates))
    return rows


def summed(rows: list[LayerRow], name: str) -> float:
    """Added seconds per step: each layer is called once per step."""
    return sum(r.added_s[name] * r.count for r in rows)
