"""The Perceiver-style Resampler of IP-Adapter Plus: learned queries attend over
[image tokens ; queries] and become the image tokens."""
import math

import torch

from .ops import TorchOps


class PerceiverAttention(torch.nn.Module):
    def __init__(self, dim, dim_head, heads, operations=TorchOps, device=None, dtype=None):
        super().__init__()
        self.dim_head, self.heads = dim_head, heads
        inner = dim_head * heads
        kw = dict(device=device, dtype=dtype)
        self.norm1 = operations.LayerNorm(dim, **kw)
        self.norm2 = operations.LayerNorm(dim, **kw)
        self.to_q = operations.Linear(dim, inner, bias=False, **kw)
        self.to_kv = operations.Linear(dim, inner * 2, bias=False, **kw)
        self.to_out = operations.Linear(inner, dim, bias=False, **kw)

    def _heads(self, t):
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, x, latents):
        return self.attend(self.norm1(x), self.norm2(latents))

    def attend(self, x, latents):
        """The attention on already normed inputs (the time-conditioned Resampler modulates ``latents`` between
        the norm and the attention, time_resampler.py)."""
        b, n, _ = latents.shape
        q = self._heads(self.to_q(latents))
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        k, v = self._heads(k), self._heads(v)
        # The reference scales q and k by dim_head**-0.25 each and takes the softmax in
        # float32 whatever the dtype; kept so fp16 results match it.
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        out = (weight @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


def feed_forward(dim, mult, operations=TorchOps, device=None, dtype=None):
    inner = int(dim * mult)
    kw = dict(device=device, dtype=dtype)
    return torch.nn.Sequential(
        operations.LayerNorm(dim, **kw),
        operations.Linear(dim, inner, bias=False, **kw),
        torch.nn.GELU(),
        operations.Linear(inner, dim, bias=False, **kw),
    )


class Resampler(torch.nn.Module):
    """[B, 257, embedding_dim] penultimate CLIP states -> [B, num_queries, output_dim]. With num_queries 0 it
    has no learned queries and refines the ``latents`` it is given (FaceID Plus, faceid.py)."""

    def __init__(self, dim, depth, dim_head, heads, num_queries, embedding_dim, output_dim, ff_mult,
                 operations=TorchOps, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        if num_queries:
            self.latents = torch.nn.Parameter(torch.empty(1, num_queries, dim, **kw))
        self.proj_in = operations.Linear(embedding_dim, dim, **kw)
        self.proj_out = operations.Linear(dim, output_dim, **kw)
        self.norm_out = operations.LayerNorm(output_dim, **kw)
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleList([PerceiverAttention(dim, dim_head, heads, operations, **kw),
                                 feed_forward(dim, ff_mult, operations, **kw)])
            for _ in range(depth))

    def forward(self, x, latents=None):
        x = self.proj_in(x)
        if latents is None:
            latents = self.latents.to(device=x.device, dtype=x.dtype).repeat(x.size(0), 1, 1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))
