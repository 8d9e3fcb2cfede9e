"""The FaceID projections: a face-recognition embedding (512 wide) -> image tokens.

The faceid and portrait projection is the original repository's MLPProjModel (mlp.TokenMLP): Linear, GELU,
Linear to T tokens, LayerNorm per token. ``FaceIDPlusProjModel`` is its ProjPlusModel (plus, plusv2): the same MLP
gives the ID tokens, which are the queries of a FacePerceiverResampler over CLIP ViT-H penultimate states
of the aligned face crop; v2 adds them back (``shortcut``) with weight ``s_scale``. The portrait-unnorm
file is a plain Resampler (resampler.py). Parameter names follow tencent-ailab/IP-Adapter so the files load
strictly.
"""
from .mlp import TokenMLP
from .ops import TorchOps
from .resampler import Resampler

FACE_MLP_HIDDEN = 1024  # the MLP's hidden width in every release (FAMILIES.md §1.2)


class FacePerceiverResampler(Resampler):
    """The ID tokens (as latents) attend over projected CLIP states: a Resampler without learned queries."""

    def __init__(self, dim, depth, dim_head, heads, embedding_dim, output_dim, ff_mult,
                 operations=TorchOps, device=None, dtype=None):
        super().__init__(dim, depth, dim_head, heads, 0, embedding_dim, output_dim, ff_mult, operations, device,
                         dtype)

    def forward(self, latents, x):
        return super().forward(x, latents)


class FaceIDPlusProjModel(TokenMLP):
    """([B, 512] face embedding, [B, 257, 1280] CLIP states of the face crop) -> [B, num_tokens, cross_dim]:
    the FaceID MLP's tokens refined by a FacePerceiverResampler."""

    def __init__(self, embed_dim, hidden, cross_dim, num_tokens, resampler, operations=TorchOps,
                 device=None, dtype=None):
        super().__init__(embed_dim, hidden, cross_dim, num_tokens, operations, device, dtype)
        r = resampler
        self.perceiver_resampler = FacePerceiverResampler(r.dim, r.depth, r.dim_head, r.heads, r.embedding_dim,
                                                          r.output_dim, r.ff_mult, operations, device=device,
                                                          dtype=dtype)

    def forward(self, face_embeds, clip_states, shortcut: bool = False, s_scale: float = 1.0):
        ids = super().forward(face_embeds)
        out = self.perceiver_resampler(ids, clip_states)
        return ids + s_scale * out if shortcut else out
