#!/usr/bin/env bash
# Everything that only a CUDA GPU can show, in one run of under 8 minutes on one GPU (issue 19, item 9):
#   1. the machine: nvidia-smi, torch, CUDA, what imports          (bench/gpu_check.py)
#   2. no host-device sync in the patched layers                   (tests/test_host_runtime.py, sync debug mode)
#   3. fp16 and bf16 sampling through the nodes; GPU memory back after a run and /free's steps (tests/test_gpu.py)
#   4. the benchmark on CUDA, quick                                (bench/run.py --device cuda --quick)
#   5. a training run with accelerate, bf16, 20 steps              (scripts/train_ipadapter.py --tiny-random)
# Results: bench/results/<date>-gpu-check.log (and $OUT/ when set, for the device tool).
#
#   bash bench/gpu_check.sh            on a CUDA machine
#   bash bench/gpu_check.sh --dry-run  anywhere: finds everything it needs and prints what it would run
#
# Python: $IPADAPTER_PYTHON, else the project venv (scripts/env.sh) when it exists, else python3. ComfyUI:
# $COMFYUI_PATH, else .gpu/ComfyUI (bench/gpu_prepare.sh), else the usual search. Wheels in .gpu/whl are
# installed first (a device machine cannot reach PyPI). Nothing here installs from the network.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1

UNPACKED="$REPO/.gpu/unpacked"  # what gpu_prepare.sh packed, unpacked (ignored by git, like .gpu/)
if [ -z "${COMFYUI_PATH:-}" ] && [ -f "$REPO/.gpu/ComfyUI.tar.xz" ] && [ ! -d "$UNPACKED/ComfyUI" ]; then
  mkdir -p "$UNPACKED" && tar -xJf "$REPO/.gpu/ComfyUI.tar.xz" -C "$UNPACKED"
fi
[ -z "${COMFYUI_PATH:-}" ] && [ -f "$UNPACKED/ComfyUI/main.py" ] && export COMFYUI_PATH="$UNPACKED/ComfyUI"
# shellcheck source=../scripts/env.sh
source "$REPO/scripts/env.sh"   # HOST, VENV (the venv is used, never built, here)
set +e
PY="${IPADAPTER_PYTHON:-}"
if [ -z "$PY" ]; then if [ -x "$VENV/bin/python" ]; then PY="$VENV/bin/python"; else PY="$(command -v python3)"; fi; fi
if [ -d "$REPO/.gpu/whl" ] && [ "$DRY" = 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$UNPACKED/site" \
    "$REPO"/.gpu/whl/*.whl && export PYTHONPATH="$UNPACKED/site${PYTHONPATH:+:$PYTHONPATH}"
fi
[ -n "$HOST" ] && export COMFYUI_PATH="$HOST"

RESULTS="$REPO/bench/results"
mkdir -p "$RESULTS"
WORK="$(mktemp -d)"
LOG="$RESULTS/$(date +%F)-gpu-check.log"
[ "$DRY" = 1 ] && LOG="$WORK/gpu-check-dry-run.log"  # a dry run leaves nothing in the repo
trap 'rm -rf "$WORK"' EXIT
: > "$LOG"
say() { echo "$@" | tee -a "$LOG"; }

FAILED=()
step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to the log, a summary line
  local name="$1" limit="$2"; shift 2
  say "=== [$name] (limit ${limit}s): $*"
  if [ "$DRY" = 1 ]; then  # a pytest step shows that its tests are collected
    if [[ " $* " == *" -m pytest "* ]]; then (cd "$REPO" && "$@" --collect-only) 2>&1 | tail -3 | tee -a "$LOG"
      [ "${PIPESTATUS[0]}" = 0 ] || FAILED+=("$name (collection)"); fi
    return 0
  fi
  local t0=$SECONDS
  (cd "$REPO" && timeout "$limit" "$@") 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "=== [$name] rc=$rc in $((SECONDS - t0))s"
  [ "$rc" = 0 ] || FAILED+=("$name")
}

say "gpu_check $(date -Is) python=$PY host=${HOST:-NONE} dry_run=$DRY"
"$PY" "$REPO/bench/gpu_check.py" $([ "$DRY" = 1 ] && echo --dry-run) 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" = 0 ] || FAILED+=("environment")

"$PY" - "$WORK/data" <<'PY' || FAILED+=("training data")
# 16 random pictures with captions: the data of step 5
import sys, pathlib, numpy as np
from PIL import Image
d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True)
rng = np.random.default_rng(0)
for i in range(16):
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    (d / f"{i:02d}.txt").write_text(f"random picture {i}")
PY

export PYTHONUNBUFFERED=1
[ "$DRY" = 1 ] || export IPADAPTER_TEST_GPU=1  # ComfyUI on the GPU in the tests (a dry run has none)
step sync-debug 120 "$PY" -m pytest -q -rs -p no:cacheprovider \
  "tests/test_host_runtime.py::test_no_cuda_sync_in_patched_layers_on_gpu"
step half-precision-and-free 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py
step bench-cuda 150 "$PY" bench/run.py --device cuda --quick --out "$RESULTS"
step train-accelerate 90 "$PY" -m accelerate.commands.launch --num_processes 1 --mixed_precision bf16 \
  scripts/train_ipadapter.py --tiny-random sd15 --data "$WORK/data" --output-dir "$WORK/train" --max-steps 20 \
  --train-batch-size 4 --mixed-precision bf16 --dataloader-workers 0

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then cp "$LOG" "$OUT/" ; cp "$RESULTS"/*cuda* "$OUT/" 2>/dev/null; fi
if [ "${#FAILED[@]}" = 0 ]; then
  say "gpu_check: $([ "$DRY" = 1 ] && echo 'dry run: everything found, nothing run' || echo 'all steps passed')"; exit 0
fi
say "gpu_check: FAILED: ${FAILED[*]}"
exit 1
