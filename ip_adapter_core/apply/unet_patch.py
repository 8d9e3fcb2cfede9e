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

import copy
import logging
from dataclasses import dataclass

import torch

from ..errors import IPAdapterMismatchError
from ..files.config import FAMILY_NAMES, check_model_layers, model_family
from ..files.layers import AttnLayer
from ..networks.ops import compute_dtype
from ..prompt.blocks import V_ONLY
from ..prompt.embeds import ImagePrompt
from .attention import add_few_key_branch, add_image_branch, attention_functions, image_kv, scale_kv, use_few_key_path
from .run_state import NEVER, RunState
from .transformer_options import RECORD_KEY, RUN_KEY, WRAPPER_KEY
from .unet_lora import apply_lora

log = logging.getLogger("ipadapter")


@dataclass(eq=False, frozen=True)
class Branch:
    """One image prompt applied to a model: the adapter, tokens (with their weighting and
    sampling range as fractions), an optional region mask. Hashable by identity: run states
    key their caches by it."""

    adapter: object                 # loader.AdapterHandle (anything with .model: IPAdapterModel)
    prompt: ImagePrompt
    mask: torch.Tensor | None       # [M, H, W] in 0..1 on the host, or None
    # (sigma_start, sigma_end) as resolved when the node ran: used only when the UNet is
    # called outside a ComfyUI sampler; a sampler run resolves the range on its own schedule.
    fallback_range: tuple[float, float] = (float("inf"), 0.0)

    def image_kv(self, layer: AttnLayer, device, dtype):
        """K'/V' [3, T, hidden] of the token sets [image; negative; zeros] for one layer (a route
        picks one per row; the zero set gives K' = V' = 0: rows that receive nothing)."""
        ipl = self.adapter.model.layer(layer.file_index)
        tokens = torch.cat([self.prompt.positive, self.prompt.negative])  # sets IMAGE_SET, NEGATIVE_SET
        w = ipl.to_k_ip.weight
        # the adapter's compute dtype in, the call's dtype out: the same rounding as the reference,
        # which converts the weights before use
        compute = compute_dtype(ipl.to_k_ip)
        k, v = image_kv(ipl.to_k_ip, ipl.to_v_ip, tokens.to(device=w.device, dtype=compute), dtype, device)
        return torch.cat([k, k.new_zeros(k[:1].shape)]), torch.cat([v, v.new_zeros(v[:1].shape)])


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
            factor = _product(mask, gate, lam)  # λ on the output, as the paper
            lam_in = None
        else:
            factor, lam_in = _product(mask, gate), scale if lam is None else lam * scale
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
                out = add_image_branch(out, q, ip_k, ip_v, heads, scale, index, _product(factor, w),
                                       image_attention, **kw)
            else:
                k, v = scale_kv(ip_k.index_select(0, index), ip_v.index_select(0, index), scaling, w, penalty=False)
                out = add_image_branch(out, q, k, v, heads, scale, None, factor, image_attention, **kw)
        return out

    # Shared by clones: the patch holds no run state and no tensors of its own. A foreign
    # patch chained under ours is copied the way it expects (its own __deepcopy__ or not).
    def __deepcopy__(self, memo):
        if self.previous is None:
            return self
        return Attn2Patch(self.layer, self.branches, copy.deepcopy(self.previous, memo))

    def to(self, device_or_dtype):
        """ComfyUI moves patches with the model; ours has nothing to move, a foreign one may."""
        if self.previous is None or not hasattr(self.previous, "to"):
            return self
        moved = self.previous.to(device_or_dtype)
        return self if moved is self.previous else Attn2Patch(self.layer, self.branches, moved)

    def models(self):
        """The adapters' ModelPatchers and those of a foreign patch under ours, for the memory manager."""
        seen = []
        for branch, _ in self.branches:
            if branch.adapter.patcher not in seen:
                seen.append(branch.adapter.patcher)
        if self.previous is not None and hasattr(self.previous, "models"):
            seen += [m for m in self.previous.models() if m not in seen]
        return seen


def _product(*factors):
    """The product of the per-token / per-step factors that are not None (None if none is)."""
    out = None
    for f in factors:
        if f is not None:
            out = f if out is None else out * f
    return out


