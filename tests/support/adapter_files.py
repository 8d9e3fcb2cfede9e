"""Random-weight IP-Adapter files of the real shapes, in the real file formats.

Shapes are written out here from the released files (h94/IP-Adapter: projection widths and
token counts per variant) and the layer numbering of diffusers' ``unet.attn_processors`` (all down
blocks, then up blocks, then the mid block; attn2 at the odd indices), independently of the code
under test, so a detection bug cannot hide behind a shared table.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

SD15_HIDDEN = [320] * 2 + [640] * 2 + [1280] * 2 + [1280] * 3 + [640] * 3 + [320] * 3 + [1280]
assert len(SD15_HIDDEN) == 16
# SDXL in file order: input 4,5 x2 (640); input 7,8 x10; output 0,1,2 x10; output 3,4,5 x2; middle x10
SDXL_HIDDEN = [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10
assert len(SDXL_HIDDEN) == 70

# name: (family, projection, tokens, encoder, feature width, cross width, extra)
VARIANTS = {
    "ip-adapter_sd15": ("sd15", "linear", 4, "ViT-H/14", 1024, 768),
    "ip-adapter_sd15_vit-G": ("sd15", "linear", 4, "ViT-bigG/14", 1280, 768),
    "ip-adapter-plus_sd15": ("sd15", "resampler", 16, "ViT-H/14", 1280, 768),
    "ip-adapter-full-face_sd15": ("sd15", "mlp", 257, "ViT-H/14", 1280, 768),
    "ip-adapter_sdxl": ("sdxl", "linear", 4, "ViT-bigG/14", 1280, 2048),
    "ip-adapter_sdxl_vit-h": ("sdxl", "linear", 4, "ViT-H/14", 1024, 2048),
    "ip-adapter-plus_sdxl_vit-h": ("sdxl", "resampler", 16, "ViT-H/14", 1280, 2048),
}
RESAMPLER_DIM = {"sd15": (768, 12), "sdxl": (1280, 20)}  # (dim, heads); dim_head 64, depth 4

# FaceID (h94/IP-Adapter-FaceID; FAMILIES.md §1): name -> (family, image_proj kind, tokens per face, LoRA rank).
# faceid / portrait: MLPProjModel 512 -> 1024 -> T*C + LayerNorm; plus: the same + a FacePerceiverResampler
# (dim C, heads C/64, 4 layers) over ViT-H states (1280); portrait-unnorm: a Resampler dim 1280, 20 heads,
# 16 queries over the raw 512-d embedding. LoRA: rank 128 on to_q/k/v/out of every attn1 (2k) and attn2 (2k+1).
FACEID_VARIANTS = {
    "ip-adapter-faceid_sd15": ("sd15", "faceid", 4, 128),
    "ip-adapter-faceid-plusv2_sd15": ("sd15", "faceid-plus", 4, 128),
    "ip-adapter-faceid-portrait-v11_sd15": ("sd15", "faceid", 16, 0),
    "ip-adapter-faceid_sdxl": ("sdxl", "faceid", 4, 128),
    "ip-adapter-faceid-plusv2_sdxl": ("sdxl", "faceid-plus", 4, 128),
    "ip-adapter-faceid-portrait_sdxl": ("sdxl", "faceid", 16, 0),
    "ip-adapter-faceid-portrait_sdxl_unnorm": ("sdxl", "portrait-unnorm", 16, 0),
}


def faceid_proj_state(kind, tokens, cross, gen):
    """image_proj of a FaceID file, shapes as FAMILIES.md §1.2 lists them."""
    if kind == "portrait-unnorm":
        sd = image_proj_state("resampler", tokens, 1280, cross, "sdxl", gen)
        sd.update(_lin(gen, 1280, 512, prefix="proj_in."))  # reads the 512-d embedding, not CLIP
        return sd
    sd = {}
    sd.update(_lin(gen, 1024, 512, prefix="proj.0."))
    sd.update(_lin(gen, cross * tokens, 1024, prefix="proj.2."))
    sd.update(_ln(gen, cross, "norm."))
    if kind == "faceid-plus":
        sd.update(_perceiver_state(gen, cross, cross, 1280, cross, "perceiver_resampler."))
    return sd


def _perceiver_state(gen, dim, inner, feat, out, prefix=""):
    """proj_in, proj_out, norm_out and the 4 (attention, feed-forward) layers of a Resampler or a
    FacePerceiverResampler: width ``dim``, attention width ``inner``, ``feat`` in, ``out`` out."""
    sd = {}
    sd.update(_lin(gen, dim, feat, prefix=prefix + "proj_in."))
    sd.update(_lin(gen, out, dim, prefix=prefix + "proj_out."))
    sd.update(_ln(gen, out, prefix + "norm_out."))
    for i in range(4):
        p = f"{prefix}layers.{i}."
        sd.update(_ln(gen, dim, p + "0.norm1."))
        sd.update(_ln(gen, dim, p + "0.norm2."))
        sd.update(_lin(gen, inner, dim, False, p + "0.to_q."))
        sd.update(_lin(gen, 2 * inner, dim, False, p + "0.to_kv."))
        sd.update(_lin(gen, dim, inner, False, p + "0.to_out."))
        sd.update(_ln(gen, dim, p + "1.0."))
        sd.update(_lin(gen, 4 * dim, dim, False, p + "1.1."))
        sd.update(_lin(gen, dim, 4 * dim, False, p + "1.3."))
    return sd


def faceid_lora_state(family, cross, rank, gen, scale=1.0):
    """``{i}.to_{q,k,v,out}_lora.{down,up}.weight`` for every attention processor i (attn1 even, attn2 odd).
    ``scale`` sizes the LoRA's effect (up is drawn small, as a trained LoRA's change is)."""
    hidden = SD15_HIDDEN if family == "sd15" else SDXL_HIDDEN
    sd = {}
    for k, h in enumerate(hidden):
        for i, ctx in ((2 * k, h), (2 * k + 1, cross)):
            for p in ("to_q", "to_k", "to_v", "to_out"):
                width_in = ctx if p in ("to_k", "to_v") else h
                sd[f"{i}.{p}_lora.down.weight"] = torch.randn(rank, width_in, generator=gen) / width_in ** 0.5
                sd[f"{i}.{p}_lora.up.weight"] = scale * torch.randn(h, rank, generator=gen) / rank ** 0.5
    return sd


def _lin(gen, out, inp, bias=True, prefix=""):
    w = torch.randn(out, inp, generator=gen) / inp ** 0.5
    d = {prefix + "weight": w}
    if bias:
        d[prefix + "bias"] = torch.randn(out, generator=gen) * 0.02
    return d


def _ln(gen, dim, prefix=""):
    return {prefix + "weight": 1 + 0.1 * torch.randn(dim, generator=gen),
            prefix + "bias": 0.1 * torch.randn(dim, generator=gen)}


def image_proj_state(projection, tokens, feat, cross, family, gen):
    sd = {}
    if projection == "linear":
        sd.update(_lin(gen, tokens * cross, feat, prefix="proj."))
        sd.update(_ln(gen, cross, "norm."))
    elif projection == "mlp":
        sd.update(_lin(gen, feat, feat, prefix="proj.0."))
        sd.update(_lin(gen, cross, feat, prefix="proj.2."))
        sd.update(_ln(gen, cross, "proj.3."))
    else:
        dim, heads = RESAMPLER_DIM[family]
        inner = heads * 64
        sd["latents"] = torch.randn(1, tokens, dim, generator=gen) / dim ** 0.5
        sd.update(_perceiver_state(gen, dim, inner, feat, cross))
    return sd


def ip_layers_state(family, cross, gen, only_layer: int | None = None):
    hidden = SD15_HIDDEN if family == "sd15" else SDXL_HIDDEN
    sd = {}
    for k, h in enumerate(hidden):
        i = 2 * k + 1
        for name in ("to_k_ip", "to_v_ip"):
            w = torch.randn(h, cross, generator=gen) / cross ** 0.5
            if only_layer is not None and i != only_layer:
                w = torch.zeros_like(w)
            sd[f"{i}.{name}.weight"] = w
    return sd


def adapter_sections(variant: str, seed: int = 0, dtype=torch.float16, only_layer=None):
    """The nested {"image_proj": ..., "ip_adapter": ...} dict of a random adapter (a fresh
    copy of the dicts, so callers may edit them; the tensors are shared)."""
    cached = _sections(variant, seed, dtype, only_layer)
    return {k: dict(v) for k, v in cached.items()}


def forget_sections() -> None:
    """Drop the cached tensors of every variant (the SDXL ones hold 0.7 GB)."""
    _sections.cache_clear()


@functools.lru_cache(maxsize=16)
def _sections(variant, seed, dtype, only_layer):
    gen = torch.Generator().manual_seed(seed)
    if variant in FACEID_VARIANTS:
        family, kind, tokens, rank = FACEID_VARIANTS[variant]
        cross = 768 if family == "sd15" else 2048
        proj = faceid_proj_state(kind, tokens, cross, gen)
        ipa = ip_layers_state(family, cross, gen, only_layer)
        if rank:
            ipa.update(faceid_lora_state(family, cross, rank, gen, scale=0.3))
    else:
        family, projection, tokens, _, feat, cross = VARIANTS[variant]
        proj = image_proj_state(projection, tokens, feat, cross, family, gen)
        ipa = ip_layers_state(family, cross, gen, only_layer)
    cast = lambda d: {k: v.to(dtype).contiguous() for k, v in d.items()}  # noqa: E731
    return {"image_proj": cast(proj), "ip_adapter": cast(ipa)}


def write_sections(sections, path: Path, fmt: str) -> Path:
    """Write as the official releases do: nested pickle (.bin) or flat safetensors."""
    path = Path(path)
    if fmt == "bin":
        torch.save(sections, path)
    else:
        import safetensors.torch

        flat = {f"{s}.{k}": v for s, d in sections.items() for k, v in d.items()}
        safetensors.torch.save_file(flat, str(path))
    return path


def write_adapter(directory: Path, variant: str, fmt: str = "safetensors", seed: int = 0,
                  dtype=torch.float16, name: str | None = None, only_layer=None) -> Path:
    """Write a random ``variant`` adapter into ``directory``; returns the path."""
    name = name or f"{variant}.{fmt}"
    return write_sections(adapter_sections(variant, seed, dtype, only_layer), Path(directory) / name, fmt)


class CodeRunningPickle:
    """Unpickling this creates the file ``marker``: the proof that a pickle's code ran.
    ``CodeRunningPickle(path)`` in a dict saved with torch.save makes a malicious model file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))
