"""The attn2 replace patch that runs inside ComfyUI's UNet (host only).

One ``Attn2Patch`` per cross-attention key holds every image prompt applied to that
key (chained IPAApply nodes add branches, never wrap each other), so the text
attention is computed once and each branch adds ``λ·mask·Attn(Q, K', V')``.

Patches are immutable and share their branches: ``ModelPatcher.clone()`` deep-copies
``model_options``, and ``__deepcopy__`` returning ``self`` keeps that from copying
tensors. Adapter weights live in a ModelPatcher (``models()``) that ComfyUI's memory
manager loads and offloads with the UNet.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .attention import add_image_branch, batch_index, image_kv
from .embeds import ImagePrompt
from .errors import IPAdapterMismatchError
from .layers import AttnLayer, layers_for
from .masks import mask_for_call

log = logging.getLogger("ipadapter")

FAMILY_BY_CONTEXT_DIM = {768: "sd15", 2048: "sdxl"}
WHOLE_SCHEDULE = 1e8  # percent_to_sigma(0) is 999999999.9: the range starts at the first step


def _attention():
    """(text attention, image attention). Text goes through the host's optimized_attention,
    exactly as the unpatched layer, so λ = 0 is bit-identical. The image keys are few
    (≤ 257 per image), so SDPA never needs chunking: where the host fell back to a chunked
    CPU kernel (sub-quadratic, split, basic), which costs as much for 4 keys as for 77,
    the image branch uses attention_pytorch instead (bench/: with 257 tokens the added time
    per step fell from 168 to 87 ms). attention_pytorch is wrap_attn-decorated, so
    optimized_attention_override still applies; GPU backends (flash, xformers, sage) are kept."""
    import comfy.ldm.modules.attention as A

    slow = (A.attention_sub_quad, A.attention_split, A.attention_basic)
    text = A.optimized_attention
    return text, (A.attention_pytorch if text in slow else text)


@dataclass(eq=False)
class Branch:
    """One image prompt applied to a model: tokens, weights, mask and sampling range.

    Its K'/V' are computed once per layer, device and dtype and reused on every step.
    """

    adapter: object                 # loader.AdapterHandle
    prompt: ImagePrompt
    mask: torch.Tensor | None       # [M, H, W] in 0..1, or None
    sigma_start: float
    sigma_end: float
    _kv: dict = field(default_factory=dict, repr=False)
    _masks: dict = field(default_factory=dict, repr=False)

    def active(self, sigmas: torch.Tensor | None) -> bool:
        # The whole schedule needs no test; on a GPU float() would sync once per layer.
        if sigmas is None or (self.sigma_start >= WHOLE_SCHEDULE and self.sigma_end <= 0.0):
            return True
        sigma = float(sigmas.max())
        return self.sigma_end <= sigma <= self.sigma_start

    def kv(self, layer: AttnLayer, device, dtype):
        key = (layer.file_index, device, dtype)
        hit = self._kv.get(key)
        if hit is None:
            ipl = self.adapter.model.layer(layer.file_index)
            tokens = torch.cat([self.prompt.positive, self.prompt.negative])  # set 0 positive, 1 negative
            w = ipl.to_k_ip.weight
            # float32 in (manual_cast lifts the fp16 weights to it), the call's dtype out: the
            # same rounding as the reference, which converts the weights before use.
            hit = image_kv(ipl.to_k_ip, ipl.to_v_ip, tokens.to(device=w.device, dtype=torch.float32), dtype, device)
            self._kv[key] = hit
        return hit

    def call_mask(self, extra_options, n_tokens, chunks, dtype, device):
        if self.mask is None:
            return None
        latent_hw = tuple(extra_options["original_shape"][-2:])
        key = (latent_hw, n_tokens, chunks, dtype, device)
        hit = self._masks.get(key)
        if hit is None:
            hit = self._masks[key] = mask_for_call(self.mask, latent_hw, n_tokens, chunks, dtype, device)
        return hit


class Attn2Patch:
    """Replacement for one attn2 call: text attention (or a previous foreign patch) plus branches."""

    def __init__(self, layer: AttnLayer, branches: tuple[tuple[Branch, float], ...], previous=None):
        self.layer = layer
        self.branches = branches
        self.previous = previous

    def with_branch(self, branch: Branch, scale: float) -> "Attn2Patch":
        return Attn2Patch(self.layer, self.branches + ((branch, scale),), self.previous)

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        text_attention, image_attention = _attention()
        kw = dict(attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options)
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            out = text_attention(q, k, v, heads, **kw)
        sigmas = extra_options.get("sigmas")
        index = None
        for branch, scale in self.branches:
            if scale == 0 or not branch.active(sigmas):
                continue
            cond_or_uncond = extra_options.get("cond_or_uncond") or [0]
            if index is None:
                index = batch_index(cond_or_uncond, q.shape[0], q.device)
            ip_k, ip_v = branch.kv(self.layer, q.device, q.dtype)
            mask = branch.call_mask(extra_options, q.shape[1], len(cond_or_uncond), q.dtype, q.device)
            out = add_image_branch(out, q, ip_k, ip_v, heads, scale, index, mask, image_attention, **kw)
        return out

    # Immutable and shared: clones of the model must not copy adapter tensors.
    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        return self

    def models(self):
        seen = []
        for branch, _ in self.branches:
            if branch.adapter.patcher not in seen:
                seen.append(branch.adapter.patcher)
        return seen


def model_family(model) -> str:
    """'sd15' or 'sdxl' from the UNet's cross-attention width; refuses other models."""
    unet_config = getattr(getattr(model.model, "model_config", None), "unet_config", {}) or {}
    ctx = unet_config.get("context_dim")
    fam = FAMILY_BY_CONTEXT_DIM.get(ctx)
    if fam is None or "transformer_depth" not in unet_config and "transformer_depth_output" not in unet_config:
        name = type(model.model).__name__
        raise IPAdapterMismatchError(
            f"model: IP-Adapter works on Stable Diffusion 1.5 and SDXL UNets; this model ({name}, "
            f"cross-attention width {ctx}) is neither. Load an SD1.5 or SDXL checkpoint.")
    return fam