def _existing_patch(attn2: dict, key):
    """The patch ComfyUI would call for ``key``: its 3-tuple entry, else the 2-tuple
    ``(block, number)`` entry it falls back to."""
    hit = attn2.get(key)
    return hit if hit is not None else attn2.get(key[:2])


def check_prompt_for(adapter, prompt: ImagePrompt) -> None:
    """The embeds must come from an adapter of exactly this kind (encoder included)."""
    cfg = adapter.config
    if prompt.config != cfg:
        raise IPAdapterMismatchError(
            f"embeds: made by a different kind of adapter ({prompt.config.name}) than the one being "
            f"applied ({cfg.name}). Project the images with the same IP-Adapter you apply.")
    if prompt.adapter_path and prompt.adapter_path != adapter.path:
        log.warning("embeds were projected with '%s' but '%s' is applied; both are %s",
                    prompt.adapter_path, adapter.path, cfg.name)


def apply_image_prompt(model, adapter, prompt: ImagePrompt, mask: torch.Tensor | None = None):
    """Return a clone of ``model`` with ``prompt`` added to its cross-attention layers."""
    cfg = adapter.config
    family = model_family(model)
    if family != cfg.family:
        have, need = FAMILY_NAMES[family], FAMILY_NAMES[cfg.family]
        raise IPAdapterMismatchError(
            f"ipadapter: '{adapter.name}' is an {need} IP-Adapter but the model is {have}. "
            f"Use an {have} IP-Adapter file, or an {need} checkpoint.")
    check_model_layers(model, cfg)
    check_prompt_for(adapter, prompt)

    # Resolved now only for UNet calls outside a sampler; a sampler run resolves it again
    # with the model_sampling in force then (patches applied after this node shift it).
    sampling = model.get_model_object("model_sampling")
    fallback = (float(sampling.percent_to_sigma(prompt.start_at)), float(sampling.percent_to_sigma(prompt.end_at)))
    branch = Branch(adapter, prompt, mask, fallback)
    out = model.clone()
    register(out)
    apply_lora(out, adapter, prompt.lora_strength)  # FaceID: the file's UNet LoRA, once per model
    existing = out.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for layer in cfg.layers:
        scale = prompt.layer_scale(layer.key)
        if scale == 0:
            continue  # a layer the prompt does not use costs nothing
        prev = _existing_patch(existing, layer.key)
        patch = prev.with_branch(branch, scale) if isinstance(prev, Attn2Patch) \
            else Attn2Patch(layer, ((branch, scale),), previous=prev)
        out.set_model_attn2_replace(patch, *layer.key)
    return out


# ---------------------------------------------------------------- the run around the patches

def patches_of(model_options) -> list:
    """The attn2 patches of ours in a model's options."""
    attn2 = model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    return [p for p in attn2.values() if isinstance(p, Attn2Patch)]


def outer_sample_wrapper(executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
    """OUTER_SAMPLE wrapper: one RunState per sampling run, validated before the first step,
    handed to the patches through the run's transformer_options, emptied at the end."""
    guider = executor.class_obj
    options = guider.model_options  # the guider's copy for this run (CFGGuider.sample clones it)
    # conds are read lazily: inner_sample replaces guider.conds with processed copies (areas in
    # latent units) after this point; their uuids stay.
    run = RunState.for_sampling(guider.model_patcher, sigmas, noise.shape, lambda: getattr(guider, "conds", None))
    branches = {b for p in patches_of(options) for b, _ in p.branches}
    run.prepare(branches)
    options.setdefault("transformer_options", {})[RUN_KEY] = run
    try:
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
    finally:
        options["transformer_options"].pop(RUN_KEY, None)
        run.free()


def register(model_patcher) -> None:
    """Install outer_sample_wrapper on a model (once; clones inherit it with their model_options)."""
    import comfy.patcher_extension as pe  # noqa: PLC0415 - host only

    if not pe.get_wrappers_with_key(pe.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, model_patcher.model_options,
                                    is_model_options=True):
        model_patcher.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, outer_sample_wrapper)
