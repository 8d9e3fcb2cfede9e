"""Shared test set-up: the repo imported as ``ipadapter_ext`` (see package_alias.py), the
ComfyUI host found and put on sys.path in CPU mode, the ``host`` marker skipped loudly
without it, and the parity table and the soak test's lines printed at the end."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.package_alias import REPO_ROOT, install  # noqa: E402,F401  (REPO_ROOT: used by tests)

install()
from ipadapter_ext.ip_adapter_core import host  # noqa: E402

# ComfyUI runs on the CPU in the tests (CI has no GPU); IPADAPTER_TEST_GPU=1 on a CUDA machine lets it
# use the GPU, for the checks that only mean something there (tests/test_host_runtime.py: sync check).
HOST = host.add_to_sys_path(cpu=os.environ.get("IPADAPTER_TEST_GPU") != "1")
HOST_MISSING = (
    "ComfyUI host not found, host tests skipped. Searched " + host.describe_search()
    + ". Set COMFYUI_PATH or see README.md (Quick start)."
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


PARITY: list[tuple[str, float, float]] = []
SOAK: list[str] = []  # lines tests/test_soak.py prints in the summary (bad prompts, their errors, totals)


@pytest.fixture
def parity():
    """Record a parity measurement; all of them are printed at the end of the run."""

    def record(name: str, got, ref, tol: float) -> float:
        """``got`` vs ``ref`` tensors, or ``got`` an error already measured (ref None)."""
        err = float(got) if ref is None else rel_err(got, ref)
        PARITY.append((name, err, tol))
        assert err < tol, f"{name}: relative error {err:.3e} >= {tol:.0e}"
        return err

    return record


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float64."""
    got, ref = got.double(), ref.double()
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


# The same maths on another batch shape (or in another order) runs other BLAS kernels, which sum in another
# order, and which kernel depends on the CPU: on an AMD EPYC, projecting two images as one batch differs from
# projecting each alone by 1e-7 of the values' scale (ip-adapter_sd15; bit-equal on the CPUs before it), the random
# ViT-H at batch 1/2 vs 5 by 1e-6 (tests/test_encode_batches.py); float32 against float64 of the same
# projection: 2e-7 to 9e-7. 1e-5 leaves ten times that and still catches a real error (a wrong token, weight
# or layer moves the values by 1e-3 or more). Same kernels on the same shapes stay bit-exact (torch.equal).
REORDER_RTOL = 1e-5


def assert_close_reordered(got: torch.Tensor, ref: torch.Tensor, what: str = "", rtol: float = REORDER_RTOL) -> None:
    """``got`` equals ``ref`` up to float32 summation order: ``rtol`` per entry, plus ``rtol`` × max|ref| for
    entries near zero (where a relative bound alone is ill-posed); shapes and dtypes must match."""
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    torch.testing.assert_close(got, ref, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{what}: {m}" if what else m)


def pytest_terminal_summary(terminalreporter):
    if PARITY:
        terminalreporter.section("parity (relative error, tolerance)")
        for name, err, tol in PARITY:
            terminalreporter.write_line(f"PARITY {name}: {err:.2e} (< {tol:.0e})")
    if SOAK:
        terminalreporter.section("soak (errors of the bad prompts, totals)")
        for line in SOAK:
            terminalreporter.write_line(line)
    if HOST is None:
        terminalreporter.write_line("WARNING: " + HOST_MISSING, yellow=True, bold=True)


class RepoRootIsNotAPackage:
    """The repository root is ComfyUI's custom-node package, not a test package. pytest would collect it as
    a Package and import its ``__init__`` (which registers nodes, and whose relative imports fail when
    the folder name is not an identifier, as in ``custom_nodes/comfyui-ipadapter``): collect it as a plain
    directory instead. Registered as a plugin because the hook for the root runs outside this conftest's scope."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if Path(path).resolve() == REPO_ROOT:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    config.pluginmanager.register(RepoRootIsNotAPackage(), "ipadapter-repo-root")
    config.addinivalue_line("markers", "host: needs the real ComfyUI host")
    config.addinivalue_line("markers", "slow: builds full-size random models (minutes)")
    config.addinivalue_line("markers", "browser: drives the real editor in Chromium (tests/test_browser.py)")
    logging.getLogger("ipadapter").setLevel(logging.DEBUG)


_SERVERS: list = []  # the session's Servers, once a test has asked for them


@pytest.fixture(scope="session")
def servers(tmp_path_factory, adapter_file):
    """The real ComfyUI servers of the workflow and browser tests, one at a time (workflow_servers.py); their
    adapter files are the session's (``adapter_file``), linked, not written a second time."""
    from support.workflow_servers import make_servers

    s = make_servers(tmp_path_factory.mktemp("workflows"), adapter_file)
    _SERVERS.append(s)
    yield s
    s.close()
    _SERVERS.clear()


def pytest_runtest_setup(item):
    """A server that ran a workflow holds its models (4 GB and more for full SD1.5) in another process: stop it
    before a test that does not use it, so the in-process host tests between the browser and the workflow
    modules have the memory (CI was OOM-killed with the browser tests' server alive under them). The next
    test that needs a server starts one again (~10 s)."""
    if _SERVERS and "servers" not in item.fixturenames:
        _SERVERS[0].close()


@pytest.fixture(scope="session")
def adapter_file(tmp_path_factory):
    """Random adapter files of the real shapes, written once per session: (variant, fmt) -> Path."""
    from support.adapter_files import write_adapter

    root = tmp_path_factory.mktemp("adapters")
    cache = {}

    def get(variant: str, fmt: str = "safetensors"):
        if (variant, fmt) not in cache:
            cache[variant, fmt] = write_adapter(root, variant, fmt)
        return cache[variant, fmt]

    return get
