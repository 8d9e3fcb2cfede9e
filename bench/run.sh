#!/usr/bin/env bash
# One command for the benchmark (issue 5): sets up the environment like scripts/test.sh and
# runs bench/run.py. Arguments go to run.py: --quick (smoke run, ~1 min on CPU),
# --device cuda (where a GPU is present), --threads N, --sections layers,step,...
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
ensure_venv
if [ -z "$HOST" ]; then host_missing_message; exit 1; fi
export COMFYUI_PATH="$HOST"
cd "$REPO"
exec "$VENV/bin/python" bench/run.py "$@"
