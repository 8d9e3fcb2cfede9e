"""Build the empty projection network an AdapterConfig describes."""
from __future__ import annotations

from .faceid import FACE_MLP_HIDDEN, FaceIDPlusProjModel
from .linear import ImageProjModel
from .mlp import MLPProjModel, TokenMLP
from .ops import TorchOps
from .resampler import Resampler
from .time_resampler import TimeResampler


def build_projection(config, operations=TorchOps, device=None, dtype=None):
    """Create the empty projection network an AdapterConfig describes."""
    if config.projection == "linear":
        return ImageProjModel(config.feature_dim, config.cross_dim, config.num_tokens,
                              operations=operations, device=device, dtype=dtype)
    if config.projection == "mlp":
        return MLPProjModel(config.feature_dim, config.cross_dim,
                            operations=operations, device=device, dtype=dtype)
    if config.projection == "resampler":
        r = config.resampler
        return Resampler(dim=r.dim, depth=r.depth, dim_head=r.dim_head, heads=r.heads,
                         num_queries=r.num_queries, embedding_dim=r.embedding_dim,
                         output_dim=r.output_dim, ff_mult=r.ff_mult,
                         operations=operations, device=device, dtype=dtype)
    if config.projection in ("faceid", "faceid-plus"):
        args = (config.feature_dim, FACE_MLP_HIDDEN, config.cross_dim, config.num_tokens)
        if config.projection == "faceid":
            return TokenMLP(*args, operations=operations, device=device, dtype=dtype)
        return FaceIDPlusProjModel(*args, config.resampler, operations=operations, device=device, dtype=dtype)
    if config.projection == "mlp-tokens":  # InstantX's Flux adapter: hidden twice the feature width
        return TokenMLP(config.feature_dim, 2 * config.feature_dim, config.cross_dim, config.num_tokens,
                        operations=operations, device=device, dtype=dtype)
    if config.projection == "time-resampler":  # SD3.5: the tokens depend on the timestep too
        r = config.resampler
        return TimeResampler(dim=r.dim, depth=r.depth, dim_head=r.dim_head, heads=r.heads, num_queries=r.num_queries,
                             embedding_dim=r.embedding_dim, output_dim=r.output_dim, ff_mult=r.ff_mult,
                             time_dim=r.time_dim, operations=operations, device=device, dtype=dtype)
    raise ValueError(f"unknown projection kind {config.projection!r}")
