# Sourced by scripts/test.sh, scripts/start.sh and bench/run.sh: builds (once) and activates
# the Python environment that runs ComfyUI, this extension and its tests, and finds the host.
#   IPADAPTER_VENV   where the venv lives (default ~/.cache/comfyui-ipadapter/venv, outside the clone)
#   COMFYUI_PATH     the ComfyUI installation (else the one containing this repo, else ~/ComfyUI)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IPADAPTER_VENV:-$HOME/.cache/comfyui-ipadapter/venv}"

find_host() {
  local c
  for c in "${COMFYUI_PATH:-}" "$REPO/../.." "$HOME/ComfyUI"; do
    if [ -n "$c" ] && [ -f "$c/main.py" ] && [ -d "$c/comfy" ] && [ -f "$c/folder_paths.py" ]; then
      (cd "$c" && pwd); return 0
    fi
  done
  return 1
}
HOST="$(find_host || true)"

# PyPI's torchvision needs PyPI's torch build (the CPU-only wheel cannot load it): pin a pair
# that exists for this architecture. torchaudio is skipped; ComfyUI only warns without it.
case "$(uname -m)" in
  aarch64|arm64) TORCH="torch==2.9.1 torchvision==0.24.1" ;;
  *) TORCH="torch==2.14.1 torchvision==0.29.1" ;;
esac

stamp_of() {
  { echo "$TORCH"; cat "$REPO/requirements.txt" "$REPO/requirements-test.txt" "$REPO/requirements-train.txt" \
      "$REPO/requirements-test-nodeps.txt";
    [ -n "$HOST" ] && cat "$HOST/requirements.txt"; } | sha256sum | cut -c1-16
}

ensure_venv() {
  local stamp; stamp="$(stamp_of)"
  if [ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$stamp" ]; then return 0; fi
  echo "[env] building $VENV (torch: $TORCH; a few minutes the first time)" >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $TORCH >&2
  local reqs=(-r "$REPO/requirements.txt" -r "$REPO/requirements-test.txt" -r "$REPO/requirements-train.txt")
  if [ -n "$HOST" ]; then
    grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$HOST/requirements.txt" > "$VENV/.host-reqs.txt"
    reqs+=(-r "$VENV/.host-reqs.txt")
  fi
  "$VENV/bin/python" -m pip install -q "${reqs[@]}" >&2
  "$VENV/bin/python" -m pip install -q --no-deps -r "$REPO/requirements-test-nodeps.txt" >&2
  echo "$stamp" > "$VENV/.stamp"
}

# The browser tests (tests/test_browser.py) drive Debian's Chromium through Playwright; Playwright's own
# browser download is not used. Installed with apt where this user may (root, or sudo without a password).
ensure_browser() {
  # (and a CJK font, so the zh-locale screenshots show characters instead of boxes)
  if [ -n "${IPADAPTER_CHROMIUM:-}" ] || { { command -v chromium || command -v chromium-browser; } >/dev/null 2>&1 \
       && { ! command -v fc-list >/dev/null 2>&1 || [ -n "$(fc-list :lang=zh 2>/dev/null | head -1)" ]; }; }
  then return 0; fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo="none"; fi
  fi
  if command -v apt-get >/dev/null 2>&1 && [ "$sudo" != "none" ]; then
    echo "[env] installing Debian's chromium for the browser tests (apt-get; once)" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q chromium fonts-wqy-microhei >&2 \
      || { $sudo apt-get update -q >&2 && $sudo apt-get install -y -q chromium fonts-wqy-microhei >&2; } || true
  fi
  command -v chromium >/dev/null 2>&1 \
    || echo "[env] *** no Chromium could be installed: the browser tests will be SKIPPED (apt-get install chromium)" >&2
}

# comfy-cli (PyPI) validates pyproject.toml as the registry's publishing does (tests/test_registry.py). In a
# venv of its own: its pinned dependencies must not move ComfyUI's.
CLI_VENV="${IPADAPTER_CLI_VENV:-$HOME/.cache/comfyui-ipadapter/comfy-cli-venv}"
ensure_registry_cli() {
  if [ ! -x "$CLI_VENV/bin/comfy" ]; then
    echo "[env] installing comfy-cli into $CLI_VENV (once)" >&2
    { python3 -m venv "$CLI_VENV" && "$CLI_VENV/bin/python" -m pip install -q "comfy-cli==1.23.0" >&2; } \
      || echo "[env] *** comfy-cli could not be installed: its registry validation test will be SKIPPED" >&2
  fi
  if [ -x "$CLI_VENV/bin/comfy" ]; then export IPADAPTER_COMFY_CLI="$CLI_VENV/bin/comfy"; fi
}

host_missing_message() {
  cat >&2 <<MSG
[env] *** No ComfyUI host found. Searched: COMFYUI_PATH=${COMFYUI_PATH:-<unset>}, $REPO/../.., $HOME/ComfyUI.
[env] *** Clone ComfyUI (v0.8 or newer) to ~/ComfyUI, or set COMFYUI_PATH, or clone this
[env] *** repository into ComfyUI/custom_nodes/. Host tests will be SKIPPED.
MSG
}
