"""Start a ComfyUI server with this extension loaded, and drive it over HTTP (standard library only).

Used by ``run_workflow.py`` and by ``tests/test_workflows.py``. The host is found as everywhere
else in this repository (``ip_adapter_core/host.py``): ``$COMFYUI_PATH``, the ComfyUI that
contains this checkout, ``~/ComfyUI``.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINK_NAME = "comfyui-ipadapter"  # module name the extension gets when linked in by a config
log = logging.getLogger("ipadapter.server")

# Loader inputs whose value is a model file, and the models/ folder it is looked up in.
MODEL_INPUTS = {"ckpt_name": "checkpoints", "control_net_name": "controlnet", "ipadapter_file": "ipadapter",
                "unet_name": "diffusion_models", "vae_name": "vae", "lora_name": "loras",
                "clip_name": "clip_vision or text_encoders", "style_model_name": "style_models"}


class ComfyError(RuntimeError):
    """The server refused or failed a prompt; the message names the node and input."""


def host_module():
    """ip_adapter_core/host.py, loaded by path (importing the package would need ComfyUI)."""
    spec = importlib.util.spec_from_file_location("_ipadapter_host", REPO / "ip_adapter_core" / "host.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def find_host() -> Path:
    host = host_module()
    root = host.find_comfyui()
    if root is None:
        raise ComfyError("ComfyUI not found. Searched " + host.describe_search() + ". Set COMFYUI_PATH, "
                         "clone ComfyUI (v0.8 or newer) to ~/ComfyUI, or clone this repository into "
                         "ComfyUI/custom_nodes/ (README.md, Quick start).")
    return root


def extension_in_host(host: Path) -> str | None:
    """The name of the host's custom_nodes/ folder that is this repository (a clone or a link), else None."""
    folder = Path(host) / "custom_nodes"
    if not folder.is_dir():
        return None
    return next((p.name for p in sorted(folder.iterdir()) if p.is_dir() and p.resolve() == REPO), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cuda_available(python: str) -> bool:
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


class Client:
    """A running ComfyUI server at ``url``."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.client_id = uuid.uuid4().hex
        self.output_dir: Path | None = None  # known only for servers started here

    def _request(self, path, data=None, headers=None, timeout=60):
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def get(self, path, timeout=60):
        return self._request(path, timeout=timeout)

    def post(self, path, payload, timeout=60):
        return self._request(path, json.dumps(payload).encode(), {"Content-Type": "application/json"}, timeout)

    def alive(self) -> bool:
        try:
            self.get("/system_stats", timeout=5)
            return True
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def object_info(self) -> dict:
        return self.get("/object_info", timeout=120)

    def upload_image(self, path: Path, overwrite=True) -> str:
        """Copy a file into the server's input folder (POST /upload/image); returns its name."""
        boundary = uuid.uuid4().hex
        parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n").encode() + Path(path).read_bytes() + b"\r\n"]
        for k, v in {"overwrite": str(overwrite).lower(), "type": "input"}.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        out = self._request("/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return out["name"]

    def submit(self, prompt: dict) -> str:
        """POST /prompt; refusals become a ComfyError naming each node, input and value."""
        try:
            out = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                out = json.loads(body)
            except ValueError:
                raise ComfyError(f"the server refused the prompt (HTTP {e.code}): {body[:500]!r}") from None
            raise ComfyError(describe_refusal(out, prompt)) from None
        if out.get("node_errors"):
            raise ComfyError(describe_refusal(out, prompt))
        return out["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 3600, poll: float = 0.5) -> dict:
        """Poll /history/{id} until the prompt finished; execution errors become a ComfyError."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            except (OSError, urllib.error.URLError) as e:  # busy or gone: ask again unless it is gone
                self.check_running(e)
                time.sleep(poll)
                continue
            if entry and entry.get("status", {}).get("completed") is not None \
                    and entry["status"].get("status_str") in ("success", "error"):
                if entry["status"]["status_str"] == "error":
                    raise ComfyError(describe_failure(entry, prompt_id))
                return entry
            time.sleep(poll)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def check_running(self, error: Exception) -> None:
        """Called when the server did not answer; raises if it is known to be gone."""
        if not self.alive():
            raise ComfyError(f"ComfyUI at {self.url} stopped answering: {error}")

    def run(self, prompt: dict, timeout: float = 3600) -> dict:
        return self.wait(self.submit(prompt), timeout)

    def free(self):
        self.post("/free", {"unload_models": True, "free_memory": True})


def images_of(entry: dict) -> list[dict]:
    """The images a finished prompt saved: dicts with filename, subfolder, type, node."""
    out = []
    for node_id, outputs in (entry.get("outputs") or {}).items():
        out += [{**img, "node": node_id} for img in outputs.get("images", [])]
    return out


def describe_refusal(response: dict, prompt: dict) -> str:
    lines = []
    err = response.get("error") or {}
    if isinstance(err, dict) and err.get("type") != "prompt_outputs_failed_validation":
        lines.append(f"{err.get('message', 'refused')}: {err.get('details', '')}".strip())
        if "does not exist" in err.get("message", ""):
            lines.append("  -> a node of this workflow is not installed (or failed to import: see the server log)")
    for node_id, info in (response.get("node_errors") or {}).items():
        title = prompt.get(node_id, {}).get("_meta", {}).get("title", "")
        for e in info.get("errors", []):
            lines.append(f"node {node_id} ({info.get('class_type')}{', ' + title if title else ''}): "
                         f"{e.get('message')}: {e.get('details')}")
            name = (e.get("extra_info") or {}).get("input_name")
            if e.get("type") == "value_not_in_list" and name in MODEL_INPUTS:
                lines.append(f"  -> missing model file '{e['extra_info'].get('received_value')}' for input "
                             f"'{name}': put it in ComfyUI/models/{MODEL_INPUTS[name]}/ (or a folder listed in "
                             "extra_model_paths.yaml); README.md, Models, says where to get it")
    return "the server refused the workflow:\n" + "\n".join(lines or [json.dumps(response)[:2000]])


def describe_failure(entry: dict, prompt_id: str) -> str:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type')}: {data.get('exception_message', '').strip()}")
    return f"prompt {prompt_id} failed: {json.dumps(entry.get('status'))[:2000]}"


def process_rss_bytes(pid: int) -> int:
    """Resident memory of a process, from the VmRSS line of /proc/<pid>/status (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # the kernel writes it in kB
    raise ComfyError(f"no VmRSS line in /proc/{pid}/status (a kernel thread, or the process is gone)")


class LocalServer(Client):
    """A ComfyUI subprocess on 127.0.0.1 with this extension loaded; a context manager."""

    def __init__(self, host: Path | None = None, *, port: int | None = None, cpu: bool | None = None,
                 extra_model_paths: list | tuple = (), extra_args: list | tuple = (), python: str | None = None,
                 workdir: Path | None = None, isolate: bool = False, startup_timeout: float = 300,
                 extra_nodes: list | tuple = ()):
        """``isolate``: load no custom node but this extension, and keep input/output/temp/user
        folders in ``workdir`` (tests). Otherwise the host's own folders and custom nodes are used.
        ``extra_nodes``: one-file custom nodes (paths) loaded too, from ``workdir``'s custom_nodes (tests)."""
        self.host = Path(host) if host else find_host()
        port = port or free_port()
        super().__init__(f"http://127.0.0.1:{port}")
        self.python = python or sys.executable
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="comfyui-ipadapter-")
            workdir = Path(self._tmp.name)
        self.workdir = Path(workdir)
        self.log_path = self.workdir / f"comfyui-{port}.log"
        args = [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(port)]
        if cpu if cpu is not None else not cuda_available(self.python):
            args.append("--cpu")
        configs = list(extra_model_paths)
        # Loaded from the host's custom_nodes/ when it is there (README › Install), else through a link; never
        # both, or ComfyUI would import it twice.
        installed_as = extension_in_host(self.host)
        if installed_as is None or extra_nodes:
            configs.append(self._link_extension(link=installed_as is None))
        extra = [Path(n).name for n in extra_nodes]
        for n in extra_nodes:
            shutil.copyfile(n, self.workdir / "custom_nodes" / Path(n).name)
        for c in configs:
            args += ["--extra-model-paths-config", str(c)]
        if isolate:
            for d in ("input", "output", "temp", "user"):
                (self.workdir / d).mkdir(parents=True, exist_ok=True)
            args += ["--disable-all-custom-nodes", "--whitelist-custom-nodes", installed_as or LINK_NAME, *extra,
                     "--input-directory", str(self.workdir / "input"), "--output-directory",
                     str(self.workdir / "output"), "--temp-directory", str(self.workdir / "temp"),
                     "--user-directory", str(self.workdir / "user"), "--database-url", "sqlite:///:memory:"]
            self.output_dir = self.workdir / "output"
        else:
            self.output_dir = self.host / "output"
        args += list(extra_args)
        for i, a in enumerate(args):
            if a == "--output-directory" and i + 1 < len(args):
                self.output_dir = Path(args[i + 1])
            elif a.startswith("--output-directory="):
                self.output_dir = Path(a.split("=", 1)[1])
        self.args = args
        log.info("starting ComfyUI: %s (log: %s)", " ".join(args[1:]), self.log_path)
        self._log = open(self.log_path, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(args, cwd=self.host, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_ready(startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _link_extension(self, link: bool = True) -> Path:
        """An extra_model_paths config whose ``custom_nodes:`` folder holds a link to this repo (``link``; else
        only the extra nodes: the extension is in the host's own folder)."""
        nodes = self.workdir / "custom_nodes"
        nodes.mkdir(parents=True, exist_ok=True)
        target = nodes / LINK_NAME
        if link and not target.exists():
            target.symlink_to(REPO, target_is_directory=True)
        config = self.workdir / "extension_paths.yaml"
        config.write_text(f"ipadapter_extension:\n  custom_nodes: {json.dumps(str(nodes))}\n")
        return config

    def _wait_ready(self, timeout: float):
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self.proc.returncode} while starting:\n{self.log_tail()}")
            if self.alive():
                log.info("ComfyUI ready at %s after %.1f s", self.url, time.monotonic() - start)
                return
            time.sleep(0.5)
        raise ComfyError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def check_running(self, error: Exception) -> None:
        code = self.proc.poll()
        if code is not None:
            why = " (killed: SIGKILL, most often the kernel's out-of-memory killer)" if code == -9 else ""
            raise ComfyError(f"ComfyUI exited with code {code}{why} while running the prompt:\n{self.log_tail()}")

    def rss_bytes(self) -> int:
        """Resident memory of the server process (VmRSS in /proc/<pid>/status; Linux only)."""
        return process_rss_bytes(self.proc.pid)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
