"""Decoupled cross-attention: ``Z = Attn(Q, K, V) + λ · Attn(Q, K', V')``.

Tensors use ComfyUI's attention calling convention: ``[batch, tokens, heads*dim_head]``
with ``heads`` passed separately, so the same code runs with ComfyUI's optimized
attention inside the host and with plain torch SDPA outside it. The image K'/V' may
have another batch than Q: a small stack of token sets (image, negative, zeros) and a
per-row index (run_state.RunState.row_index) choose which set each row attends to.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..prompt.blocks import K_MEAN_V_PENALTY, K_V, K_V_PENALTY

# The token sets a branch's K'/V' stack holds (a route picks one per role) and the embeds scaling modes
# are settings of the prompt, defined in blocks.py (torch-free, so the workflow converter reads them).
POSITIVE, NEGATIVE = 0, 1  # ComfyUI's cond_or_uncond codes (the role of a chunk of the batch)


def sdpa_attention(q, k, v, heads, mask=None, **_ignored):
    """Multi-head attention over [B, N, H*D] tensors with torch's SDPA (the host-free path)."""
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, n, inner)


def host_kernel_is_chunked(A) -> bool:
    """Whether ComfyUI's optimized_attention (module ``A``, comfy.ldm.modules.attention) is one of its chunked
    CPU kernels (sub-quadratic, split, basic: its CPU default), which the patch and training avoid."""
    return A.optimized_attention in (A.attention_sub_quad, A.attention_split, A.attention_basic)


def attention_functions():
    """(text attention, image attention). Text goes through the host's optimized_attention,
    exactly as the unpatched layer, so λ = 0 is bit-identical. The image keys are few
    (≤ 257 per image), so SDPA never needs chunking: where the host fell back to a chunked
    CPU kernel (sub-quadratic, split, basic), which costs as much for 4 keys as for 77,
    the image branch uses attention_pytorch instead (bench/: with 257 tokens the added time
    per step fell from 168 to 87 ms). attention_pytorch is wrap_attn-decorated, so
    optimized_attention_override still applies; GPU backends (flash, xformers, sage) are kept.
    Without the host (the core's own tests), both are torch SDPA."""
    try:
        import comfy.ldm.modules.attention as A
    except ImportError:
        return sdpa_attention, sdpa_attention

    text = A.optimized_attention
    return text, (A.attention_pytorch if host_kernel_is_chunked(A) else text)


def image_kv(to_k_ip, to_v_ip, tokens: torch.Tensor, dtype=None, device=None):
    """K' and V' for a stack of image-token sets [S, T, cross_dim] -> two [S, T, hidden]."""
    with torch.no_grad():
        k, v = to_k_ip(tokens), to_v_ip(tokens)
    return k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype)


