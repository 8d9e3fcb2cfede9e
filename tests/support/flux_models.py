"""Small Flux.1 models of the real structure, and XLabs-layout adapter files for them.

The Flux transformer is ComfyUI's own class (``comfy.ldm.flux.model.Flux``, detected by ComfyUI as
``supported_models.Flux``) with Flux.1's structure and head width (128, RoPE axes 16/56/56, T5 context 4096,
CLIP pooled 768, guidance embedding) but few blocks and few heads, so a forward pass takes milliseconds.
Its diffusers twin (``FluxTransformer2DModel``) gets the same tensors through ComfyUI's own key map
(``comfy.utils.flux_to_diffusers``, the one its LoRA loader uses).

XLabs' key layout and shapes are written out here from FAMILIES.md §3.1 (their released files), not taken
from the code under test:

    ip_adapter_proj_model.proj [N·4096, 768] + bias, ip_adapter_proj_model.norm [4096] weight + bias
    double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj [hidden, 4096] + bias [hidden]
"""
from __future__ import annotations

from pathlib import Path

import torch

HEAD_DIM = 128
CONTEXT = 4096        # T5-XXL width: the width of XLabs' image tokens too
CLIP_EMBEDS = 768     # CLIP ViT-L/14 image_embeds (and Flux's pooled text input)
XLABS_TOKENS = {"v1": 4, "v2": 16}
SIGLIP_POOLED = 1152  # SigLIP so400m's width: InstantX's image feature


def flux_config(double: int = 2, single: int = 1, heads: int = 2) -> dict:
    """ComfyUI's unet_config of a Flux.1 [dev] of ``double`` + ``single`` blocks and ``heads`` heads of 128."""
    return dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=CLIP_EMBEDS, context_in_dim=CONTEXT,
                hidden_size=heads * HEAD_DIM, mlp_ratio=4.0, num_heads=heads, depth=double,
                depth_single_blocks=single, axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True,
                guidance_embed=True, txt_ids_dims=[])


