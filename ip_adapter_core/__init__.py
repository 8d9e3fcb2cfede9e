"""The IP-Adapter engine. Importable without ComfyUI, except the host modules.

Host-free: files (safe reading), config (variant detection), layers (layer maps),
adapter (weights as modules), tokens (projection, negatives), attention (decoupled
attention maths), masks, embeds (λ, blocks, timing), embeds_io.
Host side (import comfy): loader (model folder, ModelPatcher), patch (attn2 patch),
vision (CLIP encoding).
"""
