"""Decoupled cross-attention: ``Z = Attn(Q, K, V) + λ · Attn(Q, K', V')``.

Tensors use ComfyUI's attention calling convention: ``[batch, tokens, heads*dim_head]``
with ``heads`` passed separately, so the same code runs with ComfyUI's optimized
attention inside the host and with plain torch SDPA outside it. The image K'/V' may
have another batch than Q: a small stack of token sets (positive, negative) and a
per-row index (run_state.RunState.row_index) choose which set each row attends to.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

POSITIVE, NEGATIVE = 0, 1  # ComfyUI's cond_or_uncond codes, also our token-set indices


def sdpa_attention(q, k, v, heads, mask=None, **_ignored):
    """Multi-head attention over [B, N, H*D] tensors with torch's SDPA (the host-free path)."""
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, n, inner)


def image_kv(to_k_ip, to_v_ip, tokens: torch.Tensor, dtype=None, device=None):
    """K' and V' for a stack of image-token sets [S, T, cross_dim] -> two [S, T, hidden]."""
    with torch.no_grad():
        k, v = to_k_ip(tokens), to_v_ip(tokens)
    return k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype)


def select_rows(kv_sets: torch.Tensor, index: torch.Tensor | None, rows: int) -> torch.Tensor:
    """Expand token-set K'/V' [S, T, C] to the batch [rows, T, C]."""
    if index is None:
        if kv_sets.shape[0] == rows:
            return kv_sets
        if kv_sets.shape[0] == 1:
            return kv_sets.expand(rows, -1, -1)
        raise ValueError(f"{kv_sets.shape[0]} image-token sets for a batch of {rows} rows")
    return kv_sets.index_select(0, index.to(kv_sets.device))


def add_image_branch(out, q, ip_k, ip_v, heads, scale, index=None, mask=None,
                     attention=sdpa_attention, **attn_kwargs):
    """Return ``out + scale * mask * Attn(q, K'[index], V'[index])``.

    ``mask`` is a per-token weight [rows or 1, tokens or 1, 1] (a region mask, a per-step gate
    or their product) or None."""
    rows = q.shape[0]
    k = select_rows(ip_k, index, rows)
    v = select_rows(ip_v, index, rows)
    branch = attention(q, k, v, heads, **attn_kwargs)
    # One fused pass over the output; not in place, so a caller's tensor is never modified.
    if mask is None:
        return torch.add(out, branch, alpha=scale)
    return torch.addcmul(out, branch, mask, value=scale)
