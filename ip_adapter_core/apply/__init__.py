"""Applying the image prompt inside the model: the UNet attn2 patch, the per-run state, the attention maths,
masks, and the attention map. See docs/architecture.md."""
