"""IP-Adapter benchmark (issue 5): what an image prompt costs per sampling step, against
the arithmetic limit and a straightforward patch; memory of chained adapters and clones;
load and encode times; encode batches (issue 11). Run through
``bash bench/run.sh [--quick] [--device cuda] [--sections ...]``.

Writes bench/results/<date>-<device>[-quick][-<sections>].md (and .json; the sections suffix
only when not all of them ran, so a partial run never overwrites a full one) and prints the
table, then one ``OVERHEAD <variant> added=<fraction of step> limit=<fraction>`` line per
variant (when the per-layer section ran).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# `python bench/run.py` puts bench/ first on sys.path, where its module names could shadow
# ComfyUI's; the benchmark is imported as the sub-package ipadapter_ext.bench instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if "ipadapter_ext" not in sys.modules:
    _pkg = types.ModuleType("ipadapter_ext")
    _pkg.__path__ = [str(REPO)]
    _pkg.__file__ = str(REPO / "__init__.py")
    sys.modules["ipadapter_ext"] = _pkg

log = logging.getLogger("bench")
SECTIONS = ("layers", "step", "memory", "load", "encode")
# Sections that need no UNet: asked for alone, they skip the UNet set-up and the per-layer
# timing (minutes), which every other section builds on.
UNET_FREE = {"load", "encode"}


def sections_arg(text: str) -> list[str]:
    names = [s for s in text.split(",") if s]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown}; choose from {','.join(SECTIONS)}")
    return names


def parse(argv):
    ap = argparse.ArgumentParser(prog="bash bench/run.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--quick", action="store_true", help="short smoke run: 32×32 only, few rounds (~1 min)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                    help="UNet and activation dtype (float32 as the issue asks; float16 is usual on CUDA)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default 1 on CPU, see sections.torch_threads; 0 = torch default)")
    ap.add_argument("--sections", type=sections_arg, default=list(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)} (layers runs with any but load, encode)")
    ap.add_argument("--all-layers", action="store_true",
                    help="time all 16 layers one by one instead of one call per distinct shape")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("-v", "--verbose", action="store_true")
    # Internal: one encode-batches configuration "B,N,SIZE,DIR" in this fresh process (bench/vision.py).
    ap.add_argument("--encode-worker", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ×{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or 'cpu'} ×{os.cpu_count()}"


def main(argv=None) -> int:
    args = parse(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    t_start = time.perf_counter()

    from ipadapter_ext.bench.common import setup_imports

    comfy_root = setup_imports(args.device)
    import torch

    if args.encode_worker:
        return _encode_worker(args)

    if args.device == "cuda" and not torch.cuda.is_available():
        log.error("--device cuda: torch sees no CUDA device")
        return 2
    from ipadapter_ext.bench import breakdown, report, sections
    from ipadapter_ext.bench.models import CFG_LAYOUT, LAMBDA

    threads = sections.torch_threads(args.threads, args.device)
    import comfy.ldm.modules.attention as attention

    plan = sections.Plan.quick() if args.quick else sections.Plan()
    plan.grouped = not args.all_layers
    wanted = set(args.sections)
    if wanted - UNET_FREE:
        wanted.add("layers")
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    results = sections.empty_results({
        "date": datetime.date.today().isoformat(), "device": args.device, "quick": args.quick,
        "command": " ".join(["bash bench/run.sh"] + [shlex.quote(a) for a in (argv or sys.argv[1:])]),
        "comfyui": str(comfy_root), "torch": torch.__version__, "threads": threads,
        "attention": attention.optimized_attention.__name__, "cpu": device_name,
        "image_attention": breakdown.image_attention_names()["image"],
        "load_start": load_average(), "layout": CFG_LAYOUT, "lambda": LAMBDA,
        "rounds": ", ".join(f"{k}×{k}: {v}" for k, v in plan.layer_rounds.items()),
        "sections": ",".join(s for s in SECTIONS if s in wanted),
    })
    results["meta"]["dtype"] = args.dtype
    b = sections.Bench(args.device, plan, results, getattr(torch, args.dtype))
    if "layers" in wanted:
        b.timed("set-up (FLOP count, UNet, capture step, adapters)", b.setup)
        b.timed("per-layer timing", b.layers)
        if "step" in wanted:
            b.timed("whole steps", b.whole_step)
        else:  # the per-layer fractions still need a plain step
            b.timed("plain steps", lambda: _plain_only(b))
    if "memory" in wanted:
        b.timed("memory", b.memory)
    b.release_unet()
    if "load" in wanted:
        b.timed("load and encode", b.loads)
    if "encode" in wanted:
        b.timed("encode batches", b.encode_batches)
    results["meta"]["load_end"] = load_average()
    results["meta"]["total_s"] = time.perf_counter() - t_start

    md = report.markdown(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{results['meta']['date']}-{args.device}{'-quick' if args.quick else ''}"
    if wanted != set(SECTIONS):  # a partial run gets its own file: it must not replace a full run's
        stem += "-" + "-".join(s for s in SECTIONS if s in wanted)
    (args.out / f"{stem}.md").write_text(md)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    print(md)
    print(f"results: {args.out / (stem + '.md')}; total run time {results['meta']['total_s'] / 60:.1f} min")
    for line in report.overhead_lines(results):
        print(line)
    return 0


def _encode_worker(args) -> int:
    from ipadapter_ext.bench import sections, vision

    sections.torch_threads(args.threads, args.device)
    b, n, size, out_dir = args.encode_worker.split(",", 3)
    vision.encode_worker(int(b), int(n), int(size), Path(out_dir), args.device)
    return 0


def _plain_only(b):
    """Plain steps only (when the whole-step section is skipped)."""
    from ipadapter_ext.bench import models
    from ipadapter_ext.bench.common import median, time_call

    inp = models.step_inputs(32, b.device)
    t = [time_call(lambda: models.unet_step(b.model, inp), b.device) for _ in range(max(1, b.plan.step_rounds))]
    b.r["plain_step_s"] = {32: median(t)}


if __name__ == "__main__":
    sys.exit(main())
