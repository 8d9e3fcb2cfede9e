"""The full-face projection: every penultimate CLIP token through a two-layer MLP."""
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
