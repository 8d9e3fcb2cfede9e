#!/usr/bin/env bash
# One command for the benchmark (issue 5): sets up the environment like scripts/test.sh and
# runs bench/run.py. Arguments go to run.py: --quick (smoke run, ~1 min on CPU),
# --device cuda (where a GPU is present), --threads N, --sections layers,step,...; --training for
# the training-step benchmark (issue 10), --faceid for FaceID's (issue 21), --flux for Flux's (issue 22),
# --sd3 for SD3.5's (InstantX)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
ensure_venv
if [ -z "$HOST" ]; then host_missing_message; exit 1; fi
export COMFYUI_PATH="$HOST"
cd "$REPO"
# --training: the training-step benchmark (bench/training.py: reference vs script vs node) instead
if [ "${1:-}" = "--training" ]; then shift; exec "$VENV/bin/python" bench/training.py "$@"; fi
# --faceid: face analysis per picture and the per-step cost of a FaceID prompt (bench/faceid.py)
if [ "${1:-}" = "--faceid" ]; then shift; exec "$VENV/bin/python" bench/faceid.py "$@"; fi
# --flux: what an XLabs prompt adds to a Flux model call (bench/flux.py)
if [ "${1:-}" = "--flux" ]; then shift; exec "$VENV/bin/python" bench/flux.py "$@"; fi
# --sd3: what an InstantX SD3.5-Large prompt adds to an SD3 model evaluation (bench/sd3.py)
if [ "${1:-}" = "--sd3" ]; then shift; exec "$VENV/bin/python" bench/sd3.py "$@"; fi
exec "$VENV/bin/python" bench/run.py "$@"
