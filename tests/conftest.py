"""Shared test set-up.

The repository is a ComfyUI custom-node package whose sub-packages (``nodes``,
``models``) share names with ComfyUI's own top-level modules, so it is imported
here under the fixed package name ``ipadapter_ext`` (ComfyUI imports it under its
folder name). The package ``__init__`` is not executed for core tests: it
registers nodes and needs the host.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PKG = "ipadapter_ext"

if PKG not in sys.modules:
    pkg = types.ModuleType(PKG)
    pkg.__path__ = [str(REPO_ROOT)]
    pkg.__file__ = str(REPO_ROOT / "__init__.py")
    sys.modules[PKG] = pkg

if str(REPO_ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "tests"))

from ipadapter_ext.ip_adapter_core import host  # noqa: E402

HOST = host.add_to_sys_path(cpu=True)
HOST_MISSING = (
    "ComfyUI host not found, host tests skipped. Searched " + host.describe_search()
    + ". Set COMFYUI_PATH or see README.md (Tests)."
)
_warned = False


def pytest_report_header(config):
    return f"ComfyUI host: {HOST}" if HOST else "ComfyUI host: NOT FOUND - " + HOST_MISSING


def pytest_collection_modifyitems(config, items):
    if HOST is not None:
        return
    skip = pytest.mark.skip(reason=HOST_MISSING)
    for item in items:
        if "host" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if HOST is None:
        terminalreporter.write_line("WARNING: " + HOST_MISSING, yellow=True, bold=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "host: needs the real ComfyUI host")
    config.addinivalue_line("markers", "slow: builds full-size random models (minutes)")
    logging.getLogger("ipadapter").setLevel(logging.DEBUG)
