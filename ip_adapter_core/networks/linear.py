"""The base IP-Adapter projection: one Linear to N tokens, then LayerNorm."""
import torch

from .ops import TorchOps


class ImageProjModel(torch.nn.Module):
    """``image_embeds`` [B, C] -> [B, num_tokens, cross_dim] (keys ``proj.*``, ``norm.*``)."""

    def __init__(self, embeds_dim, cross_dim, num_tokens, operations=TorchOps, device=None, dtype=None):
        super().__init__()
        self.num_tokens = num_tokens
        self.cross_dim = cross_dim
        self.proj = operations.Linear(embeds_dim, num_tokens * cross_dim, device=device, dtype=dtype)
        self.norm = operations.LayerNorm(cross_dim, device=device, dtype=dtype)

    def forward(self, image_embeds):
        tokens = self.proj(image_embeds).reshape(-1, self.num_tokens, self.cross_dim)
        return self.norm(tokens)
