"""SigLIP's attention-pooling head (MAP): what ``SiglipVisionModel.pooler_output`` is, and what InstantX's Flux
IP-Adapter reads. ComfyUI's SigLIP stops before it (its CLIP vision loader ignores ``vision_model.head.*``).

    h = MultiheadAttention(probe, x, x)       # one learned query over the post-LayerNorm tokens x [B, 729, 1152]
    h = h + MLP(LayerNorm(h))                 # fc1 -> tanh-GELU -> fc2
    pooled = h[:, 0]                          # [B, 1152]

Parameter names are the file's (``vision_model.head.`` stripped): ``probe``, ``attention.in_proj_weight`` /
``in_proj_bias`` (q, k, v stacked, as torch's MultiheadAttention), ``attention.out_proj``, ``layernorm``,
``mlp.fc1`` / ``mlp.fc2``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .ops import TorchOps

SIGLIP_LAYER_NORM_EPS = 1e-6   # SiglipVisionConfig.layer_norm_eps


class _OutProj(torch.nn.Module):
    def __init__(self, width, operations, **kw):
        super().__init__()
        self.out_proj = operations.Linear(width, width, **kw)


class SiglipPoolingHead(torch.nn.Module):
    """[B, N, width] post-LayerNorm SigLIP tokens -> [B, width] pooled."""

    def __init__(self, width: int, heads: int, mlp_width: int, operations=TorchOps, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.heads = heads
        self.probe = torch.nn.Parameter(torch.empty(1, 1, width, **kw))
        self.attention = _OutProj(width, operations, **kw)
        self.attention.in_proj_weight = torch.nn.Parameter(torch.empty(3 * width, width, **kw))
        self.attention.in_proj_bias = torch.nn.Parameter(torch.empty(3 * width, **kw))
        self.layernorm = operations.LayerNorm(width, eps=SIGLIP_LAYER_NORM_EPS, **kw)
        self.mlp = torch.nn.Module()
        self.mlp.fc1 = operations.Linear(width, mlp_width, **kw)
        self.mlp.fc2 = operations.Linear(mlp_width, width, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, width = x.shape
        a = self.attention
        w, bias = a.in_proj_weight.to(x.dtype), a.in_proj_bias.to(x.dtype)
        q = F.linear(self.probe.to(x.dtype).expand(b, 1, width), w[:width], bias[:width])
        k = F.linear(x, w[width:2 * width], bias[width:2 * width])
        v = F.linear(x, w[2 * width:], bias[2 * width:])
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        h = a.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 1, width))
        h = h + self.mlp.fc2(F.gelu(self.mlp.fc1(self.layernorm(h)), approximate="tanh"))
        return h[:, 0]
