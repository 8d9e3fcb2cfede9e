"""Small Kolors-shaped UNets and Kolors-layout adapter files, and Kolors' IP-Adapter maths transcribed for the
parity tests.

ComfyUI has no Kolors model; MinusZone's extension (ComfyUI-Kolors-MZ) loads one as ComfyUI's SDXL model class with
``context_dim 2048``, ``adm_in_channels 5632`` and a UNet subclass that owns ``encoder_hid_proj`` (ChatGLM3's 4096 ->
2048) and applies it to the text before the UNet runs. ``comfy_kolors`` builds that shape from ComfyUI's own classes:
SDXL's blocks (70 cross-attention layers) at 64 base channels, and a UNet subclass doing what MZ's does. Its text
width is a parameter: the FaceID Plus tests use a narrower "ChatGLM3" than 4096, so the face projection (whose
resampler is as wide as the text) stays small; the published widths are checked by detection on meta tensors.

The reference (``reference_velocity``) transcribes Kolors' pipelines (Kwai-Kolors/Kolors: ``ipadapter/`` for Plus,
diffusers' IP-Adapter; ``kolors/pipelines/pipeline_stable_diffusion_xl_chatglm_256_ipadapter_FaceID.py`` and
``kolors/models/ipa_faceid_plus``): image tokens from tencent's Resampler / ProjPlusModel (support/reference_train.py,
support/reference_faceid.py), FaceID's tokens appended to the ChatGLM3 text and taken through ``encoder_hid_proj``
with it, and in every cross-attention ``softmax(q K_text) V_text + scale · softmax(q K') V'`` (IPAttnProcessor2_0) -
here as attn2 replace patches on a clone of the same ComfyUI model, written without the extension's code.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

CHANNELS = 64   # base channels of the small UNet (SDXL: 320); heads of 64 as SDXL's
KOLORS_ADM = 5632
VIT_L_HIDDEN = 1024


def comfy_kolors(text_width: int = 4096, seed: int = 0):
    """A ModelPatcher around a Kolors-shaped UNet (module docstring) with random float32 weights."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    from support.host_unet import comfy_unet_config, init_random_

    class KolorsShapedUNet(openaimodel.UNetModel):
        """What MZ's KolorsUNetModel adds to ComfyUI's UNet: the text projection, applied to the context."""

        def forward(self, x, timesteps=None, context=None, *args, **kwargs):
            return super().forward(x, timesteps, self.encoder_hid_proj(context), *args, **kwargs)

    cfg = dict(comfy_unet_config("sdxl"), model_channels=CHANNELS, adm_in_channels=KOLORS_ADM)
    model_config = comfy.supported_models.SDXL(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    dm = model.diffusion_model
    dm.__class__ = KolorsShapedUNet
    dm.encoder_hid_proj = torch.nn.Linear(text_width, 2048)
    init_random_(dm, seed)
    with torch.no_grad():  # init_random_ leaves biases 0 and norms 1; give the projection a bias that matters
        dm.encoder_hid_proj.bias.copy_(0.1 * torch.randn(2048, generator=torch.Generator().manual_seed(seed + 1)))
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def _rand(gen, *shape, std=1.0, mean=0.0, dtype=torch.float32, device=None):
    if device == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    return (mean + std * torch.randn(shape, generator=gen)).to(dtype)


def _layers(channels):
    from ipadapter_ext.ip_adapter_core.files.layers import layers_of_width

    return layers_of_width("sdxl", channels)


def _resampler(gen, prefix, dim, heads, depth, embedding, out, queries=0, **kw):
    inner = heads * 64
    sd = {f"{prefix}proj_in.weight": _rand(gen, dim, embedding, std=embedding ** -0.5, **kw),
          f"{prefix}proj_in.bias": _rand(gen, dim, std=0.02, **kw),
          f"{prefix}proj_out.weight": _rand(gen, out, dim, std=dim ** -0.5, **kw),
          f"{prefix}proj_out.bias": _rand(gen, out, std=0.02, **kw),
          f"{prefix}norm_out.weight": _rand(gen, out, std=0.1, mean=1.0, **kw),
          f"{prefix}norm_out.bias": _rand(gen, out, std=0.1, **kw)}
    if queries:
        sd[f"{prefix}latents"] = _rand(gen, 1, queries, dim, std=dim ** -0.5, **kw)
    for i in range(depth):
        p = f"{prefix}layers.{i}"
        for norm in (f"{p}.0.norm1", f"{p}.0.norm2", f"{p}.1.0"):
            sd[f"{norm}.weight"] = _rand(gen, dim, std=0.1, mean=1.0, **kw)
            sd[f"{norm}.bias"] = _rand(gen, dim, std=0.1, **kw)
        sd.update({f"{p}.0.to_q.weight": _rand(gen, inner, dim, std=dim ** -0.5, **kw),
                   f"{p}.0.to_kv.weight": _rand(gen, 2 * inner, dim, std=dim ** -0.5, **kw),
                   f"{p}.0.to_out.weight": _rand(gen, dim, inner, std=inner ** -0.5, **kw),
                   f"{p}.1.1.weight": _rand(gen, 4 * dim, dim, std=dim ** -0.5, **kw),
                   f"{p}.1.3.weight": _rand(gen, dim, 4 * dim, std=(4 * dim) ** -0.5, **kw)})
    return sd


def _kv(gen, section, channels, width, **kw):
    return {f"{section}.{layer.file_index}.to_{kv}_ip.weight": _rand(gen, layer.hidden, width, std=width ** -0.5, **kw)
            for layer in _layers(channels) for kv in "kv"}


def plus_state_dict(channels=320, dim=2048, heads=12, seed=0, dtype=torch.float16, device=None) -> dict:
    """Kolors-IP-Adapter-Plus' keys (FAMILIES.md §2): a Resampler (16 queries, ``dim`` wide, ``heads`` heads of 64)
    over ViT-L/14-336 states (1024) to 2048-wide tokens; K'/V' [hidden, 2048] per SDXL attn2 layer. Published:
    dim 2048, 12 heads, 320 channels."""
    gen = torch.Generator().manual_seed(seed)
    kw = dict(dtype=dtype, device=device)
    return {**_resampler(gen, "image_proj.", dim, heads, 4, VIT_L_HIDDEN, 2048, queries=16, **kw),
            **_kv(gen, "ip_adapter", channels, 2048, **kw)}


def faceid_state_dict(channels=320, text_width=4096, tokens=6, seed=0, dtype=torch.float16, device=None) -> dict:
    """Kolors-IP-Adapter-FaceID-Plus' keys (FAMILIES.md §2): ProjPlusModel(512 -> 1024 -> tokens·text_width, LayerNorm)
    whose FacePerceiverResampler (text_width wide, text_width/64 heads) reads ViT-L/14-336 states; K'/V'
    [hidden, 2048] under ``adapter_modules``. Published: text_width 4096, 6 tokens, 320 channels."""
    gen = torch.Generator().manual_seed(seed)
    kw = dict(dtype=dtype, device=device)
    sd = {"image_proj.proj.0.weight": _rand(gen, 1024, 512, std=512 ** -0.5, **kw),
          "image_proj.proj.0.bias": _rand(gen, 1024, std=0.02, **kw),
          "image_proj.proj.2.weight": _rand(gen, tokens * text_width, 1024, std=1024 ** -0.5, **kw),
          "image_proj.proj.2.bias": _rand(gen, tokens * text_width, std=0.02, **kw),
          "image_proj.norm.weight": _rand(gen, text_width, std=0.1, mean=1.0, **kw),
          "image_proj.norm.bias": _rand(gen, text_width, std=0.1, **kw)}
    sd.update(_resampler(gen, "image_proj.perceiver_resampler.", text_width, text_width // 64, 4, VIT_L_HIDDEN,
                         text_width, **kw))
    sd.update(_kv(gen, "adapter_modules", channels, 2048, **kw))
    return sd


def write(path: Path, sd: dict) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.float().contiguous() for k, v in sd.items()}, str(path))
    return path