def comfy_flux(double: int = 2, single: int = 1, heads: int = 2, seed: int = 0):
    """A ComfyUI ModelPatcher around ComfyUI's Flux class with random float32 weights: matrices
    N(0, 1/fan_in), norm scales 1 + N(0, 0.1), biases N(0, 0.1) (so nothing is trivially zero)."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher

    cfg = flux_config(double, single, heads)
    model_config = comfy.model_detection.model_config_from_unet_config(cfg)
    assert type(model_config).__name__ == "Flux", type(model_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            elif name.endswith("scale"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def diffusers_twin(patcher):
    """diffusers' FluxTransformer2DModel holding the same tensors as ComfyUI's model (float32)."""
    import comfy.utils
    from diffusers import FluxTransformer2DModel

    dm = patcher.model.diffusion_model
    p = dm.params
    twin = FluxTransformer2DModel(patch_size=1, in_channels=p.in_channels * 4, num_layers=p.depth,
                                  num_single_layers=p.depth_single_blocks, attention_head_dim=HEAD_DIM,
                                  num_attention_heads=p.num_heads, joint_attention_dim=p.context_in_dim,
                                  pooled_projection_dim=p.vec_in_dim, guidance_embeds=True,
                                  axes_dims_rope=tuple(p.axes_dim))
    key_map = comfy.utils.flux_to_diffusers({"depth": p.depth, "depth_single_blocks": p.depth_single_blocks,
                                             "hidden_size": p.hidden_size})
    return load_mapped(twin, key_map, dm.state_dict())


def load_mapped(twin, key_map: dict, sd: dict):
    """``twin`` (a diffusers transformer) loaded strictly with ComfyUI's tensors ``sd`` through one of ComfyUI's own
    diffusers key maps (``comfy.utils.flux_to_diffusers``, ``mmdit_to_diffusers``: diffusers key -> ComfyUI key)."""
    mapped = {}
    for dkey, ckey in key_map.items():
        if isinstance(ckey, str):
            if ckey in sd:
                mapped[dkey] = sd[ckey]
        elif len(ckey) == 3:                      # (key, None, function): the final layer's swapped halves
            if ckey[0] in sd:
                mapped[dkey] = ckey[2](sd[ckey[0]])
        elif ckey[0] in sd:                       # (key, (dim, offset, size)): a slice of a fused qkv
            dim, offset, size = ckey[1]
            mapped[dkey] = sd[ckey[0]].narrow(dim, offset, size)
    missing, unexpected = twin.load_state_dict(mapped, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    return twin.eval()


def xlabs_state_dict(version: str = "v2", double: int = 19, hidden: int = 3072, seed: int = 0,
                     dtype=torch.float16, device=None) -> dict[str, torch.Tensor]:
    """XLabs' flat keys with random values (or empty ones on ``device='meta'``): projection weights
    N(0, 1/768), norm weight 1 + N(0, 0.1), K'/V' N(0, 1/4096)."""
    tokens = XLABS_TOKENS[version]
    gen = torch.Generator().manual_seed(seed)

    def t(*shape, std=1.0, mean=0.0):
        if device == "meta":
            return torch.empty(shape, dtype=dtype, device="meta")
        return (mean + std * torch.randn(shape, generator=gen)).to(dtype)

    sd = {"ip_adapter_proj_model.proj.weight": t(tokens * CONTEXT, CLIP_EMBEDS, std=CLIP_EMBEDS ** -0.5),
          "ip_adapter_proj_model.proj.bias": t(tokens * CONTEXT, std=0.02),
          "ip_adapter_proj_model.norm.weight": t(CONTEXT, std=0.1, mean=1.0),
          "ip_adapter_proj_model.norm.bias": t(CONTEXT, std=0.1)}
    for i in range(double):
        for kv in "kv":
            pre = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj"
            sd[f"{pre}.weight"] = t(hidden, CONTEXT, std=CONTEXT ** -0.5)
            sd[f"{pre}.bias"] = t(hidden, std=0.1)
    return sd


def instantx_state_dict(double: int = 19, single: int = 38, hidden: int = 3072, tokens: int = 128,
                        width: int = CONTEXT, seed: int = 0, dtype=torch.float16, device=None) -> dict[str, torch.Tensor]:
    """InstantX/FLUX.1-dev-IP-Adapter's keys (FAMILIES.md §3.2) with random values (or empty ones on ``device=
    'meta'``): MLPProjModel(SigLIP pooled 1152 -> 2304 -> tokens·width) + LayerNorm, bias-free K'/V' [hidden, width]
    in ``double`` then ``single`` blocks. The published file: 128 tokens of width 4096, 19 + 38 blocks of 3072."""
    gen = torch.Generator().manual_seed(seed)

    def t(*shape, std=1.0, mean=0.0):
        if device == "meta":
            return torch.empty(shape, dtype=dtype, device="meta")
        return (mean + std * torch.randn(shape, generator=gen)).to(dtype)

    sd = {"image_proj.proj.0.weight": t(2 * SIGLIP_POOLED, SIGLIP_POOLED, std=SIGLIP_POOLED ** -0.5),
          "image_proj.proj.0.bias": t(2 * SIGLIP_POOLED, std=0.02),
          "image_proj.proj.2.weight": t(tokens * width, 2 * SIGLIP_POOLED, std=(2 * SIGLIP_POOLED) ** -0.5),
          "image_proj.proj.2.bias": t(tokens * width, std=0.02),
          "image_proj.norm.weight": t(width, std=0.1, mean=1.0), "image_proj.norm.bias": t(width, std=0.1)}
    for i in range(double + single):
        for kv in "kv":
            sd[f"ip_adapter.{i}.to_{kv}_ip.weight"] = t(hidden, width, std=width ** -0.5)
    return sd


def write_instantx(path: Path, double: int = 1, single: int = 2, hidden: int = 256, tokens: int = 16,
                   width: int = 512, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    save_file(instantx_state_dict(double, single, hidden, tokens, width, seed, torch.float32), str(path))
    return path


def write_xlabs(path: Path, version: str = "v2", double: int = 2, hidden: int = 256, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    save_file(xlabs_state_dict(version, double, hidden, seed, torch.float32), str(path))
    return path


def diffusers_ip_sections(flat: dict[str, torch.Tensor]) -> dict:
    """XLabs' flat keys in the sections ``FluxTransformer2DLoadersMixin._load_ip_adapter_weights`` takes,
    renamed as diffusers' ``FluxIPAdapterMixin.load_ip_adapter`` renames them (loaders/ip_adapter.py)."""
    out = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        if key.startswith("ip_adapter_proj_model."):
            out["image_proj"][key.removeprefix("ip_adapter_proj_model.")] = value
        else:
            i, kv, end = key.split(".")[1], key.split("_proj.")[0][-1], key.rsplit(".", 1)[1]
            out["ip_adapter"][f"{i}.to_{kv}_ip.{end}"] = value
    return out