def rms_per_head(t: torch.Tensor, head_dim: int, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm without weight over each head of [..., H*D] (InstantX's norm_added_k / norm_added_v: diffusers'
    RMSNorm(head_dim, eps 1e-5, elementwise_affine=False), its variance in float32)."""
    x = t.unflatten(-1, (-1, head_dim))
    x = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return x.flatten(-2).to(t.dtype)


def scale_kv(ip_k: torch.Tensor, ip_v: torch.Tensor, mode: str, w, penalty: bool = True):
    """K'/V' with λ inside the attention (every mode but V only). ``w`` is a number or a device
    tensor that broadcasts ([1, 1, 1], or [rows, 1, 1] for rows of K'/V'); K'/V' are [S, T, C]
    with C the layer's width. ``penalty=False`` leaves out the C / 1280 factor: for a further
    multiplier of K'/V' already scaled with it (each mode composes: scaling by a then b = by a·b).

    K+V multiplies both; the penalty modes first scale λ by C / 1280 (a quarter on SD1.5's 320-wide
    layers); K+mean(V) scales only the mean of V' over the tokens, leaving what tells the tokens
    apart. A λ of 0 gives K' = 0, so every token gets the same attention weight and the output is
    the token mean of V': 0 for K+V, but not exactly 0 for K+mean(V), so a step outside the range is
    switched off on the output, not through λ."""
    if mode == K_V:
        return ip_k * w, ip_v * w
    if penalty:
        w = w * (ip_k.shape[-1] / 1280.0)
    if mode == K_V_PENALTY:
        return ip_k * w, ip_v * w
    if mode == K_MEAN_V_PENALTY:
        mean = ip_v.mean(dim=1, keepdim=True)
        return ip_k * w, (ip_v - mean) + mean * w
    raise ValueError(f"no K'/V' scaling for mode {mode!r}")


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


# Where explicit batched matmuls beat SDPA for the image branch (bench/, 2-core CPU, float32): SDPA's
# fixed cost per call dominates for a handful of keys on the large layers; on the small ones (< 256
# queries) it is as fast, and above 64 keys its tiled kernel wins. BLAS is slow at products only 4
# columns wide, so fewer keys are padded to FEW_KEYS_PAD with keys that get exactly zero weight.
FEW_KEYS_MAX = 64
FEW_KEYS_MIN_QUERIES = 256
FEW_KEYS_PAD = 16


def use_few_key_path(q: torch.Tensor, n_keys: int) -> bool:
    """Whether ``add_few_key_branch`` is the cheaper exact path for this call (CPU, float32)."""
    return (q.device.type == "cpu" and q.dtype == torch.float32 and n_keys <= FEW_KEYS_MAX
            and q.shape[1] >= FEW_KEYS_MIN_QUERIES)


def per_head_kv(ip_k: torch.Tensor, ip_v: torch.Tensor, heads: int):
    """[S, T, H*D] token-set K'/V' -> (K'ᵀ per head with the softmax scale folded in [S, H, D, T'],
    V' per head [S, H, T', D], score bias [T'] or None). Made once per run, so a call transposes
    nothing of its own. T' = max(T, FEW_KEYS_PAD): padded keys have zero K'/V' and a -inf bias, so
    their softmax weight is exactly 0."""
    s, t, inner = ip_k.shape
    d = inner // heads
    kt = (ip_k * d ** -0.5).reshape(s, t, heads, d).permute(0, 2, 3, 1)
    vh = ip_v.reshape(s, t, heads, d).permute(0, 2, 1, 3)
    if t >= FEW_KEYS_PAD:
        return kt.contiguous(), vh.contiguous(), None
    pad = FEW_KEYS_PAD - t
    kt = torch.cat([kt, kt.new_zeros(s, heads, d, pad)], dim=-1)
    vh = torch.cat([vh, vh.new_zeros(s, heads, pad, d)], dim=-2)
    bias = torch.cat([ip_k.new_zeros(t), ip_k.new_full((pad,), float("-inf"))])
    return kt, vh, bias


def add_few_key_branch(out, q, kt, vh, bias, heads, scale, sets, mask=None):
    """``out + scale * mask * softmax(q·K'ᵀ/√d)·V'`` with two batched matmuls per chunk.

    ``sets``: the token set of each chunk of the batch (chunks are ``rows / len(sets)`` long).
    Q is read in place (its heads are a strided batch for the matmul), the mask is folded into
    the attention weights, and the result accumulates into a copy of ``out`` (a caller's tensor
    is never modified)."""
    rows, n, inner = q.shape
    b, d = rows // len(sets), inner // heads
    out = out.clone()
    for c, s in enumerate(sets):
        rows_c = slice(c * b, (c + 1) * b)
        qc = q[rows_c].reshape(b * n, heads, d).transpose(0, 1)            # [H, b·n, D], a view
        scores = torch.bmm(qc, kt[s]) if bias is None else torch.baddbmm(bias, qc, kt[s])
        p = scores.softmax(dim=-1)                                         # [H, b·n, T']
        if mask is not None:
            m = mask[rows_c] if mask.shape[0] == rows else mask
            p = p * m.expand(b, n, 1).reshape(1, b * n, 1)
        out[rows_c].view(b * n, heads, d).transpose(0, 1).baddbmm_(p, vh[s], alpha=scale)
    return out
