"""Registry packaging: pyproject.toml against the Comfy registry's documented rules
(https://docs.comfy.org/registry/specifications), comfy-cli's own publishing validation (``comfy node
validate``, run from the venv scripts/env.sh makes for it), the version written in one place only, and the
dependencies the same as requirements.txt (which ComfyUI-Manager installs)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from support.package_alias import REPO_ROOT

REPO = Path(REPO_ROOT)
DATA = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT, COMFY = DATA["project"], DATA["tool"]["comfy"]


def test_name_follows_the_registry_rules():
    name = PROJECT["name"]
    assert len(name) < 100
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name), "letters, digits, - _ . only; starts with a letter"
    assert not re.search(r"[._-]{2}", name), "no consecutive special characters"
    assert "comfyui" not in name.lower(), "the registry advises against ComfyUI in the name"


def test_version_is_semver_and_written_once():
    from ipadapter_ext.ip_adapter_core.package_info import version

    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"])
    assert version() == PROJECT["version"]
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not tracked:  # not a git checkout (an unpacked archive): every file
        tracked = [str(p.relative_to(REPO)) for p in REPO.rglob("*.py")]
    for rel in tracked:
        if rel.endswith(".py"):
            text = (REPO / rel).read_text(encoding="utf-8", errors="replace")
            assert not re.search(r"(?m)^\s*__version__\s*=", text), f"{rel} sets a second version"


def test_required_and_recommended_fields():
    assert PROJECT["description"].strip()
    license_ = PROJECT["license"]
    assert isinstance(license_, dict) and set(license_) <= {"file", "text"}
    if "file" in license_:
        assert (REPO / license_["file"]).is_file()
    urls = PROJECT["urls"]
    assert urls["Repository"].startswith("https://")
    for key in ("PublisherId", "DisplayName", "Icon"):
        assert COMFY[key], key
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", COMFY["PublisherId"])
    assert COMFY["Icon"].startswith("https://") and COMFY["Icon"].endswith((".svg", ".png", ".jpg", ".gif"))
    icon = COMFY["Icon"].split("/main/", 1)[-1]
    assert (REPO / icon).is_file(), f"the icon the URL names is not in the repository: {icon}"
    assert isinstance(COMFY.get("includes", []), list)
    assert all((REPO / p).exists() for p in COMFY.get("includes", []))


def test_dependencies_match_requirements_txt():
    lines = [ln.split("#", 1)[0].strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    assert sorted(filter(None, lines)) == sorted(PROJECT["dependencies"])


def _cli() -> str:
    exe = os.environ.get("IPADAPTER_COMFY_CLI") or shutil.which("comfy")
    if not exe:
        pytest.skip("REGISTRY VALIDATION SKIPPED: comfy-cli not installed (scripts/env.sh installs it in its own venv)")
    return exe


def _validate(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_cli(), "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": str(Path(_cli()).parent) + os.pathsep + os.environ["PATH"]})


def test_comfy_cli_validates_the_repository():
    r = _validate(REPO)
    out = r.stdout + r.stderr  # rich prints to either
    assert r.returncode == 0, out
    assert "All validation checks passed" in out, out  # also: no exec/eval (ruff S102, S307, E702)


def test_comfy_cli_refuses_a_pyproject_without_version(tmp_path):
    """The validation can fail: the same file without its version is refused."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(re.sub(r'(?m)^version = .*\n', "", text), encoding="utf-8")
    r = _validate(tmp_path)
    assert r.returncode != 0 and "version is empty" in r.stdout + r.stderr, r.stdout + r.stderr
