#!/usr/bin/env bash
# Packs what bench/gpu_check.sh needs on a GPU machine that cannot reach PyPI, into .gpu/ (ignored by git; the
# device tool takes it with carry: [".gpu"]): ComfyUI as .gpu/ComfyUI.tar.xz (~3.5 MB) and, in .gpu/whl, wheels
# (CPython 3.12, manylinux x86-64) of the packages that the device image lacks (its list: the workplace's device
# notes; the image has torch, torchvision, transformers, accelerate, safetensors, einops, aiohttp, pytest).
# Prints the total, which must stay under the tool's 64 MiB with the repository.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
[ -n "$HOST" ] || { host_missing_message; exit 1; }
# ComfyUI's requirements.txt and ours, less what the image has; versions as this project's venv resolves them.
PACKAGES=(torchsde trampoline av alembic mako sqlalchemy greenlet pydantic pydantic-core pydantic-settings
          annotated-types typing-inspection python-dotenv kornia kornia-rs spandrel diffusers)
rm -rf "$REPO/.gpu" && mkdir -p "$REPO/.gpu/whl"
tar -C "$(dirname "$HOST")" --exclude="$(basename "$HOST")/custom_nodes/*" --exclude="$(basename "$HOST")/models/*/*" \
  --exclude="*/__pycache__" -cJf "$REPO/.gpu/ComfyUI.tar.xz" --transform "s,^$(basename "$HOST"),ComfyUI," \
  "$(basename "$HOST")"
PY="${IPADAPTER_PYTHON:-$VENV/bin/python}"
for name in "${PACKAGES[@]}"; do
  version="$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')"
  spec="$name${version:+==$version}"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$REPO/.gpu/whl" "$spec" || echo "[gpu_prepare] *** no wheel for $spec" >&2
done
du -sh "$REPO/.gpu"
echo "[gpu_prepare] carry .gpu with: bash bench/gpu_check.sh (COMFYUI_PATH is set from .gpu/ComfyUI.tar.xz)"
