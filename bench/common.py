"""Shared set-up for the benchmark: importing the extension and its host, devices,
timing and memory helpers.

The repository is imported as the package ``ipadapter_ext`` (as tests/conftest.py
does): its sub-packages ``nodes``/``models`` share names with ComfyUI's own modules.
The benchmark itself is ``ipadapter_ext.bench`` (bench/run.py bootstraps that).
tests/ is put on sys.path for the random-weight generators the tests already use
(adapter files of the real shapes, the real SD1.5 UNet config).
"""
from __future__ import annotations

import gc
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

CACHE = Path(os.environ.get("IPADAPTER_BENCH_CACHE", Path.home() / ".cache/comfyui-ipadapter/bench"))

log = logging.getLogger("bench")


def setup_imports(device: str) -> Path:
    """Make ``ipadapter_ext`` and ``comfy`` importable; returns the ComfyUI path.

    ComfyUI probes for a GPU when comfy.model_management is imported, so CPU mode
    must be chosen before that import (host.add_to_sys_path does it)."""
    # Never the repo root itself: its nodes/ and models/ would shadow ComfyUI's modules.
    if str(REPO_ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / "tests"))
    from support.package_alias import install

    install()
    from ipadapter_ext.ip_adapter_core import host

    root = host.add_to_sys_path(cpu=(device == "cpu"))
    if root is None:
        raise SystemExit("bench: no ComfyUI host found. Searched " + host.describe_search())
    return root


def sync(device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover the work itself."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs) -> float:
    """Half the interquartile range relative to the median: a robust ± for noisy timings."""
    if len(xs) < 4:
        return (max(xs) - min(xs)) / 2 / median(xs) if xs else float("nan")
    q = statistics.quantiles(xs, n=4)
    return (q[2] - q[0]) / 2 / statistics.median(xs)


def time_call(fn, device, inner: int = 1) -> float:
    """Seconds per call of ``fn``, averaged over ``inner`` back-to-back calls."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / inner


def calibrate_inner(fn, device, target_s: float) -> int:
    """Calls per sample so one sample lasts about ``target_s`` (timer and scheduler
    noise dominate samples much shorter than a millisecond)."""
    fn()  # warm-up: first calls fill caches (K'/V', masks) and allocator pools
    one = min(time_call(fn, device) for _ in range(3))
    return max(1, min(200, round(target_s / max(one, 1e-7))))


@dataclass
class Interleaved:
    """Per-candidate times from interleaved runs, and per-round differences to a reference."""

    times: dict
    diffs: dict

    def med(self, name):
        return median(self.times[name])

    def added(self, name):
        # Median of paired differences: a slow spell from other processes hits both
        # members of a round, so it cancels, where a difference of medians would not.
        return median(self.diffs[name])


def interleave(candidates: dict, reference: str, rounds: int, device, inner=1) -> Interleaved:
    """Run every candidate once per round, rotating the order so none is always first
    (the first call after another kernel finds colder caches). ``inner``: calls per
    sample, one number or one per candidate."""
    names = list(candidates)
    if not isinstance(inner, dict):
        inner = dict.fromkeys(names, inner)
    times = {n: [] for n in names}
    diffs = {n: [] for n in names if n != reference}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        got = {n: time_call(candidates[n], device, inner[n]) for n in order}
        for n in names:
            times[n].append(got[n])
            if n != reference:
                diffs[n].append(got[n] - got[reference])
    return Interleaved(times, diffs)


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def collect() -> None:
    gc.collect()
    try:
        import ctypes

        # Give freed heap pages back to the OS so RSS deltas reflect live memory.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:.3f}"


def fmt_pct(x: float) -> str:
    return f"{x * 100:.2f}%"
