#!/usr/bin/env bash
# Sets up the environment (once) and starts ComfyUI with this extension loaded.
# Extra arguments go to ComfyUI's main.py (e.g. --port 8189). The example workflows appear in
# the editor under Templates > Extensions > comfyui-ipadapter, and in this repo's workflows/.
source "$(dirname "$0")/env.sh"
if [ -z "$HOST" ]; then
  host_missing_message
  echo "[start] ComfyUI is needed to run the extension: git clone https://github.com/comfyanonymous/ComfyUI ~/ComfyUI" >&2
  exit 1
fi
ensure_venv
link="$HOST/custom_nodes/comfyui-ipadapter"
if [ "$(cd "$REPO/.." && pwd)" != "$HOST/custom_nodes" ] && [ ! -e "$link" ]; then
  ln -s "$REPO" "$link"
  echo "[start] linked $link -> $REPO" >&2
fi
mkdir -p "$HOST/models/ipadapter" "$HOST/models/clip_vision" "$HOST/input"
cp -n "$REPO"/workflows/input/*.png "$HOST/input/" 2>/dev/null || true  # images the workflows load
args=(--listen 127.0.0.1 --port 8188)
"$VENV/bin/python" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null || args+=(--cpu)
echo "[start] ComfyUI at $HOST; open http://127.0.0.1:8188" >&2
cd "$HOST"
exec "$VENV/bin/python" main.py "${args[@]}" "$@"
