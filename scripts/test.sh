#!/usr/bin/env bash
# Sets up the test environment (once; cached outside the clone) and runs every test.
# Extra arguments go to pytest, e.g. scripts/test.sh -k parity
source "$(dirname "$0")/env.sh"
ensure_venv
ensure_browser
ensure_registry_cli
[ -n "$HOST" ] && echo "[test] ComfyUI host: $HOST" >&2 || host_missing_message
cd "$REPO"
[ -n "$HOST" ] && export COMFYUI_PATH="$HOST"
exec "$VENV/bin/python" -m pytest "$@"
