#!/usr/bin/env bash
# Training step benchmark (issue 10): reference step vs the script's vs the node's, one table
# (bench/results/<date>-cpu-training.md). Sets up the environment like scripts/test.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
ensure_venv
if [ -z "$HOST" ]; then host_missing_message; exit 1; fi
export COMFYUI_PATH="$HOST"
cd "$REPO"
exec "$VENV/bin/python" bench/training.py "$@"
