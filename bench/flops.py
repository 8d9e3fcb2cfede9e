"""The arithmetic limit: FLOPs of one UNet step and the image branch's extra FLOPs.

The UNet is counted on the ``meta`` device (shapes only: no memory, no compute, both
latents in seconds). ComfyUI's CPU attention (sub-quadratic) asks the allocator for
free memory, which meta tensors cannot answer, so attention is routed through torch
SDPA with ``optimized_attention_override``; attention FLOPs do not depend on the
kernel. Counted are matmuls and convolutions (2 FLOPs per multiply-add), as
torch.utils.flop_counter does; element-wise work is not.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .models import CFG_LAYOUT

log = logging.getLogger("bench.flops")


def _custom_mapping() -> dict:
    # torch's counter has formulas for the CUDA SDPA kernels but not the CPU one.
    ops = {}
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None:
        ops[cpu_flash] = lambda q, k, v, *args, out_shape=None, **kw: sdpa_flop_count(q, k, v)
    return ops


def counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=_custom_mapping())


def _sdpa_override(func, q, k, v, heads, mask=None, **kwargs):
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, inner)


def unet_step_flops(latent: int) -> int:
    """FLOPs of one SD1.5 UNet forward, batch 2 (CFG), 77 text tokens."""
    from support.host_unet import comfy_model

    model = comfy_model("sd15", device="meta")
    dm = model.model.diffusion_model
    rows = len(CFG_LAYOUT)
    x = torch.empty(rows, 4, latent, latent, device="meta")
    ctx = torch.empty(rows, 77, 768, device="meta")
    t = torch.empty(rows, device="meta")
    options = {"cond_or_uncond": CFG_LAYOUT[:], "optimized_attention_override": _sdpa_override}
    with counter() as fc, torch.no_grad():
        dm(x, t, context=ctx, transformer_options=options)
    return fc.get_total_flops()


def branch_flops_formula(calls, tokens: int) -> int:
    """Q·K'ᵀ and P·V' per layer: 2 × (2·B·N·T·C) FLOPs."""
    return sum(4 * c.q.shape[0] * c.q.shape[1] * tokens * c.q.shape[2] * c.count for c in calls)


def branch_flops_counted(calls, patches) -> int:
    """Counted FLOPs of the patched calls minus the unpatched ones, over a step's layers."""
    from comfy.ldm.modules.attention import optimized_attention

    total = 0
    with torch.no_grad():
        for c in calls:
            with counter() as fp:
                patches[c.key](c.q, c.k, c.v, c.extra)
            with counter() as f0:
                optimized_attention(c.q, c.k, c.v, c.heads, attn_precision=None, transformer_options=c.extra)
            total += (fp.get_total_flops() - f0.get_total_flops()) * c.count
    return total
