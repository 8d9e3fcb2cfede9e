"""Where the added time of one patched call goes: each step of Attn2Patch.__call__
timed on its own, as the patch runs it (same objects, same calls), summed over the 16
layers of a step. One row for comparison only: the image attention through the host's
optimized_attention, which the patch avoids where that is a chunked CPU kernel."""
from __future__ import annotations

import logging

import torch

from .common import calibrate_inner, interleave

log = logging.getLogger("bench.breakdown")

# Parts of the patch's hot path, in call order ("mask on" parts replace their neighbour).
PARTS = [
    ("choose", "attention choice (`attention_functions()`)"),
    ("plan", "sampling-range plan lookup (resolved at run start)"),
    ("roles", "chunk roles from cond_or_uncond/uuids"),
    ("row_index", "row index lookup (cached per layout)"),
    ("kv_lookup", "K'/V' cache lookup"),
    ("mask_lookup", "mask cache lookup (mask on)"),
    ("select_rows", "K'/V' rows (index_select ×2)"),
    ("img_attn", "image attention, `{image}`"),
    ("fused_add", "torch.add(out, branch, alpha=λ)"),
    ("fused_mask_add", "torch.addcmul(out, branch, mask, value=λ) (mask on)"),
    ("few_key", "few-key path: bmm·softmax·baddbmm with the add, ≤16 keys padded (replaces rows+attention+add where chosen)"),
]
# Not part of the patch: the host's attention on the image keys, for comparison.
HOST_IMG = ("img_attn_host", "for comparison, not added: image attention through host `{text}`")


def image_attention_names() -> dict:
    from ipadapter_ext.ip_adapter_core.apply.attention import attention_functions

    text, image = attention_functions()
    return {"text": text.__name__, "image": image.__name__}


def part_fns(patch, masked_patch, call) -> dict:
    from ipadapter_ext.ip_adapter_core.apply.attention import add_few_key_branch, select_rows
    from ipadapter_ext.ip_adapter_core.apply.attention import attention_functions
    from ipadapter_ext.ip_adapter_core.apply.transformer_options import RUN_KEY

    text_attention, image_attention = attention_functions()
    q, extra, heads = call.q, call.extra, call.heads
    kw = dict(attn_precision=extra.get("attn_precision"), transformer_options=extra)
    (branch, scale), = patch.branches
    (mbranch, _), = masked_patch.branches
    layer = patch.layer
    run = extra[RUN_KEY]
    rows, n = q.shape[0], q.shape[1]
    roles = run.roles(extra)
    index = run.row_index(roles, rows, q.device)
    ip_k, ip_v = run.kv(branch, layer, q.device, q.dtype)
    k_rows, v_rows = select_rows(ip_k, index, rows), select_rows(ip_v, index, rows)
    mask = run.mask(mbranch, extra, n, rows, q.dtype, q.device)
    kt, vh, bias = run.head_kv(branch, layer, q.device, q.dtype, heads)
    out = text_attention(q, call.k, call.v, heads, **kw)
    img = image_attention(q, k_rows, v_rows, heads, **kw)
    return {
        "text": lambda: text_attention(q, call.k, call.v, heads, **kw),
        "choose": attention_functions,
        "plan": lambda: run.plan(branch),
        "roles": lambda: run.roles(extra),
        "row_index": lambda: run.row_index(roles, rows, q.device),
        "kv_lookup": lambda: run.kv(branch, layer, q.device, q.dtype),
        "mask_lookup": lambda: run.mask(mbranch, extra, n, rows, q.dtype, q.device),
        "select_rows": lambda: (select_rows(ip_k, index, rows), select_rows(ip_v, index, rows)),
        "img_attn": lambda: image_attention(q, k_rows, v_rows, heads, **kw),
        "fused_add": lambda: torch.add(out, img, alpha=scale),
        "fused_mask_add": lambda: torch.addcmul(out, img, mask, value=scale),
        "few_key": lambda: add_few_key_branch(out, q, kt, vh, bias, heads, scale, roles),
        "img_attn_host": lambda: text_attention(q, k_rows, v_rows, heads, **kw),
    }


def breakdown(calls, patches, masked_patches, rounds, device, target_s=0.002) -> dict:
    """Median seconds per call of every part, summed over the layers: name -> seconds/step."""
    totals = {}
    with torch.no_grad():
        for call in calls:
            fns = part_fns(patches[call.key], masked_patches[call.key], call)
            inner = {name: calibrate_inner(f, device, target_s) for name, f in fns.items()}
            res = interleave(fns, "text", rounds, device, inner)
            for name in fns:
                totals[name] = totals.get(name, 0.0) + res.med(name) * call.count
    return totals
