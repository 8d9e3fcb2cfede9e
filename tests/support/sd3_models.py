"""Small SD3.5-Large-structured MMDiTs and InstantX-layout SD3.5 adapter files for them.

The MMDiT is ComfyUI's own class (``comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper``, detected
by ComfyUI as ``supported_models.SD3``) with SD3.5 Large's structure (RMS q/k norms, heads of 64, T5-width context
4096, pooled 2048, no MMDiT-X self-attention) but few blocks: an MMDiT's width is 64 · depth, so 2 blocks are 128
wide. Its diffusers twin (``SD3Transformer2DModel``) gets the same tensors through ComfyUI's own key map
(``comfy.utils.mmdit_to_diffusers``).

InstantX's key layout and shapes are written out here from FAMILIES.md §4 (their released ``ip-adapter.bin``), not
taken from the code under test:

    image_proj: latents [1, Q, D]; proj_in [D, 1152] + b; proj_out [W, D] + b; norm_out [W] + b
                time_embedding.linear_1 [D, 320] + b; time_embedding.linear_2 [D, D] + b
                layers.{l}.0.norm1 / norm2 [D] + b; .0.to_q [h·64, D]; .0.to_kv [2·h·64, D]; .0.to_out [D, h·64]
                layers.{l}.1.0 [D] + b; .1.1 [4D, D]; .1.3 [D, 4D]; layers.{l}.2.1 [4D, D] + b
    ip_adapter: {i}.norm_ip.linear [2W, D] + b; {i}.to_k_ip / to_v_ip [hidden, W]; {i}.norm_q / norm_k / norm_ip_k [64]

The published file: D 1280 (20 heads), Q 64, W = hidden = 2432, 38 blocks.
"""
from __future__ import annotations

from pathlib import Path

import torch

from support.flux_models import load_mapped

CONTEXT = 4096      # T5-XXL width, SD3's context input
POOLED = 2048       # CLIP-L + CLIP-G pooled
SIGLIP_HIDDEN = 1152
SIGLIP_POSITIONS = 729
TIME_IN = 320


def sd3_unet_config(depth: int = 2, pos_embed_max_size: int = 16) -> dict:
    """ComfyUI's unet_config of an MMDiT as its detection writes it for SD3.5 Large, with ``depth`` blocks."""
    return dict(in_channels=16, patch_size=2, out_channels=16, depth=depth, input_size=None, adm_in_channels=POOLED,
                context_embedder_config={"target": "torch.nn.Linear",
                                         "params": {"in_features": CONTEXT, "out_features": 64 * depth}},
                num_patches=pos_embed_max_size ** 2, pos_embed_max_size=pos_embed_max_size, qk_norm="rms",
                pos_embed_scaling_factor=None, x_block_self_attn_layers=[])


