"""Import this repository as the package ``ipadapter_ext`` without running its ``__init__``.

Its sub-package ``nodes`` shares a name with ComfyUI's top-level modules, so
the repo root never goes on sys.path; ComfyUI itself imports it under its folder name. The
package ``__init__`` registers nodes and needs a running host, so it is skipped here.
Used by tests/conftest.py and bench/.
"""
import sys
import types
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PKG = "ipadapter_ext"


def install() -> None:
    """Register ``ipadapter_ext`` (idempotent) and put tests/ on sys.path for ``support``."""
    if PKG not in sys.modules:
        pkg = types.ModuleType(PKG)
        pkg.__path__ = [str(REPO_ROOT)]
        pkg.__file__ = str(REPO_ROOT / "__init__.py")
        sys.modules[PKG] = pkg
    if str(REPO_ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / "tests"))
