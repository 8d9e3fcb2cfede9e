"""Flux benchmark (issue 22): what an XLabs image prompt adds to a Flux model evaluation, in time, FLOPs and memory.

The model is ComfyUI's own Flux class (tests/support/flux_models.py) with Flux.1's head width (128) and structure,
smaller: WIDTH wide (HEADS heads), DOUBLE double and SINGLE single blocks, random float32 weights; the latent is
LATENT×LATENT (PICTURE tokens of 2×2 patches) with TEXT text tokens, batch 1 (Flux [dev] runs at cfg 1). The
adapters are XLabs v2 (16 tokens) and v1 (4 tokens) laid out for that width (K'/V' on every double block).

- Time: whole model calls with ComfyUI's transformer_options (as its sampler passes them; one RunState for the
  run, so K'/V' are made once), plain and with one and two chained prompts, in rotating order (bench/common.py
  interleave); ratios to the plain call, per round.
- FLOPs: counted by torch.utils.flop_counter on one call of each (its matmuls: on the CPU it counts no SDPA),
  and the added work beside the
  closed form per double block: the q rows of qkv (2·L·W²), the block's modulation again (2·W·6W) and the image
  attention (4·L·T·W), L image tokens, T adapter tokens, W width. K'/V' are made once per run, not per call.
- Memory: the process's peak RSS (sampled every 2 ms) during one call of each, above its RSS before the call, and
  the adapter weights the prompts hold.

Run: ``bash bench/run.sh --flux`` (~2 min on CPU; ``--quick``: fewer rounds).
Results: ``bench/results/<date>-<device>-flux.md``.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # run as a script: import as ipadapter_ext.bench, like run.py
    sys.path.insert(0, str(HERE.parent / "tests"))
    from support.package_alias import install

    install()
    __package__ = "ipadapter_ext.bench"

import torch  # noqa: E402

from .common import collect, interleave, median, rss_bytes, setup_imports, spread  # noqa: E402
from .memory import PeakRSS  # noqa: E402

log = logging.getLogger("bench.flux")
HEADS, DOUBLE, SINGLE = 12, 2, 4           # width 1536
LATENT, TEXT = 64, 256                     # 1024 image tokens (512×512 pixels), T5's usual 256
LAMBDA = 0.9


def build(device):
    import comfy.clip_vision

    from support.flux_models import comfy_flux, write_xlabs

    from ipadapter_ext.ip_adapter_core.apply.image_prompt import apply_image_prompt
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.ip_adapter_core.prompt.vision import BLACK_IMAGE_ATTR, image_prompt

    model = comfy_flux(DOUBLE, SINGLE, HEADS, seed=0)
    folder = Path(tempfile.mkdtemp(prefix="bench-flux-"))
    handles = {v: load_adapter_handle(write_xlabs(folder / f"{v}.safetensors", v, DOUBLE, HEADS * 128, i))
               for i, v in enumerate(("v2", "v1"))}
    g = torch.Generator().manual_seed(0)

    def prompt(h):
        feats = comfy.clip_vision.Output()
        feats["image_embeds"] = torch.randn(1, 768, generator=g)
        feats[BLACK_IMAGE_ATTR] = torch.randn(1, 768, generator=g)
        return image_prompt(h, feats).weighted(LAMBDA)

    one = apply_image_prompt(model, handles["v2"], prompt(handles["v2"]))
    two = apply_image_prompt(one, handles["v1"], prompt(handles["v1"]))
    inputs = dict(x=torch.randn(1, 16, LATENT, LATENT, generator=g).to(device),
                  context=torch.randn(1, TEXT, 4096, generator=g).to(device),
                  y=torch.randn(1, 768, generator=g).to(device))
    return model, {"XLabs v2 (16 tokens)": one, "XLabs v2 + v1 chained (16 + 4 tokens)": two}, handles, inputs


def call(model, inputs, run):
    """One model evaluation as ComfyUI's sampler makes it (transformer_options with the run's state)."""
    from ipadapter_ext.ip_adapter_core.apply.transformer_options import RUN_KEY

    import comfy.patcher_extension as pe

    opts = dict(model.model_options.get("transformer_options", {}))
    # the patcher's wrappers, as comfy.sampler_helpers.prepare_model_patcher merges them when sampling starts
    opts["wrappers"] = pe.merge_nested_dicts(dict(opts.get("wrappers", {})), model.wrappers)
    sigma = torch.tensor([0.7], device=inputs["x"].device)
    opts.update(cond_or_uncond=[0], sigmas=sigma, **{RUN_KEY: run})
    with torch.no_grad():
        return model.model.diffusion_model(inputs["x"], sigma, inputs["context"], y=inputs["y"],
                                           guidance=torch.tensor([3.5], device=sigma.device), transformer_options=opts)


def measure(rounds: int, device: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from ipadapter_ext.ip_adapter_core.apply.run_state import RunState

    import comfy.model_management as mm

    model, patched, handles, inp = build(device)
    models = {"plain": model, **patched}
    mm.load_models_gpu(list(patched.values()))  # the model and the adapters, where ComfyUI places them
    runs = {name: RunState.for_sampling(m, torch.tensor([0.7, 0.0]), inp["x"].shape) for name, m in models.items()}
    for name, m in models.items():   # warm-up; K'/V' into the run states
        call(m, inp, runs[name])
    fns = {name: (lambda m=m, r=runs[name]: call(m, inp, r)) for name, m in models.items()}
    res = interleave(fns, "plain", rounds, device)
    plain = res.times["plain"]
    out = {"plain_median_s": median(plain), "plain_spread": spread(plain), "ratios": {}, "flops": {}, "peak": {}}
    for name in patched:
        ratios = [t / p for t, p in zip(res.times[name], plain)]
        out["ratios"][name] = {"median": median(ratios), "min": min(ratios), "max": max(ratios)}
    for name, m in models.items():
        counter = FlopCounterMode(display=False)
        with counter:
            call(m, inp, runs[name])
        out["flops"][name] = counter.get_total_flops()
        collect()
        before = rss_bytes()
        with PeakRSS() as p:
            call(m, inp, runs[name])
        out["peak"][name] = p.peak - before
    out["adapter_bytes"] = {v: sum(t.numel() * t.element_size() for t in h.model.state_dict().values())
                            for v, h in handles.items()}
    out["rounds"] = rounds
    return out


def closed_form(tokens: int) -> float:
    """Added FLOPs per call by the formula in the module docstring, over the DOUBLE blocks."""
    width, picture = HEADS * 128, (LATENT // 2) ** 2
    return DOUBLE * (2 * picture * width * width + 2 * width * 6 * width + 4 * picture * tokens * width)


def report(st: dict, device: str) -> str:
    plain_flops = st["flops"]["plain"]
    lines = ["# Flux benchmark (XLabs)", "",
             f"{device.upper()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; load average at end "
             f"{os.getloadavg()[0]:.1f}. bench/flux.py says what each row is.", "",
             f"ComfyUI's Flux class, width {HEADS * 128} ({HEADS} heads of 128), {DOUBLE} double + {SINGLE} single "
             f"blocks; {(LATENT // 2) ** 2} image tokens ({LATENT * 8}×{LATENT * 8} pixels), {TEXT} text tokens, "
             f"batch 1; λ {LAMBDA}; {st['rounds']} rounds.", "",
             f"Plain call: {1e3 * st['plain_median_s']:.0f} ms (±{100 * st['plain_spread']:.1f} %), "
             f"{plain_flops / 1e9:.1f} GFLOP.", "",
             "| model | call ÷ plain call (median) | min | max | added GFLOP (counted, matmuls) | added GFLOP (formula) | "
             "added peak memory (MB) |", "|---|---|---|---|---|---|---|"]
    tokens = {"XLabs v2 (16 tokens)": 16, "XLabs v2 + v1 chained (16 + 4 tokens)": 20}
    for name, r in st["ratios"].items():
        added = (st["flops"][name] - plain_flops) / 1e9
        formula = closed_form(tokens[name]) / 1e9   # attention is linear in T: chained = one block's q, T summed
        lines.append(f"| {name} | {r['median']:.4f} | {r['min']:.4f} | {r['max']:.4f} | {added:.2f} | "
                     f"{formula:.2f} | {(st['peak'][name] - st['peak']['plain']) / 2**20:+.0f} |")
    sizes = ", ".join(f"{v} {b / 2**20:.0f} MB" for v, b in st["adapter_bytes"].items())
    lines += ["", f"Peak memory is the process's RSS above its level before the call, less the plain call's "
              f"({st['peak']['plain'] / 2**20:.0f} MB). The adapters' weights ({sizes}, float32 here) are loaded "
              "once, with the model (ComfyUI's memory manager).",
              "Two chained prompts compute the query once per block (one patch holds both); the formula counts "
              "the q rows and the modulation once and the attention per prompt. torch's FLOP counter does not count "
              "scaled_dot_product_attention on the CPU (0 for it, in the plain call too), so the counted column is "
              "the matmuls: the q rows and the modulation; the formula adds the image attention."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    setup_imports(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    st = measure(3 if args.quick else 10, args.device)
    md = report(st, args.device)
    quick = "-quick" if args.quick else ""
    out = HERE / "results" / f"{datetime.date.today().isoformat()}-{args.device}{quick}-flux.md"
    out.write_text(md)
    print(md)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
