"""The attn2 replace patch that runs inside ComfyUI's SD1.5 and SDXL UNets (one patch module per
architecture: a family with other attention blocks gets its own module beside this one).

One ``Attn2Patch`` per cross-attention key holds every image prompt applied to that
key (chained IPAApply nodes add branches, never wrap each other), so the text
attention is computed once and each branch adds ``λ·mask·Attn(Q, K', V')``.

Patches and branches are immutable node-time objects shared by every clone of the
model (``__deepcopy__`` returns ``self``): nothing in them depends on a sampling run.
What does (the sigma range on the run's schedule, K'/V' on the run's device, row
indices and masks per call layout) lives in a ``run_state.RunState`` that exists for
one sampling run only. Adapter weights live in a ModelPatcher (``models()``) that
ComfyUI's memory manager loads and offloads with the UNet.
"""
from __future__ import annotations

import logging

from ..prompt.blocks import V_ONLY
from .attention import add_few_key_branch, add_image_branch, attention_functions, scale_kv, use_few_key_path
from .branch import Branch, BranchPatch, product
from .run_state import NEVER, RunState
from .run_wrapper import register
from .transformer_options import RECORD_KEY, RUN_KEY
from .unet_lora import apply_lora

log = logging.getLogger("ipadapter")


class Attn2Patch(BranchPatch):
    """Replacement for one attn2 call: text attention (or a previous foreign patch) plus branches."""

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        text_attention, image_attention = attention_functions()
        kw = dict(attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options)
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            out = text_attention(q, k, v, heads, **kw)
        run = extra_options.get(RUN_KEY)
        if run is None:
            run = RunState.ad_hoc(extra_options)
        # IP-Adapter Attention Map's recorder, only in the runs it makes (attention_map.py)
        record = extra_options.get(RECORD_KEY)
        text = out if record is not None and record.wants(extra_options) else None
        roles = None
        for branch, scale in self.branches:
            if scale == 0:
                continue
            plan = run.plan(branch)
            if plan.mode == NEVER:
                continue
            if roles is None:
                roles = run.roles(extra_options)
            new = self._add_branch(out, q, extra_options, run, branch, plan, scale, roles, image_attention, kw)
            if text is not None:
                record.add(self.layer.key, branch, new - out, text, extra_options, roles)
            out = new
        return out

    def _add_branch(self, out, q, extra_options, run, branch, plan, scale, roles, image_attention, kw):
        """One image prompt's term. Everything per step is a device tensor (the range gate, λ of a
        schedule); the route picks each chunk's token set; the scaling mode says where λ goes."""
        heads, prompt = extra_options["n_heads"], branch.prompt
        route = prompt.layer_route(self.layer.key)
        sets = tuple(route[r] for r in roles)
        mask = run.mask(branch, extra_options, q.shape[1], q.shape[0], q.dtype, q.device)
        gate, lam = run.step_factors(branch, plan, extra_options.get("sigmas"), q.dtype)
        if prompt.scaling == V_ONLY:
            factor = product(mask, gate, lam)  # λ on the output, as the paper
            lam_in = None
        else:
            factor, lam_in = product(mask, gate), scale if lam is None else lam * scale
            scale = 1.0
        if prompt.animated():
            return self._add_frames(out, q, extra_options, run, branch, scale, sets, factor, lam_in, image_attention, kw)
        few_keys = use_few_key_path(q, prompt.positive.shape[1])
        if few_keys:
            kt, vh, bias = run.head_kv(branch, self.layer, q.device, q.dtype, heads, prompt.scaling, lam_in)
            return add_few_key_branch(out, q, kt, vh, bias, heads, scale, sets, factor)
        ip_k, ip_v = run.kv(branch, self.layer, q.device, q.dtype, prompt.scaling, lam_in)
        index = run.row_index(sets, q.shape[0], q.device)
        return add_image_branch(out, q, ip_k, ip_v, heads, scale, index, factor, image_attention, **kw)

    def _add_frames(self, out, q, extra_options, run, branch, scale, sets, factor, lam_in, image_attention, kw):
        """A prompt with one token set per frame: each row attends to its frame's image (two
        images, each with its share, on the frames of a cross-fade) with its frame's λ multiplier:
        on the output (V only), or on K'/V' of that row (λ inside the attention)."""
        heads, scaling = extra_options["n_heads"], branch.prompt.scaling
        ip_k, ip_v = run.kv(branch, self.layer, q.device, q.dtype, scaling, lam_in)
        for index, w in run.frame_tracks(branch, sets, extra_options, q.shape[0], q.dtype, q.device):
            if scaling == V_ONLY or w is None:
                out = add_image_branch(out, q, ip_k, ip_v, heads, scale, index, product(factor, w),
                                       image_attention, **kw)
            else:
                k, v = scale_kv(ip_k.index_select(0, index), ip_v.index_select(0, index), scaling, w, penalty=False)
                out = add_image_branch(out, q, k, v, heads, scale, None, factor, image_attention, **kw)
        return out


def _existing_patch(attn2: dict, key):
    """The patch ComfyUI would call for ``key``: its 3-tuple entry, else the 2-tuple
    ``(block, number)`` entry it falls back to."""
    hit = attn2.get(key)
    return hit if hit is not None else attn2.get(key[:2])


def apply_unet_prompt(model, branch: Branch):
    """A clone of a UNet ``model`` with ``branch`` added to its cross-attention layers (checked by
    image_prompt.apply_image_prompt)."""
    prompt = branch.prompt
    out = model.clone()
    register(out)
    apply_lora(out, branch.adapter, prompt.lora_strength)  # FaceID: the file's UNet LoRA, once per model
    existing = out.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for layer in branch.adapter.config.layers:
        scale = prompt.layer_scale(layer.key)
        if scale == 0:
            continue  # a layer the prompt does not use costs nothing
        prev = _existing_patch(existing, layer.key)
        patch = prev.with_branch(branch, scale) if isinstance(prev, Attn2Patch) \
            else Attn2Patch(layer, ((branch, scale),), previous=prev)
        out.set_model_attn2_replace(patch, *layer.key)
    return out
