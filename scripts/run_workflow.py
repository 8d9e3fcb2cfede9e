#!/usr/bin/env python3
"""Run a ComfyUI workflow file headless and print where its images went.

    python scripts/run_workflow.py workflows/01_image_variation.json
    python scripts/run_workflow.py workflows/api/04_img2img.json --server http://127.0.0.1:8188
    python scripts/run_workflow.py workflows/03_controlnet.json --set 5.steps=4 --set 4.width=256

The file may be in the editor's UI format or in the API format; UI files are converted with the
node catalogue of the server that runs them (GET /object_info). Without ``--server``, ComfyUI is
started on 127.0.0.1 from the installation found as everywhere in this repository
(``$COMFYUI_PATH``, the ComfyUI that contains this checkout, ``~/ComfyUI``), with ``--cpu`` when
torch sees no CUDA device and with this extension loaded (linked in through a temporary
extra_model_paths config when it is not already in the host's custom_nodes/). Input images the
server does not have are uploaded from ``--inputs`` folders (default: ``input/`` next to the
workflow and this repository's ``workflows/input/``). Exit status 0 on success, 1 on failure.
Run it with the Python that runs ComfyUI (scripts/env.sh builds one).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
import urllib.parse
from pathlib import Path, PureWindowsPath

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_server  # noqa: E402
import workflow_format  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workflow", type=Path, help="a workflow .json file (UI or API format)")
    p.add_argument("--server", help="URL of a running ComfyUI (default: start one)")
    p.add_argument("--extra-model-paths-config", action="append", default=[], type=Path, metavar="YAML",
                   help="passed to ComfyUI (repeatable): folders with your models")
    p.add_argument("--cpu", action="store_true", help="force --cpu (default: only when torch sees no CUDA)")
    p.add_argument("--port", type=int, help="port of the started server (default: a free one)")
    p.add_argument("--comfy-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for ComfyUI's main.py (repeatable), e.g. --comfy-arg=--fp16-unet")
    p.add_argument("--inputs", action="append", type=Path, default=[], metavar="DIR",
                   help="folder with the workflow's input images (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="override an input of the API prompt, e.g. 5.steps=4 (VALUE is JSON, else a string)")
    p.add_argument("--save-api", type=Path, metavar="FILE", help="also write the API-format prompt here")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the result")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def apply_overrides(prompt: dict, overrides: list[str]) -> None:
    for item in overrides:
        target, _, raw = item.partition("=")
        node, _, name = target.partition(".")
        if not raw or not name or node not in prompt:
            raise workflow_format.WorkflowError(f"--set {item}: expected NODE.INPUT=VALUE with a node id of the "
                                                f"prompt ({', '.join(prompt)})")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        prompt[node]["inputs"][name] = value


def upload_inputs(client, prompt: dict, object_info: dict, folders: list[Path]) -> list[str]:
    """Upload the files of image-upload inputs that the server lacks and a folder has."""
    done = []
    for node_id, node in prompt.items():
        spec = object_info.get(node["class_type"], {})
        for name, value in node["inputs"].items():
            config = (spec.get("input", {}).get("required") or {}).get(name)
            opts = config[1] if config and len(config) > 1 and isinstance(config[1], dict) else {}
            if not isinstance(value, str) or not any(opts.get(o) for o in workflow_format.UPLOAD_OPTIONS):
                continue
            options = config[0] if isinstance(config[0], list) else opts.get("options", [])
            if value in options:
                continue
            where = f"node {node_id} ({node['class_type']}) input '{name}'"
            source = local_input(value, folders, where)
            if source is None:
                raise comfy_server.ComfyError(
                    f"{where}: the file '{value}' is neither in the server's input folder nor in "
                    f"{', '.join(map(str, folders))}; put it in ComfyUI/input/ or pass --inputs DIR")
            done.append(client.upload_image(source))
    return done


def local_input(value: str, folders: list[Path], where: str) -> Path | None:
    """The file named ``value`` directly inside one of ``folders``, or None.

    A workflow is someone else's file: a value like '/etc/passwd' or '../../.ssh/id_rsa'
    would otherwise send that file to the server, so only plain names inside the input
    folders are accepted, and links must not lead out of them either."""
    # the drive test catches Windows forms such as 'C:x' on any system
    if "/" in value or "\\" in value or ".." in value or Path(value).is_absolute() or PureWindowsPath(value).drive:
        raise comfy_server.ComfyError(
            f"{where}: refusing to upload '{value}': an input file must be a plain file name (no '/', '\\' "
            "or '..') found directly in an inputs folder; copy the file there and use its name")
    for folder in folders:
        candidate = folder / value
        if not candidate.is_file():
            continue
        resolved, root = candidate.resolve(), folder.resolve()
        if not resolved.is_relative_to(root):
            raise comfy_server.ComfyError(
                f"{where}: refusing to upload '{value}': {candidate} leads to {resolved}, outside the "
                f"inputs folder {root}; copy the file itself into the folder")
        return candidate  # not the resolved path: the upload keeps the name the workflow uses
    return None


def report(client, entry: dict) -> list[str]:
    lines = []
    for img in comfy_server.images_of(entry):
        rel = Path(img["type"]) / img.get("subfolder", "") / img["filename"]
        if client.output_dir is not None and img["type"] == "output":
            lines.append(str(client.output_dir / img.get("subfolder", "") / img["filename"]))
        else:
            query = urllib.parse.urlencode({k: img.get(k, "") for k in ("filename", "subfolder", "type")})
            lines.append(f"{rel}  ({client.url}/view?{query})")
    return lines


def run(args) -> int:
    workflow = workflow_format.load(args.workflow)
    folders = args.inputs or [args.workflow.resolve().parent / "input", comfy_server.REPO / "workflows" / "input"]
    server = None
    try:
        if args.server:
            client = comfy_server.Client(args.server)
            if not client.alive():
                raise comfy_server.ComfyError(f"no ComfyUI answers at {args.server}")
        else:
            server = client = comfy_server.LocalServer(
                port=args.port, cpu=True if args.cpu else None, extra_model_paths=args.extra_model_paths_config,
                extra_args=args.comfy_arg)
            print(f"ComfyUI {server.host} started at {server.url} (log: {server.log_path})", file=sys.stderr)
        info = client.object_info()
        prompt = workflow_format.ui_to_api(workflow, info, warn=lambda m: print("warning:", m, file=sys.stderr))
        apply_overrides(prompt, args.set)
        if args.save_api:
            workflow_format.write(args.save_api, prompt)
        for name in upload_inputs(client, prompt, info, folders):
            print(f"uploaded input image {name}", file=sys.stderr)
        start = time.monotonic()
        entry = client.run(prompt, timeout=args.timeout)
        images = report(client, entry)
        print(f"finished in {time.monotonic() - start:.1f} s; {len(images)} image(s):", file=sys.stderr)
        for line in images:
            print(line)
        return 0 if images else 1
    except (comfy_server.ComfyError, workflow_format.WorkflowError, urllib.error.URLError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        if server is not None and args.verbose:
            print("--- ComfyUI log (tail) ---\n" + server.log_tail(), file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
