"""The run around our patches: one RunState per sampling run (run_state.py), made by an OUTER_SAMPLE
wrapper that every patched model carries, handed to the patches in the run's transformer_options."""
from __future__ import annotations

from .branch import BranchPatch
from .run_state import RunState
from .transformer_options import RUN_KEY, WRAPPER_KEY


def patches_of(model_options, hooks=("attn2", "dit")) -> list:
    """Our patches in a model's options: attn2 layers (UNets) and dit blocks (Flux)."""
    replace = model_options.get("transformer_options", {}).get("patches_replace", {})
    return [p for hook in hooks for p in replace.get(hook, {}).values() if isinstance(p, BranchPatch)]


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
    """Install outer_sample_wrapper on a model (once; clones inherit it with the patcher's wrappers)."""
    import comfy.patcher_extension as pe  # noqa: PLC0415 - host only

    add_wrapper_once(model_patcher, pe.WrappersMP.OUTER_SAMPLE, outer_sample_wrapper)


def add_wrapper_once(model_patcher, wrapper_type: str, wrapper) -> None:
    """Add ``wrapper`` under our key unless the patcher already has one of that type. ModelPatcher keeps its
    wrappers in ``.wrappers`` (copied by clone, merged into transformer_options when sampling starts), not in
    model_options: looking there found none, and every chained Apply added one more."""
    if not model_patcher.wrappers.get(wrapper_type, {}).get(WRAPPER_KEY):
        model_patcher.add_wrapper_with_key(wrapper_type, WRAPPER_KEY, wrapper)
