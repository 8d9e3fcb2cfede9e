"""The README's test command from the folders people install into: a clone in a hyphenated folder inside a
ComfyUI's ``custom_nodes/`` (README › Install, ComfyUI-Manager and ``comfy node install`` all make one) and a
plain clone next to a ComfyUI. The repository root is a package whose name is not an identifier there; pytest
used to import it as the test package ``__init__`` and every test errored at collection.

Each layout is a copy of this working tree (the files git lists, so uncommitted changes count) and, for the
custom_nodes case, a ComfyUI made of links to the real host's files, so the host is found as "the ComfyUI
that contains this checkout". The command runs one quick host-free test file; the whole suite runs from the
hyphenated layout in .ci/run."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support.package_alias import REPO_ROOT

QUICK = "tests/test_schedules.py"  # host-free, a second: enough to show collection and a passing run


def copy_tree(dst: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("INSTALL LAYOUT NOT CHECKED: this checkout is not a git work tree (git ls-files failed)")
    for rel in listed.stdout.splitlines():
        src = REPO_ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def linked_host(dst: Path, host: Path) -> Path:
    """A ComfyUI whose entries are links to the real one's, with a custom_nodes/ of its own."""
    dst.mkdir(parents=True)
    for entry in host.iterdir():
        if entry.name != "custom_nodes":
            (dst / entry.name).symlink_to(entry)
    (dst / "custom_nodes").mkdir()
    return dst


def run_readme_test_command(clone: Path, env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "PYTEST_ADDOPTS")}
    env.update(env_extra)
    return subprocess.run(["bash", "scripts/test.sh", "-q", "-p", "no:cacheprovider", QUICK], cwd=clone,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.host
def test_clone_in_hyphenated_custom_nodes_folder(tmp_path):
    from conftest import HOST

    comfy = linked_host(tmp_path / "ComfyUI", Path(HOST))
    clone = copy_tree(comfy / "custom_nodes" / "comfyui-ipadapter")
    done = run_readme_test_command(clone, {})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert " passed" in out and "error" not in out.lower().split("short test summary")[-1], out[-2000:]
    # the host found is the enclosing ComfyUI, not COMFYUI_PATH or ~/ComfyUI
    assert f"[test] ComfyUI host: {comfy.resolve()}" in out, out[-2000:]


@pytest.mark.host
def test_plain_clone_next_to_comfyui(tmp_path):
    from conftest import HOST

    clone = copy_tree(tmp_path / "ComfyUI_IPAdapter")
    done = run_readme_test_command(clone, {"COMFYUI_PATH": str(HOST)})
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert " passed" in done.stdout, done.stdout[-2000:]


MACHINE_PATHS = ("/work/", "/root/", "/home/", "/tmp/", "/mnt/", "/opt/", ".mirror/")


def test_no_machine_paths_in_the_project():
    """Nothing in the project names a folder of one particular machine (CI once found the popular extension's
    examples in this machine's mirror); bench/results/ are records of runs and may name where they ran."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("MACHINE PATHS NOT CHECKED: this checkout is not a git work tree (git ls-files failed)")
    found = []
    for rel in listed.stdout.splitlines():
        path = REPO_ROOT / rel
        if rel.startswith("bench/results/") or rel == "tests/test_install_layout.py" or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:4096]:  # images
            continue
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            found += [f"{rel}:{n}: {line.strip()[:120]}" for p in MACHINE_PATHS if p in line]
    assert not found, "machine paths in the project (use an environment variable the README documents):\n" \
        + "\n".join(found)
