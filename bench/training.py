"""Training benchmark (issue 10): seconds per step and peak memory of one training step, three ways, on
the same tiny config (SD1.5 structure at 32 base channels, linear adapter, batch 2, 32×32 latents,
float32, CPU):

- reference: the reference's step as tests/reference_train.py transcribes it (IPAttnProcessor2_0 maths,
  DDPMScheduler.add_noise) on a diffusers UNet;
- script: what scripts/train_ipadapter.py runs per step (the core's processors on a diffusers UNet);
- node: what IP-Adapter Train runs per step (ComfyUI's UNet on the same weights, the training patch).

Each runs in its own process, so its peak resident memory is its own: *peak RSS* is the process's
maximum, *step growth* what the steps added over the set-up. Run: ``bash bench/run.sh --training``.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WARMUP, STEPS, BATCH, LATENT = 2, 12, 2, 32


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _setup():
    sys.path[:0] = [str(REPO / "tests")]
    from support.package_alias import install

    install()
    from ipadapter_ext.ip_adapter_core import host

    host.add_to_sys_path(cpu=True)


def _data(gen, torch):
    x0 = torch.randn(BATCH, 4, LATENT, LATENT, generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, 1000, (BATCH,), generator=gen)
    return x0, eps, t, torch.randn(BATCH, 77, 768, generator=gen), torch.randn(BATCH, 1024, generator=gen)


def run_variant(name: str) -> dict:
    """One variant in this process: set up, then time STEPS optimizer steps after WARMUP."""
    _setup()
    import torch

    torch.set_num_threads(1)
    from support.unet_pairs import tiny_sd15_pair

    from ipadapter_ext.ip_adapter_core.training import noise
    from ipadapter_ext.ip_adapter_core.training.adapter_init import diffusers_text_kv, new_adapter, new_config

    unet, patcher = tiny_sd15_pair(seed=0)
    cfg = new_config("sd15", "linear", model_channels=32)
    adapter = new_adapter(cfg, diffusers_text_kv(unet), seed=1)
    acp = noise.alphas_cumprod()
    if name == "reference":
        from support.reference_train import reference_loss, reference_processors, reference_projection

        procs = reference_processors(unet, adapter)
        proj = reference_projection(cfg, adapter)
        params = [p for m in (proj, *procs.values()) for p in m.parameters()]
        step_loss = lambda x0, eps, t, text, f: reference_loss(unet, proj, x0, eps, t, text, f)  # noqa: E731
    elif name == "script":
        from ipadapter_ext.ip_adapter_core.training.diffusers_unet import install_processors, predict_noise

        install_processors(unet, adapter)
        params = list(adapter.parameters())

        def step_loss(x0, eps, t, text, f):
            return noise.eps_loss(predict_noise(unet, adapter, noise.add_noise(x0, eps, t, acp), t, text, f), eps)
    else:
        from ipadapter_ext.ip_adapter_core.training.comfy_train import predict_eps

        params = list(adapter.parameters())

        def step_loss(x0, eps, t, text, f):
            return noise.eps_loss(predict_eps(patcher, adapter, noise.add_noise(x0, eps, t, acp), t, text, f), eps)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    setup_rss = _rss_mb()
    times = []
    for i in range(WARMUP + STEPS):
        batch = _data(gen, torch)
        t0 = time.perf_counter()
        loss = step_loss(*batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    return {"variant": name, "s_per_step": statistics.median(times), "min_s": min(times),
            "peak_rss_mb": _rss_mb(), "step_growth_mb": _rss_mb() - setup_rss, "loss": float(loss)}


def main() -> int:
    rows = []
    for name in ("reference", "script", "node"):
        out = subprocess.run([sys.executable, __file__, "--variant", name], capture_output=True, text=True,
                             env=os.environ)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            return out.returncode
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ref = rows[0]["s_per_step"]
    lines = ["# Training step benchmark", "",
             f"Tiny SD1.5 structure (32 base channels), linear adapter, batch {BATCH}, {LATENT}×{LATENT} latents, "
             f"float32, CPU, 1 thread; median of {STEPS} steps after {WARMUP} (forward, backward, AdamW). "
             f"Load average at end: {os.getloadavg()[0]:.1f}.", "",
             "| step | s per step | × reference | peak RSS MB | step growth MB |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['s_per_step']:.4f} | {r['s_per_step'] / ref:.2f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['step_growth_mb']:.0f} |")
    md = "\n".join(lines) + "\n"
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    import datetime

    path = out_dir / f"{datetime.date.today().isoformat()}-cpu-training.md"
    path.write_text(md)
    print(md)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--variant":
        print(json.dumps(run_variant(sys.argv[2])))
    else:
        sys.exit(main())