def apply_image_prompt(model, adapter, prompt: ImagePrompt, mask: torch.Tensor | None = None):
    """Return a clone of ``model`` with ``prompt`` added to its cross-attention layers."""
    cfg = adapter.config
    family = model_family(model)
    names = {"sd15": "SD1.5", "sdxl": "SDXL"}
    if family != cfg.family:
        raise IPAdapterMismatchError(
            f"ipadapter: '{adapter.name}' is an {names[cfg.family]} IP-Adapter but the model is "
            f"{names[family]}. Use an {names[family]} IP-Adapter file, or an {names[cfg.family]} checkpoint.")
    if (prompt.config.cross_dim, prompt.config.num_tokens, prompt.config.projection) != \
            (cfg.cross_dim, cfg.num_tokens, cfg.projection):
        raise IPAdapterMismatchError(
            f"embeds: made by a different kind of adapter ({prompt.config.name}) than the one being "
            f"applied ({cfg.name}). Project the images with the same IP-Adapter you apply.")
    if prompt.adapter_path and prompt.adapter_path != adapter.path:
        log.warning("embeds were projected with '%s' but '%s' is applied; both are %s",
                    prompt.adapter_path, adapter.path, cfg.name)

    sampling = model.get_model_object("model_sampling")
    branch = Branch(adapter, prompt, mask, float(sampling.percent_to_sigma(prompt.start_at)),
                    float(sampling.percent_to_sigma(prompt.end_at)))
    out = model.clone()
    existing = out.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for layer in layers_for(family):
        scale = prompt.layer_scale(layer.key)
        if scale == 0:
            continue  # a layer the prompt does not use costs nothing
        prev = existing.get(layer.key)
        patch = prev.with_branch(branch, scale) if isinstance(prev, Attn2Patch) \
            else Attn2Patch(layer, ((branch, scale),), previous=prev)
        out.set_model_attn2_replace(patch, *layer.key)
    return out