def comfy_sd3(depth: int = 2, seed: int = 0, **config):
    """A ComfyUI ModelPatcher around ComfyUI's MMDiT with random float32 weights: matrices N(0, 1/fan_in), norm
    weights 1 + N(0, 0.1), biases N(0, 0.1)."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher

    model_config = comfy.model_detection.model_config_from_unet_config({**sd3_unet_config(depth), **config})
    assert type(model_config).__name__ == "SD3", type(model_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            elif "ln_" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for b in model.diffusion_model.buffers():  # pos_embed: allocated, never filled without a checkpoint
            b.copy_(0.1 * torch.randn(b.shape, generator=gen))
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def diffusers_twin(patcher):
    """diffusers' SD3Transformer2DModel holding the same tensors as ComfyUI's MMDiT (float32)."""
    import comfy.utils
    from diffusers import SD3Transformer2DModel

    dm = patcher.model.diffusion_model
    depth = len(dm.joint_blocks)
    twin = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, num_layers=depth,
                                 attention_head_dim=64, num_attention_heads=depth, joint_attention_dim=CONTEXT,
                                 caption_projection_dim=64 * depth, pooled_projection_dim=POOLED, out_channels=16,
                                 pos_embed_max_size=dm.pos_embed_max_size, qk_norm="rms_norm")
    return load_mapped(twin, comfy.utils.mmdit_to_diffusers({"depth": depth}), dm.state_dict())


def sd3_adapter_state_dict(blocks: int = 38, hidden: int = 2432, dim: int = 1280, heads: int = 20, queries: int = 64,
                           depth: int = 4, seed: int = 0, dtype=torch.float16, device=None) -> dict[str, torch.Tensor]:
    """InstantX's keys (module docstring) with random values, or empty ones on ``device='meta'``. Tokens are as wide
    as the blocks (W = hidden), as in the published file."""
    gen = torch.Generator().manual_seed(seed)
    width = hidden

    def t(*shape, std=1.0, mean=0.0):
        if device == "meta":
            return torch.empty(shape, dtype=dtype, device="meta")
        return (mean + std * torch.randn(shape, generator=gen)).to(dtype)

    inner = heads * 64
    sd = {"image_proj.latents": t(1, queries, dim, std=dim ** -0.5),
          "image_proj.proj_in.weight": t(dim, SIGLIP_HIDDEN, std=SIGLIP_HIDDEN ** -0.5),
          "image_proj.proj_in.bias": t(dim, std=0.02),
          "image_proj.proj_out.weight": t(width, dim, std=dim ** -0.5), "image_proj.proj_out.bias": t(width, std=0.02),
          "image_proj.norm_out.weight": t(width, std=0.1, mean=1.0), "image_proj.norm_out.bias": t(width, std=0.1),
          "image_proj.time_embedding.linear_1.weight": t(dim, TIME_IN, std=TIME_IN ** -0.5),
          "image_proj.time_embedding.linear_1.bias": t(dim, std=0.02),
          "image_proj.time_embedding.linear_2.weight": t(dim, dim, std=dim ** -0.5),
          "image_proj.time_embedding.linear_2.bias": t(dim, std=0.02)}
    for lay in range(depth):
        p = f"image_proj.layers.{lay}"
        for norm in (f"{p}.0.norm1", f"{p}.0.norm2", f"{p}.1.0"):
            sd[f"{norm}.weight"], sd[f"{norm}.bias"] = t(dim, std=0.1, mean=1.0), t(dim, std=0.1)
        sd.update({f"{p}.0.to_q.weight": t(inner, dim, std=dim ** -0.5),
                   f"{p}.0.to_kv.weight": t(2 * inner, dim, std=dim ** -0.5),
                   f"{p}.0.to_out.weight": t(dim, inner, std=inner ** -0.5),
                   f"{p}.1.1.weight": t(4 * dim, dim, std=dim ** -0.5),
                   f"{p}.1.3.weight": t(dim, 4 * dim, std=(4 * dim) ** -0.5),
                   f"{p}.2.1.weight": t(4 * dim, dim, std=0.1 * dim ** -0.5), f"{p}.2.1.bias": t(4 * dim, std=0.05)})
    for i in range(blocks):
        p = f"ip_adapter.{i}"
        sd.update({f"{p}.norm_ip.linear.weight": t(2 * width, dim, std=0.1 * dim ** -0.5),
                   f"{p}.norm_ip.linear.bias": t(2 * width, std=0.05),
                   f"{p}.to_k_ip.weight": t(hidden, width, std=width ** -0.5),
                   f"{p}.to_v_ip.weight": t(hidden, width, std=width ** -0.5)})
        for norm in ("norm_q", "norm_k", "norm_ip_k"):
            sd[f"{p}.{norm}.weight"] = t(64, std=0.1, mean=1.0)
    return sd


def write_sd3_adapter(path: Path, blocks: int = 2, dim: int = 128, heads: int = 2, queries: int = 8, depth: int = 4,
                      seed: int = 0) -> Path:
    """A small adapter for ``comfy_sd3(blocks)``: blocks 64·blocks wide, a Resampler ``dim`` wide (4 layers: diffusers
    builds exactly 4)."""
    from safetensors.torch import save_file

    save_file(sd3_adapter_state_dict(blocks, 64 * blocks, dim, heads, queries, depth, seed, torch.float32), str(path))
    return path


def diffusers_ip_sections(flat: dict[str, torch.Tensor]) -> dict:
    """The file's flat keys in the two sections ``SD3Transformer2DLoadersMixin._load_ip_adapter_weights`` takes."""
    out = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        section, rest = key.split(".", 1)
        out[section][rest] = value
    return out
