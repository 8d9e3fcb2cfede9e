"""SD3.5-Large IP-Adapter networks (InstantX, FAMILIES.md §4): the time-conditioned Resampler that makes the image
tokens from SigLIP's penultimate states *and the timestep*, and the weights each joint block adds.

Key names are the published file's (InstantX's ``ip-adapter.bin``): per Resampler layer ``layers.{i}.0`` the
Perceiver attention (``norm1`` on the features, ``norm2`` on the queries), ``.1`` the feed-forward (its LayerNorm
``.1.0`` modulated), ``.2.1`` the adaLN projection of the time embedding (shift/scale for both). diffusers' loader
renames them (``ln0``, ``ln1``, ``adaln_norm``, ``adaln_proj``) into ``IPAdapterTimeImageProjection``; the maths
is the same, and tests/test_host_sd3.py checks ours against that class.
"""
import math

import torch

from .ops import TorchOps
from .resampler import PerceiverAttention, feed_forward


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """The sinusoidal timestep features the adapter was trained with: [cos | sin] of t over ``dim / 2``
    geometric frequencies (diffusers' Timesteps with flip_sin_to_cos=True, shift 0), in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class TimeEmbedding(torch.nn.Module):
    """``time_embedding.linear_1`` / ``linear_2``: sinusoidal features -> SiLU MLP -> the Resampler's width."""

    def __init__(self, in_dim, dim, operations=TorchOps, device=None, dtype=None):
        super().__init__()
        self.linear_1 = operations.Linear(in_dim, dim, device=device, dtype=dtype)
        self.linear_2 = operations.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x):
        return self.linear_2(torch.nn.functional.silu(self.linear_1(x)))


class TimeResampler(torch.nn.Module):
    """([B, positions, embedding_dim] features, [B] timesteps) -> ([B, num_queries, output_dim] tokens,
    [B, dim] time embedding). The time embedding is added to the projected features and modulates every
    layer's queries (before the attention) and feed-forward; the joint blocks' ``norm_ip`` read it too."""

    def __init__(self, dim, depth, dim_head, heads, num_queries, embedding_dim, output_dim, ff_mult, time_dim,
                 operations=TorchOps, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.time_dim = time_dim
        self.latents = torch.nn.Parameter(torch.empty(1, num_queries, dim, **kw))
        self.proj_in = operations.Linear(embedding_dim, dim, **kw)
        self.proj_out = operations.Linear(dim, output_dim, **kw)
        self.norm_out = operations.LayerNorm(output_dim, **kw)
        self.time_embedding = TimeEmbedding(time_dim, dim, operations, **kw)
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleList([PerceiverAttention(dim, dim_head, heads, operations, **kw),
                                 feed_forward(dim, ff_mult, operations, **kw),
                                 torch.nn.Sequential(torch.nn.SiLU(), operations.Linear(dim, 4 * dim, **kw))])
            for _ in range(depth))

    def forward(self, x, timestep):
        temb = self.time_embedding(timestep_features(timestep, self.time_dim).to(x.dtype))
        latents = self.latents.to(device=x.device, dtype=x.dtype).repeat(x.size(0), 1, 1)
        x = self.proj_in(x) + temb[:, None]
        for attn, ff, ada in self.layers:
            shift_msa, scale_msa, shift_mlp, scale_mlp = ada(temb).chunk(4, dim=1)
            latents = attn.attend(attn.norm1(x), modulate(attn.norm2(latents), shift_msa, scale_msa)) + latents
            latents = ff[1:](modulate(ff[0](latents), shift_mlp, scale_mlp)) + latents
        return self.norm_out(self.proj_out(latents)), temb


class HeadRMSNorm(torch.nn.Module):
    """RMSNorm over each head ([..., head_dim]) with a learned scale, eps 1e-6, the variance in float32."""

    def __init__(self, dim, eps=1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.empty(dim, device=device, dtype=dtype))

    def forward(self, x):
        out = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight.to(device=x.device, dtype=torch.float32)).to(x.dtype)


class AdaNorm(torch.nn.Module):
    """``norm_ip``: LayerNorm (no affine, eps 1e-6) shifted and scaled from the time embedding (``linear``:
    SiLU(t-emb) -> [shift | scale])."""

    def __init__(self, time_dim, width, operations=TorchOps, device=None, dtype=None):
        super().__init__()
        self.linear = operations.Linear(time_dim, 2 * width, device=device, dtype=dtype)

    def forward(self, x, temb):
        shift, scale = self.linear(torch.nn.functional.silu(temb)).chunk(2, dim=1)
        return modulate(torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6), shift, scale)


class JointIPLayer(torch.nn.Module):
    """What one joint block adds (``ip_adapter.{i}``): ``norm_ip``, bias-free ``to_k_ip`` / ``to_v_ip`` and the
    RMS norms of the image query, the image keys and the image-prompt keys (per head of 64)."""

    def __init__(self, width, hidden, time_dim, head_dim, operations=TorchOps, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm_ip = AdaNorm(time_dim, width, operations, **kw)
        self.to_k_ip = operations.Linear(width, hidden, bias=False, **kw)
        self.to_v_ip = operations.Linear(width, hidden, bias=False, **kw)
        self.norm_q = HeadRMSNorm(head_dim, **kw)
        self.norm_k = HeadRMSNorm(head_dim, **kw)
        self.norm_ip_k = HeadRMSNorm(head_dim, **kw)
