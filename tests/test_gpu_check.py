"""bench/gpu_check.sh, the one script a task lent a GPU runs (docs/performance.md): its dry run, here on the
CPU, finds the Python packages, ComfyUI, this extension's nodes and the files of every step, collects the GPU
tests, and writes nothing into the repository."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support.package_alias import REPO_ROOT

STEPS = ("sync-debug", "half-precision-and-free", "bench-cuda", "train-accelerate")


@pytest.mark.host
def test_gpu_check_dry_run_finds_everything():
    results = REPO_ROOT / "bench" / "results"
    before = sorted(p.name for p in results.iterdir())
    env = {**os.environ, "IPADAPTER_PYTHON": sys.executable}
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "gpu_check.py: everything needed is here (dry run)" in out, out[-4000:]
    for step in STEPS:
        assert f"=== [{step}]" in out, (step, out[-4000:])
    assert "3 tests collected" in out and "1 test collected" in out, out[-3000:]  # test_gpu.py; the sync check
    assert "dry run: everything found, nothing run" in out
    assert sorted(p.name for p in results.iterdir()) == before