def section(sd: dict, name: str) -> dict:
    return {k.partition(".")[2]: v.float() for k, v in sd.items() if k.partition(".")[0] == name}


def reference_plus_tokens(sd: dict, features: torch.Tensor, dim: int, heads: int) -> torch.Tensor:
    """tencent's Resampler (Kolors' IP-Adapter-Plus image_proj) on ViT-L/14-336 states."""
    from support.reference_train import RefResampler

    r = RefResampler(dim, 4, 64, heads, 16, VIT_L_HIDDEN, 2048, 4)
    r.load_state_dict(section(sd, "image_proj"), strict=True)
    with torch.no_grad():
        return r.eval()(features)


def reference_faceid_tokens(sd: dict, ids: torch.Tensor, clip_states: torch.Tensor, text_width: int, tokens: int,
                            scale: float = 1.0) -> torch.Tensor:
    """Kolors' ProjPlusModel(cross 4096, id 512, clip 1024, 6 tokens) with its default shortcut (True)."""
    from support.reference_faceid import RefProjPlusModel

    m = RefProjPlusModel(text_width, 512, VIT_L_HIDDEN, tokens)
    m.load_state_dict(section(sd, "image_proj"), strict=True)
    with torch.no_grad():
        return m.eval()(ids, clip_states, shortcut=True, scale=scale)


def reference_patched(model, kv: dict, positive: torch.Tensor, negative: torch.Tensor, scale: float):
    """A clone of ``model`` whose attn2 layers compute IPAttnProcessor2_0's sum with the image tokens ``positive``
    (cond rows) / ``negative`` (uncond rows), already in the width K'/V' read (2048)."""
    model = model.clone()
    for layer in _layers(model.model.diffusion_model.model_channels):
        wk, wv = kv[f"{layer.file_index}.to_k_ip.weight"].float(), kv[f"{layer.file_index}.to_v_ip.weight"].float()

        def attn2(q, k, v, extra, wk=wk, wv=wv):
            heads = extra["n_heads"]
            rows = q.shape[0]
            chunks = extra["cond_or_uncond"]
            tokens = torch.cat([(positive if c == 0 else negative).expand(rows // len(chunks), -1, -1) for c in chunks])

            def split(t):
                return t.view(rows, -1, heads, t.shape[-1] // heads).transpose(1, 2)

            def merge(t):
                return t.transpose(1, 2).reshape(rows, -1, t.shape[1] * t.shape[-1])

            out = merge(F.scaled_dot_product_attention(split(q), split(k), split(v)))
            ip_k, ip_v = split(F.linear(tokens, wk)), split(F.linear(tokens, wv))
            ip = merge(F.scaled_dot_product_attention(split(q), ip_k, ip_v))
            return out + scale * ip

        model.set_model_attn2_replace(attn2, *layer.key)
    return model
