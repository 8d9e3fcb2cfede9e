"""SD3.5 benchmark: what an InstantX SD3.5-Large image prompt adds to an SD3 model evaluation, in time, FLOPs and
memory.

The model is ComfyUI's own MMDiT (tests/support/sd3_models.py) with SD3.5 Large's structure (heads of 64, RMS q/k
norms, width 64·depth), smaller: DEPTH joint blocks (width 64·DEPTH), random float32 weights; the latent is
LATENT×LATENT ((LATENT/2)² picture tokens of 2×2 patches) with TEXT text tokens (SD3's 77 CLIP + 77 T5), batch 2
(the cond and uncond rows of CFG, as SD3.5 samples). The adapter is InstantX's layout for that width: the
time-conditioned Resampler at the published size (DIM wide, RES_HEADS heads, RES_DEPTH layers, TOKENS queries over
SigLIP's 729×1152 states; its cost does not depend on the model's, so its milliseconds carry over to SD3.5 Large
while its share here is far larger) and norm_ip / to_k_ip / to_v_ip / RMS norms on every joint block.

- Time: whole model evaluations through ``BaseModel.apply_model`` with transformer_options as ComfyUI's sampler
  builds them (the patcher's wrappers merged in, so the APPLY_MODEL wrapper that makes the tokens runs; one
  RunState for the run), plain and with one prompt, and the Resampler alone on the same inputs (the two SigLIP
  token sets at the call's timestep), in rotating order (bench/common.py interleave). Ratios to the plain call
  per round; the added time is the median of paired differences, split into the Resampler (its tokens are made
  once per evaluation: the report counts its forward calls during one evaluation) and the rest, the work of the
  DEPTH blocks (norm_ip, K'/V', the image attention, the q/k RMS norms).
- FLOPs: counted by torch.utils.flop_counter on one call of each (matmuls; attention only where the kernel is
  made of them: ComfyUI's sub-quadratic CPU kernel is, SDPA on the CPU is not; the report probes both kernels the
  call uses and says), beside the closed forms (exact where counted): per block the added
  norm_ip (2·S·D·2W) and K'/V' (2·2·S·T·W²) for the S = 2 token sets, and the image attention over the picture's
  own keys and the T image keys, 4·B·L·(L+T)·W; once per evaluation the Resampler. L picture tokens, T = TOKENS,
  W width, D the Resampler's width, B batch rows. The same forms at the published size (38 blocks, W 2432, 1024²
  pixels) give the ratio there.
- Memory: the process's peak RSS (sampled every 2 ms) during one call of each, above its RSS before the call, and
  the adapter's weight bytes (Resampler and blocks).

Run: ``bash bench/run.sh --sd3`` (12 rounds, ~1 min on CPU: 51 s on a shared 2-core machine; ``--quick``: 3 rounds,
~30 s; ``--device cuda`` where a GPU is; ``--threads N``: CPU threads, 1 by default as bench/run.py, 0 for torch's
default).
Results: ``bench/results/<date>-<device>-sd3.md``.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import tempfile
import time
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

log = logging.getLogger("bench.sd3")
# 576 picture tokens (384×384 pixels) and 154 text tokens on 6 blocks 384 wide: the joint attention is 24 % of the
# plain FLOPs and the image attention adds 17 %, near SD3.5 Large at 1024² (23 %, 21 %: the closed forms below)
DEPTH = 6                                  # width 384, 6 heads of 64
LATENT, TEXT, BATCH = 48, 154, 2           # 77 CLIP + 77 T5 text tokens; the cond and uncond rows
TOKENS, DIM, RES_HEADS, RES_DEPTH = 64, 1280, 20, 4   # the published Resampler: 64 queries, 1280 wide, 20 heads
SIGLIP, POSITIONS, TIME_IN, SETS = 1152, 729, 320, 2  # SigLIP so400m states; the token sets: image, negative
CONTEXT, POOLED = 4096, 2048
SIGMA, LAMBDA = 0.7, 0.8
PUBLISHED = dict(depth=38, picture=(1024 // 16) ** 2)  # SD3.5 Large at 1024×1024 pixels


def build(device):
    import comfy.clip_vision

    from support.sd3_models import comfy_sd3, write_sd3_adapter

    from ipadapter_ext.ip_adapter_core.apply.image_prompt import apply_image_prompt
    from ipadapter_ext.ip_adapter_core.files.loader import load_adapter_handle
    from ipadapter_ext.ip_adapter_core.prompt.vision import image_prompt

    side = LATENT // 2   # the positional table must cover the latent's patches
    model = comfy_sd3(DEPTH, seed=0, pos_embed_max_size=side, num_patches=side * side)
    folder = Path(tempfile.mkdtemp(prefix="bench-sd3-"))
    path = write_sd3_adapter(folder / "ip-adapter.safetensors", blocks=DEPTH, dim=DIM, heads=RES_HEADS,
                             queries=TOKENS, depth=RES_DEPTH)
    handle = load_adapter_handle(path)
    g = torch.Generator().manual_seed(0)
    feats = comfy.clip_vision.Output()
    feats["penultimate_hidden_states"] = torch.randn(1, POSITIONS, SIGLIP, generator=g)
    prompt = image_prompt(handle, feats).weighted(LAMBDA)
    patched = apply_image_prompt(model, handle, prompt)
    x = torch.randn(1, 16, LATENT, LATENT, generator=g)
    inputs = dict(x=x.repeat(BATCH, 1, 1, 1).to(device),          # the cond and uncond rows share the latent
                  context=torch.randn(BATCH, TEXT, CONTEXT, generator=g).to(device),
                  y=torch.randn(BATCH, POOLED, generator=g).to(device))
    return model, patched, handle, prompt, inputs


def call(model, inputs, run):
    """One model evaluation as ComfyUI's sampler makes it: BaseModel.apply_model (its APPLY_MODEL wrappers) with
    the run's transformer_options, cond and uncond rows."""
    from ipadapter_ext.ip_adapter_core.apply.transformer_options import RUN_KEY

    import comfy.patcher_extension as pe

    opts = dict(model.model_options.get("transformer_options", {}))
    # the patcher's wrappers, as comfy.sampler_helpers.prepare_model_patcher merges them when sampling starts
    opts["wrappers"] = pe.merge_nested_dicts(dict(opts.get("wrappers", {})), model.wrappers)
    sigma = torch.full((BATCH,), SIGMA, device=inputs["x"].device)
    opts.update(cond_or_uncond=[0, 1], sigmas=sigma, **{RUN_KEY: run})
    with torch.no_grad():
        return model.model.apply_model(inputs["x"], sigma, c_crossattn=inputs["context"], y=inputs["y"],
                                       transformer_options=opts)


