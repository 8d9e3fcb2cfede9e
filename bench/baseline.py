"""A straightforward attn2 replace patch, written for comparison only.

It does per call what the popular extension does (its CrossAttentionPatch.py; issue 5): project
the image tokens through to_k_ip/to_v_ip on every call (with ComfyUI's manual_cast
layers that also casts the fp16 weights on every call), build the K'/V' batch by
concatenating one chunk per ``cond_or_uncond`` entry, and resize the mask to the
call's token grid on every call. It holds the adapter's modules directly and has no
``__deepcopy__``, so every ``model.clone()`` copies them (memory.py measures that).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class StraightforwardPatch:
    def __init__(self, ip_layer, positive, negative, scale, mask=None, previous=None):
        self.previous = previous      # a patch already on this key (chaining wraps it)
        self.to_k_ip = ip_layer.to_k_ip
        self.to_v_ip = ip_layer.to_v_ip
        self.positive = positive      # [1, T, cross]
        self.negative = negative
        self.scale = scale
        self.mask = mask              # [M, H, W] image-sized, or None

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        heads = extra_options["n_heads"]
        kw = dict(attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options)
        out = self.previous(q, k, v, extra_options) if self.previous is not None \
            else optimized_attention(q, k, v, heads, **kw)
        cond_or_uncond = extra_options["cond_or_uncond"]
        per_chunk = q.shape[0] // len(cond_or_uncond)
        dtype = q.dtype
        with torch.no_grad():
            kp, vp = self.to_k_ip(self.positive.to(q)), self.to_v_ip(self.positive.to(q))
            kn, vn = self.to_k_ip(self.negative.to(q)), self.to_v_ip(self.negative.to(q))
        ip_k = torch.cat([(kn if c == 1 else kp).repeat(per_chunk, 1, 1) for c in cond_or_uncond])
        ip_v = torch.cat([(vn if c == 1 else vp).repeat(per_chunk, 1, 1) for c in cond_or_uncond])
        branch = optimized_attention(q, ip_k.to(dtype), ip_v.to(dtype), heads, **kw)
        if self.mask is not None:
            branch = branch * self._resized_mask(extra_options, q.shape[1]).to(q)
        return out + branch * self.scale

    def _resized_mask(self, extra_options, n_tokens):
        h, w = extra_options["original_shape"][-2:]
        while h * w > n_tokens:  # the call's grid: the latent halved (rounding up) until it fits
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        m = F.interpolate(self.mask.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False)
        return m.reshape(self.mask.shape[0], h * w, 1)


def straightforward_patches(handle, prompt, mask=None) -> dict:
    """One StraightforwardPatch per SD1.5 attn2 key, for the same adapter and prompt."""
    from ipadapter_ext.ip_adapter_core.files.layers import layers_for

    return {layer.key: StraightforwardPatch(handle.model.layer(layer.file_index), prompt.positive,
                                            prompt.negative, prompt.layer_scale(layer.key), mask)
            for layer in layers_for(handle.config.family)}


def apply_straightforward(model, handle, prompt, mask=None):
    """A clone of ``model`` patched with the straightforward patches, each wrapping the
    patch already on its key (so chained adapters all act)."""
    out = model.clone()
    existing = out.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for key, patch in straightforward_patches(handle, prompt, mask).items():
        patch.previous = existing.get(key)
        out.set_model_attn2_replace(patch, *key)
    return out
