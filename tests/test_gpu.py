"""Checks that mean something only on a CUDA GPU: sampling through the patch in float16 and bfloat16, and GPU
memory back where it was after a run and what ComfyUI's ``/free`` does. Run by ``bench/gpu_check.sh`` with
``IPADAPTER_TEST_GPU=1``; skipped elsewhere with one line saying why. (The sync check is
tests/test_host_runtime.py::test_no_cuda_sync_in_patched_layers_on_gpu.)"""
from __future__ import annotations

import gc

import pytest
import torch

from support.host_unet import comfy_on_cuda
from test_host_nodes import apply, handle, prompt

pytestmark = pytest.mark.host


needs_cuda = pytest.mark.skipif(not comfy_on_cuda(), reason="GPU CHECK SKIPPED: needs CUDA with ComfyUI on the GPU "
                                "(bash bench/gpu_check.sh on a CUDA machine sets IPADAPTER_TEST_GPU=1)")


def _sample(model, seed=1, steps=4):
    import comfy.sample

    g = torch.Generator().manual_seed(seed)
    pos, neg = ([[torch.randn(1, 77, 768, generator=g), {}]] for _ in range(2))
    latent = torch.zeros(1, 4, 32, 32)
    noise = torch.randn(latent.shape, generator=g)
    return comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", pos, neg, latent, seed=seed).float()


def _model(dtype):
    from support.host_unet import comfy_model

    return comfy_model("sd15", dtype=dtype)  # the same random weights (seed 0), rounded to dtype


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_sampling_follows_float32(dtype, adapter_file):  # pragma: no cover - GPU only
    """The same random SD1.5 UNet and adapter sampled in float32 and in ``dtype``: the picture is finite, close
    to float32's, and the image prompt's effect (λ = 1 minus λ = 0) points the same way, so the image branch
    is not lost to rounding (the cosine of the two effects; half precision keeps about 3 decimal digits)."""
    h = handle(adapter_file("ip-adapter_sd15"))
    out = {}
    for name, dt in (("fp32", torch.float32), ("half", dtype)):
        base = _model(dt)
        out[name, 0.0] = _sample(apply(base, h, prompt(h, weight=0.0)))
        out[name, 1.0] = _sample(apply(base, h, prompt(h, weight=1.0)))
        del base
    for lam in (0.0, 1.0):
        assert torch.isfinite(out["half", lam]).all()
        rel = float((out["half", lam] - out["fp32", lam]).norm() / out["fp32", lam].norm())
        assert rel < 0.05, f"{dtype} λ={lam}: relative difference to float32 {rel:.3g}"
    e32, eh = out["fp32", 1.0] - out["fp32", 0.0], out["half", 1.0] - out["half", 0.0]
    cos = float(torch.nn.functional.cosine_similarity(e32.flatten(), eh.flatten(), dim=0))
    assert cos > 0.95, f"{dtype}: the image prompt's effect differs from float32's (cosine {cos:.3f})"


@needs_cuda
def test_gpu_memory_back_after_run_and_free(adapter_file):  # pragma: no cover - GPU only
    """After a run and what ``POST /free`` makes the server do (unload every model, collect, empty the cache),
    nothing of ours stays on the GPU: allocated memory is back to what it was before the model was loaded."""
    import comfy.model_management as mm

    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()
    before = torch.cuda.memory_allocated()
    h = handle(adapter_file("ip-adapter_sd15"))
    m = apply(_model(torch.float16), h, prompt(h))
    _sample(m)
    during = torch.cuda.memory_allocated()
    assert during > before, "the run did not use the GPU"
    del m
    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()
    after = torch.cuda.memory_allocated()
    assert after - before < 2**20, f"{(after - before) / 2**20:.1f} MiB still allocated after /free's steps " \
        f"(before {before / 2**20:.1f} MiB, during {during / 2**20:.1f} MiB)"
