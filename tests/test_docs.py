"""The README and the guides in docs/ stay true to the repository: every repository path, link and anchor
they name exists, every node id they name is a real one, the README stays a front door (under 250 lines,
the two Quick start commands, every node with its in-app page, every guide linked).

Host-free and quick: it reads text only. Node ids come from the ``node_id="..."`` of nodes/*.py and, for
ComfyUI_IPAdapter_plus's ids that the conversion guide names, from the keys of ``NODES`` in
ip_adapter_core/convert/plus_nodes.py and flux_nodes.py, parsed without importing them. The diffusers snippet of
docs/training.md runs in tests/test_train_script.py, beside the trained file it loads."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from support.package_alias import REPO_ROOT

README = REPO_ROOT / "README.md"
GUIDES = sorted((REPO_ROOT / "docs").glob("*.md"))
DOCS = [README, *GUIDES]
MAX_README_LINES = 250

# Top-level folders of this repository. `models/` is left out on purpose: in the docs it mostly means
# ComfyUI's models folder (`models/ipadapter`) or h94/IP-Adapter's (`models/image_encoder`), not ours.
TOP = ("scripts", "bench", "tests", "workflows", "docs", "web", "ip_adapter_core", "nodes", "locales", r"\.ci")
# A repository path anywhere in the text (backticks, links, code blocks, prose); not when it continues
# another path (`custom_nodes/*/workflows/`, `web/docs/` seen from `docs/`, URLs).
REPO_PATH = re.compile(r"(?<![\w./~*<>-])((?:%s)/[\w./-]*)" % "|".join(TOP))
TEST_NAME = re.compile(r"(?<![\w./-])(test_\w+\.py)\b")        # `test_tiles.py`: a file in tests/
WORKFLOW_NAME = re.compile(r"(?<![\w./-])(\d\d_\w+\.json)\b")   # `01_image_variation.json`: in workflows/
TOP_FILE = re.compile(r"(?<![\w./-])(LICENSE|pyproject\.toml|requirements[\w-]*\.txt)\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")
NODE_ID = re.compile(r"\bIPA[A-Za-z]+\b")
PLACEHOLDER = "<*…{"  # `web/docs/<NodeId>.md`, `examples/*.json`: patterns, not paths


def _name(doc: Path) -> str:
    return str(doc.relative_to(REPO_ROOT))


def _without_code(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a bash block is not a heading)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation (backticks, dashes, dots) dropped, spaces to
    hyphens, a repeated heading numbered -1, -2, …"""
    found, count = set(), {}
    for line in _without_code(doc.read_text(encoding="utf-8")):
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = count.get(slug, 0)
            count[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def _real_node_ids() -> set[str]:
    ids = set()
    for path in sorted((REPO_ROOT / "nodes").glob("*.py")):
        ids |= set(re.findall(r"""node_id\s*=\s*["'](\w+)["']""", path.read_text(encoding="utf-8")))
    return ids


def _their_node_ids() -> set[str]:
    """The node ids the converter knows, as its schema files define them: ComfyUI_IPAdapter_plus's (the keys of
    plus_nodes.NODES and of v1_nodes.V1_NODES, its first generation) and the Flux packs' (flux_nodes.FLUX_NODES,
    its keys and the ids assigned after it)."""
    ids = set()
    for name, table in (("plus_nodes.py", "NODES"), ("v1_nodes.py", "V1_NODES"), ("flux_nodes.py", "FLUX_NODES")):
        tree = ast.parse((REPO_ROOT / "ip_adapter_core" / "convert" / name).read_text(encoding="utf-8"))
        found = set()
        for node in tree.body:
            if not isinstance(node, ast.Assign):
                continue
            for t in node.targets:
                if getattr(t, "id", None) == table and isinstance(node.value, ast.Dict):
                    found |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
                elif isinstance(t, ast.Subscript) and getattr(t.value, "id", None) == table \
                        and isinstance(t.slice, ast.Constant):
                    found.add(t.slice.value)
        assert found, f"ip_adapter_core/convert/{name}: no {table} dict found"
        ids |= found
    return ids


def _paths_named(doc: Path) -> set[str]:
    """Repository-relative paths the text names, placeholders left out."""
    text = doc.read_text(encoding="utf-8")
    found = set()
    for m in REPO_PATH.finditer(text):
        if text[m.end():m.end() + 1] and text[m.end()] in PLACEHOLDER:
            continue
        found.add(m.group(1).rstrip(".-"))
    found |= {f"tests/{n}" for n in TEST_NAME.findall(text)}
    found |= {f"workflows/{n}" for n in WORKFLOW_NAME.findall(text)}
    found |= set(TOP_FILE.findall(text))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_every_repository_path_named_exists(doc):
    text = doc.read_text(encoding="utf-8")
    missing = sorted(p for p in _paths_named(doc) if not (REPO_ROOT / p).exists())
    # `file.py::test_name`: the test function too
    for path, func in re.findall(r"(tests/\w+\.py)::(\w+)", text):
        src = REPO_ROOT / path
        if src.exists() and not re.search(rf"^def {func}\(", src.read_text(encoding="utf-8"), re.M):
            missing.append(f"{path}::{func}")
    assert not missing, f"{_name(doc)} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_every_link_and_anchor_resolves(doc):
    broken = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{_name(doc)} has broken links: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_every_node_id_named_is_real(doc):
    ours, theirs = _real_node_ids(), _their_node_ids()
    assert len(ours) >= 20, f"node ids not found in nodes/*.py (found {sorted(ours)})"
    named = set(NODE_ID.findall(doc.read_text(encoding="utf-8")))
    unknown = sorted(named - ours - theirs)
    assert not unknown, (f"{_name(doc)} names node ids that are neither ours (nodes/*.py) nor "
                         f"the converter's (ip_adapter_core/convert/plus_nodes.py, v1_nodes.py, flux_nodes.py): {unknown}")


def test_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) < MAX_README_LINES, (
        f"README.md has {len(lines)} lines (the limit is {MAX_README_LINES}): move the detail into docs/")
    # the two commands .ci/run and tests/test_install_layout.py stand for
    quick = text.split("## Quick start", 1)[-1].split("\n## ", 1)[0]
    assert "bash scripts/start.sh" in quick and "bash scripts/test.sh" in quick, "README › Quick start lost a command"
    # every node at a glance, with its in-app page
    unlisted = sorted(i for i in _real_node_ids() if f"(web/docs/{i}.md)" not in text)
    assert not unlisted, f"README.md's node table lacks these nodes (or their web/docs page link): {unlisted}"


def test_every_guide_is_linked_from_the_readme():
    text = README.read_text(encoding="utf-8")
    assert GUIDES, "docs/ holds no guides"
    unlinked = [g.name for g in GUIDES if f"](docs/{g.name})" not in text and f"](docs/{g.name}#" not in text]
    assert not unlinked, f"docs/ guides the README does not link: {unlinked}"
