"""The import structure docs/architecture.md describes, checked on the source (no host, nothing imported).

- No import circle among the extension's modules, counting imports inside functions, which hide circles
  from Python but not from a reader.
- No import from a lower layer to a higher one: the shared modules, then reading files, then building the
  prompt, then applying it in the model, then training and converting, then the nodes.
- No private name (``_x``) taken from another of our modules, by import or by attribute.
"""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = "ip_adapter_core"
# the rooms of ip_adapter_core by the path of an image prompt; a module may import its own rank or lower
RANKS = {"": 0, "networks": 0, "files": 1, "faces": 1, "prompt": 2, "apply": 3, "training": 4, "convert": 4}
NODES_RANK = 5
# the modules every room may use (rank 0)
SHARED = {"errors", "input_bounds", "host", "package_info"}


def our_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "*.py"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    return [f for f in out if (REPO / f).is_file()]


def module_name(path: str) -> str:
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: str) -> list[tuple[str, list[str], int]]:
    """(absolute module, names, line) of every import statement in ``path``, at any depth. Test and bench
    code reaches the package as ``ipadapter_ext``; that prefix is dropped."""
    mod = module_name(path)
    package = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse((REPO / path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = (node.module or "").removeprefix("ipadapter_ext.")
            out.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name.removeprefix("ipadapter_ext."), [], node.lineno) for a in node.names]
    return out


def modules() -> dict[str, str]:
    """module name -> file, for the product code (the core and the nodes)."""
    return {module_name(f): f for f in our_files() if f.startswith((CORE + "/", "nodes/"))}


def edges() -> dict[str, set[str]]:
    """module -> the modules of ours it imports (``from pkg import module`` counts as the module)."""
    mods = modules()
    out = {}
    for m, f in mods.items():
        deps = set()
        for target, names, _ in imports_of(f):
            for name in names or [""]:
                full = f"{target}.{name}" if name else target
                hit = full if full in mods else target if target in mods else None
                if hit and hit != m:
                    deps.add(hit)
        out[m] = deps
    return out


def rank(module: str) -> int:
    if module.startswith("nodes"):
        return NODES_RANK
    parts = module.split(".")  # ip_adapter_core.<room>[.<module>], or a shared ip_adapter_core.<module>
    return RANKS.get(parts[1], 0) if len(parts) > 1 else 0


def test_rooms_exist_and_every_core_module_has_one():
    mods = [m for m in modules() if m.startswith(CORE + ".")]
    assert len(mods) > 30, mods
    for m in mods:
        parts = m.split(".")
        assert len(parts) == 2 or parts[1] in RANKS, f"{m}: not in a room of {sorted(RANKS)}"
        assert len(parts) > 2 or parts[1] in RANKS or parts[1] in SHARED, f"{m}: a new shared module? add it to SHARED"


def test_no_import_circle():
    graph = edges()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d.startswith(m + ".") or m.startswith(d + "."):
                continue  # a package and its own modules: the package __init__ is not a layer
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, f"import circles: {cycles}"


def test_no_import_from_a_lower_layer_to_a_higher_one():
    graph = edges()
    upward = [f"{m} (rank {rank(m)}) imports {d} (rank {rank(d)})"
              for m, deps in graph.items() for d in deps
              if not d.startswith(m + ".") and not (m + ".").startswith(d + ".") and rank(d) > rank(m)]
    assert not upward, upward


def test_the_checks_can_fail():
    """The graph sees imports inside functions and ``from package import module``."""
    graph = edges()
    assert f"{CORE}.apply.run_wrapper" in graph[f"{CORE}.apply.attention_map"]
    assert f"{CORE}.training.drop" in graph[f"{CORE}.training.comfy_train"]
    assert any(d.startswith(CORE + ".prompt.vision") for d in graph[f"{CORE}.prompt.tiles"])
    assert rank(f"{CORE}.apply.run_state") > rank(f"{CORE}.prompt.embeds") > rank(f"{CORE}.files.config")
    assert rank(f"{CORE}.convert") == rank(f"{CORE}.convert.rules") > rank(f"{CORE}.errors")


@pytest.mark.parametrize("scope", ["product", "tests and tools"])
def test_no_private_name_crosses_modules(scope):
    """``from .x import _y`` or ``x._y`` where x is another of our modules. Tests may reach a module's private
    state only through a public name, like any other caller."""
    mods = dict(modules())
    # tests, scripts and bench import each other by their bare names (tests/ and scripts/ on sys.path)
    mods.update({Path(f).stem: f for f in our_files() if f.startswith(("tests/", "scripts/")) and "/" in f})
    mods.update({module_name(f): f for f in our_files() if f.startswith("bench/")})
    files = [f for f in our_files() if (f.startswith((CORE + "/", "nodes/")) == (scope == "product"))]
    found = []
    for f in files:
        tree = ast.parse((REPO / f).read_text(encoding="utf-8"))
        bound = {}  # local name -> our module it refers to
        for target, names, line in imports_of(f):
            for name in names:
                if name.startswith("_") and not name.startswith("__") and (target in mods or target.startswith(CORE)):
                    found.append(f"{f}:{line}: imports {target}.{name}")
                if f"{target}.{name}" in mods:
                    bound[name] = f"{target}.{name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.asname and f"{(node.module or '').removeprefix('ipadapter_ext.')}.{a.name}" in mods:
                        bound[a.asname] = a.name
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods:
                        bound[a.asname or a.name] = a.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f"{f}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, found