def resampler_call(model, handle, prompt):
    """The Resampler alone, as SD3Call.tokens_of runs it once per evaluation: both token sets, the call's timestep."""
    proj = handle.model.image_proj
    weight = next(proj.parameters())
    feats = torch.cat([prompt.positive, prompt.negative]).to(device=weight.device, dtype=torch.float32)
    t = model.model.model_sampling.timestep(torch.tensor([SIGMA])).float().to(weight.device).expand(SETS)

    def fn():
        with torch.no_grad():
            return proj(feats, t)
    return fn


def counts_flops(fn, device) -> bool:
    """Whether torch's FLOP counter counts an attention function ([B, N, heads·64] inputs) on ``device``."""
    from torch.utils.flop_counter import FlopCounterMode

    q = torch.randn(1, 8, 128, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(q, q, q, 2)
    return counter.get_total_flops() > 0


def measure(rounds: int, device: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from ipadapter_ext.ip_adapter_core.apply.attention import attention_functions
    from ipadapter_ext.ip_adapter_core.apply.run_state import RunState

    import comfy.model_management as mm

    t0 = time.perf_counter()
    model, patched, handle, prompt, inp = build(device)
    models = {"plain": model, "one prompt": patched}
    mm.load_models_gpu([patched])   # the model and the adapter, where ComfyUI places them
    log.info("built in %.1f s", time.perf_counter() - t0)
    runs = {name: RunState.for_sampling(m, torch.tensor([SIGMA, 0.0]), inp["x"][:1].shape)
            for name, m in models.items()}
    fns = {name: (lambda m=m, r=runs[name]: call(m, inp, r)) for name, m in models.items()}
    fns["Resampler alone"] = resampler_call(model, handle, prompt)
    seen, outs, flops = [], {}, {}
    hook = handle.model.image_proj.register_forward_hook(lambda *_: seen.append(1))
    try:
        # warm-up: one call of each, its FLOPs counted, and the Resampler's forward calls during one evaluation
        for name, fn in fns.items():
            seen.clear()
            counter = FlopCounterMode(display=False)
            with counter:
                outs[name] = fn()
            flops[name] = counter.get_total_flops()
            log.info("%s: %.1f GFLOP; the Resampler ran %d time(s)", name, flops[name] / 1e9, len(seen))
            if name == "one prompt":
                calls = len(seen)
    finally:
        hook.remove()
    effect = float((outs["one prompt"] - outs["plain"]).norm() / outs["plain"].norm())
    del outs
    if calls != 1 or not effect > 0:
        raise SystemExit(f"bench: the image prompt did not act as it should (Resampler calls {calls}, relative "
                         f"change of the output {effect:.2e})")
    res = interleave(fns, "plain", rounds, device)
    plain = res.times["plain"]
    ratios = [t / p for t, p in zip(res.times["one prompt"], plain)]
    out = {"median": {n: median(ts) for n, ts in res.times.items()},
           "spread": {n: spread(ts) for n, ts in res.times.items()},
           "ratio": {"median": median(ratios), "min": min(ratios), "max": max(ratios)},
           "added_s": res.added("one prompt"), "resampler_calls": calls, "effect": effect, "flops": flops, "peak": {}}
    for name in models:
        collect()
        before = rss_bytes()
        with PeakRSS() as p:
            fns[name]()
        out["peak"][name] = p.peak - before
    from comfy.ldm.modules.diffusionmodules import mmdit

    out["kernel"] = mmdit.optimized_attention.__name__
    out["counted"] = {"joint": counts_flops(mmdit.optimized_attention, device),
                      "image": counts_flops(lambda q, k, v, h: attention_functions()[0](q, k, v, h), device)}
    sizes = {k: v.numel() * v.element_size() for k, v in handle.model.state_dict().items()}
    out["adapter_bytes"] = {"Resampler": sum(b for k, b in sizes.items() if k.startswith("image_proj.")),
                            "all": sum(sizes.values())}
    out["rounds"] = rounds
    return out


def plain_flops(depth: int, picture: int, rows: int = BATCH) -> tuple[int, int]:
    """(matmuls, joint attention) of one plain MMDiT call: per block and stream adaLN 2·6W², qkv, proj and MLP
    2·12·N·W² (the last block's text stream only its adaLN and qkv), attention 4·(L+C)²·W; the embedders and the
    final layer."""
    w, c = 64 * depth, TEXT
    stream = 2 * (6 * w * w + 12 * picture * w * w), 2 * (6 * w * w + 12 * c * w * w)
    blocks = depth * stream[0] + (depth - 1) * stream[1] + 2 * (2 * w * w + 3 * c * w * w)
    embed = 2 * (2 * picture * 64 * w + c * CONTEXT * w + (256 + POOLED) * w + 4 * w * w)
    return rows * (blocks + embed), rows * depth * 4 * (picture + c) ** 2 * w


def added_flops(depth: int, picture: int, rows: int = BATCH) -> dict:
    """The prompt's work per evaluation: the Resampler (once), norm_ip + K'/V' and the image attention per block."""
    w, d, t, p, inner = 64 * depth, DIM, TOKENS, POSITIONS, 64 * RES_HEADS
    # per layer: adaLN 4D², to_q, to_kv over [features; queries], the attention, to_out, the feed-forward 8·T·D²
    layer = 4 * d * d + t * d * inner + (p + t) * d * 2 * inner + 2 * t * (p + t) * inner + t * inner * d \
        + 8 * t * d * d
    resampler = 2 * SETS * (TIME_IN * d + d * d + p * SIGLIP * d + RES_DEPTH * layer + t * d * w)
    return {"resampler": resampler, "blocks": depth * 2 * SETS * (d * 2 * w + 2 * t * w * w),
            "attention": depth * rows * 4 * picture * (picture + t) * w}


def report(st: dict, device: str) -> str:
    g = 1e9
    med, sp, r = st["median"], st["spread"], st["ratio"]
    added, res_s = st["added_s"], med["Resampler alone"]
    fl = st["flops"]
    matmuls, joint = plain_flops(DEPTH, (LATENT // 2) ** 2)
    form = added_flops(DEPTH, (LATENT // 2) ** 2)
    counted = {k: "counted" if v else "not counted" for k, v in st["counted"].items()}
    pub_m, pub_j = plain_flops(**PUBLISHED)
    pub = added_flops(**PUBLISHED)
    pub_ratio = 1 + sum(pub.values()) / (pub_m + pub_j)
    ab = st["adapter_bytes"]
    lines = ["# SD3.5 benchmark (InstantX IP-Adapter)", "",
             f"{device.upper()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; load average at end "
             f"{os.getloadavg()[0]:.1f}. bench/sd3.py says what each row is.", "",
             f"ComfyUI's MMDiT (SD3.5 Large structure), {DEPTH} joint blocks {64 * DEPTH} wide ({DEPTH} heads of 64); "
             f"{(LATENT // 2) ** 2} picture tokens ({LATENT * 8}×{LATENT * 8} pixels), {TEXT} text tokens, batch "
             f"{BATCH} (cond + uncond); sigma {SIGMA}; λ {LAMBDA}; {st['rounds']} rounds. Adapter: the published "
             f"Resampler ({DIM} wide, {RES_HEADS} heads, {RES_DEPTH} layers, {TOKENS} tokens from SigLIP's "
             f"{POSITIONS}×{SIGLIP} states), K'/V' on all {DEPTH} blocks; float32.", "",
             f"The Resampler ran {st['resampler_calls']} time(s) during one evaluation of the {DEPTH} blocks: the "
             f"tokens are made once per evaluation (by the APPLY_MODEL wrapper's SD3Call), not per block. The prompt "
             f"changed the output by {100 * st['effect']:.1f} % (relative norm).", "",
             "| call | ms (median) | spread | ÷ plain call (median) | min | max |", "|---|---|---|---|---|---|",
             f"| plain | {1e3 * med['plain']:.0f} | ±{100 * sp['plain']:.1f} % | 1 | | |",
             f"| one prompt | {1e3 * med['one prompt']:.0f} | ±{100 * sp['one prompt']:.1f} % | {r['median']:.3f} | "
             f"{r['min']:.3f} | {r['max']:.3f} |",
             f"| Resampler alone | {1e3 * res_s:.0f} | ±{100 * sp['Resampler alone']:.1f} % | "
             f"{res_s / med['plain']:.3f} | | |", "",
             f"Added per evaluation (median of paired differences): {1e3 * added:.0f} ms, of which the Resampler "
             f"{1e3 * res_s:.0f} ms (once per evaluation) and the blocks' work {1e3 * (added - res_s):.0f} ms "
             f"({1e3 * (added - res_s) / DEPTH:.1f} ms per block: norm_ip, K'/V', the image attention, the q/k RMS "
             f"norms; {(added - res_s) / med['plain']:.3f} of the plain call, the part that scales with the model).",
             "",
             "| FLOPs (GFLOP) | counted (torch) | formula: what torch counts | formula: matmuls | "
             "formula: attention |", "|---|---|---|---|---|",
             f"| plain call | {fl['plain'] / g:.2f} | {(matmuls + joint * st['counted']['joint']) / g:.2f} | "
             f"{matmuls / g:.2f} | {joint / g:.2f} (joint, {counted['joint']}) |",
             f"| Resampler alone (once per evaluation) | {fl['Resampler alone'] / g:.2f} | {form['resampler'] / g:.2f} "
             f"| {form['resampler'] / g:.2f} | in its matmuls |",
             f"| added by the prompt | {(fl['one prompt'] - fl['plain']) / g:.2f} | "
             f"{(form['resampler'] + form['blocks'] + form['attention'] * st['counted']['image']) / g:.2f} | "
             f"{(form['resampler'] + form['blocks']) / g:.2f} (Resampler + {DEPTH} × norm_ip, K'/V') | "
             f"{form['attention'] / g:.2f} (image, {DEPTH} blocks, {counted['image']}) |", "",
             f"torch's FLOP counter counts matmuls, and attention only where the kernel is made of them: here the "
             f"host's joint attention ({st['kernel']}) is {counted['joint']} and the image attention (the patch "
             f"calls the host's optimized_attention too) {counted['image']} (SDPA is not counted on the CPU). At the "
             "published size (38 blocks 2432 wide, 4096 picture "
             f"tokens at 1024², batch 2) the same forms give {(pub_m + pub_j) / 1e12:.1f} TFLOP plain and "
             f"{sum(pub.values()) / 1e12:.2f} TFLOP added (Resampler {pub['resampler'] / g:.0f} GFLOP, norm_ip + "
             f"K'/V' {pub['blocks'] / g:.0f} GFLOP, image attention {pub['attention'] / 1e12:.2f} TFLOP): "
             f"×{pub_ratio:.3f} in FLOPs, the image attention nearly all of it. Here the small model makes the "
             "Resampler, whose size does not depend on the model's, weigh far more.", "",
             f"Peak memory during one call, above the process's RSS before it: plain {st['peak']['plain'] / 2**20:.0f} "
             f"MB, one prompt {(st['peak']['one prompt'] - st['peak']['plain']) / 2**20:+.0f} MB more. The adapter's "
             f"weights: {ab['all'] / 2**20:.0f} MB (Resampler {ab['Resampler'] / 2**20:.0f} MB, the {DEPTH} blocks' "
             f"{(ab['all'] - ab['Resampler']) / 2**20:.0f} MB; float32 here), loaded once with the model (ComfyUI's "
             "memory manager)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default 1 on CPU, as bench/run.py: on a shared machine every parallel region "
                        "waits for a core another process holds; 0 = torch's default)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    setup_imports(args.device)
    threads = (1 if args.device == "cpu" else 0) if args.threads is None else args.threads
    if threads:
        torch.set_num_threads(threads)
    st = measure(3 if args.quick else 12, args.device)
    md = report(st, args.device)
    quick = "-quick" if args.quick else ""
    out = HERE / "results" / f"{datetime.date.today().isoformat()}-{args.device}{quick}-sd3.md"
    out.write_text(md)
    print(md)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
