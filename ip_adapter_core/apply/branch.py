"""What every architecture's patch holds: branches (one image prompt applied to a model, immutable, made
at node time) and the marker of our patches, so the run wrapper finds them whichever hook they sit in."""
from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass

import torch

from ..errors import IPAdapterMismatchError
from ..files.layers import AttnLayer
from ..networks.ops import compute_dtype
from ..prompt.embeds import ImagePrompt
from .attention import image_kv, rms_per_head
from .run_state import NEVER, RunState
from .transformer_options import RUN_KEY

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
        if self.prompt.config.ip_inside:  # InstantX's Flux adapter: each head of K' and V' RMS-normed
            k, v = rms_per_head(k, layer.dim_head), rms_per_head(v, layer.dim_head)
        return torch.cat([k, k.new_zeros(k[:1].shape)]), torch.cat([v, v.new_zeros(v[:1].shape)])



class BranchPatch:
    """Base of our patches (attn2 layers, Flux blocks): one per layer or block, holding every image prompt
    applied there as ``branches`` (a tuple of (Branch, λ)) and the foreign patch it runs over (``previous``).
    Immutable and shared by every clone of the model: it holds no run state and no tensors of its own."""

    def __init__(self, layer: AttnLayer, branches: tuple = (), previous=None):
        self.layer = layer
        self.branches = branches
        self.previous = previous

    def with_branch(self, branch: Branch, scale: float) -> "BranchPatch":
        return type(self)(self.layer, self.branches + ((branch, scale),), self.previous)

    # A foreign patch chained under ours is copied the way it expects (its own __deepcopy__ or not).
    def __deepcopy__(self, memo):
        if self.previous is None:
            return self
        return type(self)(self.layer, self.branches, copy.deepcopy(self.previous, memo))

    def to(self, device_or_dtype):
        """ComfyUI moves patches with the model; ours has nothing to move, a foreign one may."""
        if self.previous is None or not hasattr(self.previous, "to"):
            return self
        moved = self.previous.to(device_or_dtype)
        return self if moved is self.previous else type(self)(self.layer, self.branches, moved)

    def models(self):
        """The adapters' ModelPatchers and those of a foreign patch under ours, for the memory manager (it
        loads and offloads them with the model)."""
        seen = []
        for branch, _ in self.branches:
            if branch.adapter.patcher not in seen:
                seen.append(branch.adapter.patcher)
        if self.previous is not None and hasattr(self.previous, "models"):
            seen += [m for m in self.previous.models() if m not in seen]
        return seen


class BlockPatch(BranchPatch):
    """Base of the transformer-block patches (``patches_replace["dit"]``: Flux, SD3.5). A model wrapper puts what the
    patch needs of the call (the model being run, the latent's shape, ...) in transformer_options under CALL_KEY."""

    CALL_KEY = ""
    MODEL_NAME = ""  # for the warning when the wrapper is missing

    def _block(self, args, extra):
        """The host's block, or the foreign patch registered before ours."""
        return self.previous(args, extra) if self.previous is not None else extra["original_block"](args)

    def acting(self, opts):
        """(this run's RunState, the branches acting in this call as (branch, λ, plan), the call's info), or None
        when none acts or the wrapper is missing: then the block runs as it is."""
        run = opts.get(RUN_KEY)
        if run is None:
            run = RunState.ad_hoc(opts)
        active = [(b, s, p) for b, s in self.branches if s != 0 for p in (run.plan(b),) if p.mode != NEVER]
        if not active:
            return None
        call = opts.get(self.CALL_KEY)
        if call is None:
            _warn_unwrapped(self.MODEL_NAME)
            return None
        return run, active, call


@functools.lru_cache(maxsize=None)
def _warn_unwrapped(model_name: str) -> None:
    log.warning("IP-Adapter: %s model was called without the wrapper that IP-Adapter Apply installs (another "
                "extension removed the model's wrappers?); the image prompt is left out of this call.", model_name)


def product(*factors):
    """The product of the per-token / per-step factors that are not None (None if none is)."""
    out = None
    for f in factors:
        if f is not None:
            out = f if out is None else out * f
    return out


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


def branch_for(model, adapter, prompt: ImagePrompt, mask: torch.Tensor | None) -> Branch:
    """The branch of ``prompt`` on ``model``. The sampling range is resolved now only for model calls
    outside a sampler; a sampler run resolves it again with the model_sampling in force then (patches
    applied after this node shift it)."""
    sampling = model.get_model_object("model_sampling")
    fallback = (float(sampling.percent_to_sigma(prompt.start_at)), float(sampling.percent_to_sigma(prompt.end_at)))
    return Branch(adapter, prompt, mask, fallback)
