"""MLP projections: the full-face one (every penultimate CLIP token through a two-layer MLP), and the one that
makes T tokens from one embedding (FaceID's and InstantX's Flux adapter's MLPProjModel)."""
import torch

from .ops import TorchOps


class MLPProjModel(torch.nn.Module):
    """[B, 257, C] -> [B, 257, cross_dim] (keys ``proj.0``, ``proj.2``, ``proj.3``)."""

    def __init__(self, hidden_dim, cross_dim, operations=TorchOps, device=None, dtype=None):
        super().__init__()
        self.proj = torch.nn.Sequential(
            operations.Linear(hidden_dim, hidden_dim, device=device, dtype=dtype),
            torch.nn.GELU(),
            operations.Linear(hidden_dim, cross_dim, device=device, dtype=dtype),
            operations.LayerNorm(cross_dim, device=device, dtype=dtype),
        )

    def forward(self, hidden_states):
        return self.proj(hidden_states)


class TokenMLP(torch.nn.Module):
    """[B, embed_dim] -> [B, num_tokens, cross_dim] (keys ``proj.0``, ``proj.2``, ``norm``): Linear, GELU, Linear to
    T·C, LayerNorm per token. tencent's FaceID MLPProjModel (512 -> 1024 -> T·C) and InstantX's Flux
    MLPProjModel (SigLIP pooled 1152 -> 2304 -> 128·4096) are this network."""

    def __init__(self, embed_dim, hidden, cross_dim, num_tokens, operations=TorchOps, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.num_tokens, self.cross_dim = num_tokens, cross_dim
        self.proj = torch.nn.Sequential(operations.Linear(embed_dim, hidden, **kw), torch.nn.GELU(),
                                        operations.Linear(hidden, cross_dim * num_tokens, **kw))
        self.norm = operations.LayerNorm(cross_dim, **kw)

    def forward(self, embeds):
        return self.norm(self.proj(embeds).reshape(-1, self.num_tokens, self.cross_dim))
