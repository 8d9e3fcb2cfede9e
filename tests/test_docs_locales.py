"""Node documentation (web/docs) and Chinese translations (locales/zh) against the node schemas.

What the frontend does with these files (comfyui_frontend_package 1.35):
- help page: GET /extensions/<folder>/docs/<NodeId>/<locale>.md, falling back to docs/<NodeId>.md;
  ComfyUI serves <folder>/<WEB_DIRECTORY> as /extensions/<folder>/. Relative image paths in either
  page are rewritten against /extensions/<folder>/docs/, so `images/x.svg` means web/docs/images/x.svg
  in the English page *and* in docs/<NodeId>/zh.md; they are resolved that way here.
- translations: ComfyUI's CustomNodeManager.build_translations merges locales/<lang>/main.json with
  nodeDefs.json (under "nodeDefs"); the frontend looks up nodeDefs.<id>.display_name / description /
  inputs.<input>.name / inputs.<input>.tooltip / outputs.<index>.name / outputs.<index>.tooltip, with
  '.' in ids replaced by '_', and nodeCategories.<segment> for each segment of a category. Combo option
  values are not translated by the frontend, so nodeDefs holds none.
"""
from __future__ import annotations

import ast
import json
import re

import pytest

from conftest import REPO_ROOT

DOCS = REPO_ROOT / "web" / "docs"
LOCALE = REPO_ROOT / "locales" / "zh"
NODE_KEYS = {"display_name", "description", "inputs", "outputs"}
MIN_LINES = 15  # non-empty lines for a page to count as documentation, not a stub

# Node ids read from the source, so the page tests run (and name the node) without the host;
# test_node_ids_match_the_registered_nodes checks this list against NODES inside the host.
NODE_IDS = sorted({m for f in (REPO_ROOT / "nodes").glob("*.py")
                   for m in re.findall(r'node_id="(\w+)"', f.read_text(encoding="utf-8"))})
IMAGE_REF = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|<(?:img|source|video)[^>]*\ssrc=['\"]([^'\"]+)['\"]",
                       re.IGNORECASE)


def _key(name: str) -> str:
    """The frontend's normalizeI18nKey."""
    return name.replace(".", "_")


def _pages(node_id: str):
    return {"en": DOCS / f"{node_id}.md", "zh": DOCS / node_id / "zh.md"}


def _mentions(text: str, name: str) -> bool:
    """``name`` in backticks or bold (``**name**``), as an input id is written in the pages."""
    return re.search(rf"`{re.escape(name)}`|\*\*{re.escape(name)}\*\*", text) is not None


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def schemas():
    from ipadapter_ext.ip_adapter_core.files.loader import register_model_folder

    register_model_folder()  # IPALoader's schema lists models/ipadapter (ComfyUI's __init__ does this)
    from ipadapter_ext.nodes import NODES

    return {s.node_id: s for s in (n.GET_SCHEMA() for n in NODES)}


@pytest.fixture(scope="module")
def node_defs():
    return _json(LOCALE / "nodeDefs.json")


# --- files, without the host ------------------------------------------------------------------------

def test_node_ids_found_in_source():
    assert len(NODE_IDS) >= 20, NODE_IDS


@pytest.mark.parametrize("name", ["main.json", "nodeDefs.json"])
def test_locale_files_parse(name):
    data = _json(LOCALE / name)
    assert isinstance(data, dict) and data, f"locales/zh/{name} is empty or not an object"

    def strings(value, where):
        if isinstance(value, dict):
            for k, v in value.items():
                strings(v, f"{where}.{k}")
        else:
            assert isinstance(value, str) and value.strip(), f"locales/zh/{name}: {where} is {value!r}"

    strings(data, name)


def test_web_directory_points_at_the_docs():
    tree = ast.parse((REPO_ROOT / "__init__.py").read_text(encoding="utf-8"))
    values = [node.value.value for node in tree.body if isinstance(node, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "WEB_DIRECTORY" for t in node.targets)
              and isinstance(node.value, ast.Constant)]
    assert values, "__init__.py sets no WEB_DIRECTORY: ComfyUI would not serve web/docs"
    web = (REPO_ROOT / values[-1]).resolve()
    assert web == (REPO_ROOT / "web").resolve(), f"WEB_DIRECTORY = {values[-1]!r}"
    assert (web / "docs").is_dir()


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("node_id", NODE_IDS)
def test_page_exists_with_a_title(node_id, lang):
    page = _pages(node_id)[lang]
    assert page.is_file(), f"missing {page.relative_to(REPO_ROOT)}"
    text = page.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and lines[0].startswith("# "), f"{page.relative_to(REPO_ROOT)}: no '# ' title on its first line"
    assert len(lines) >= MIN_LINES, f"{page.relative_to(REPO_ROOT)}: only {len(lines)} lines"


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("node_id", NODE_IDS)
def test_page_images_exist(node_id, lang):
    page = _pages(node_id)[lang]
    if not page.is_file():
        pytest.skip(f"no {page.relative_to(REPO_ROOT)} (test_page_exists_with_a_title fails for it)")
    refs = [a or b for a, b in IMAGE_REF.findall(page.read_text(encoding="utf-8"))]
    missing = []
    for ref in refs:
        if re.match(r"^(https?:)?//", ref) or ref.startswith("data:"):
            continue
        # the frontend resolves relative media against .../docs/ for both pages; '/...' is the server root
        if ref.startswith("/") or not (DOCS / ref.split("#")[0].split("?")[0]).is_file():
            missing.append(ref)
    assert not missing, f"{page.relative_to(REPO_ROOT)} references missing images: {missing}"


# --- against the node schemas, inside the host ------------------------------------------------------

@pytest.mark.host
def test_node_ids_match_the_registered_nodes(schemas):
    assert sorted(schemas) == NODE_IDS


@pytest.mark.host
@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("node_id", NODE_IDS)
def test_page_names_every_input(schemas, node_id, lang):
    page = _pages(node_id)[lang]
    if not page.is_file():
        pytest.skip(f"no {page.relative_to(REPO_ROOT)} (test_page_exists_with_a_title fails for it)")
    text = page.read_text(encoding="utf-8")
    missing = [i.id for i in schemas[node_id].inputs if not _mentions(text, i.id)]
    assert not missing, f"{page.relative_to(REPO_ROOT)} does not name these inputs (`id` or **id**): {missing}"


@pytest.mark.host
@pytest.mark.parametrize("node_id", NODE_IDS)
def test_node_defs_cover_the_schema(schemas, node_defs, node_id):
    schema = schemas[node_id]
    entry = node_defs.get(_key(node_id))
    assert isinstance(entry, dict), f"nodeDefs.json has no entry for {node_id}"
    assert set(entry) <= NODE_KEYS, f"{node_id}: unknown keys {sorted(set(entry) - NODE_KEYS)}"
    for field in ("display_name", "description"):
        assert isinstance(entry.get(field), str) and entry[field].strip(), f"{node_id}: no {field}"

    inputs = entry.get("inputs", {})
    want = {_key(i.id) for i in schema.inputs}
    assert not set(inputs) - want, f"{node_id}: translations of inputs it does not have: {sorted(set(inputs) - want)}"
    for key in sorted(want):
        got = inputs.get(key)
        assert isinstance(got, dict), f"{node_id}: input {key} is not translated"
        assert set(got) <= {"name", "tooltip"}, f"{node_id}.{key}: unknown keys {sorted(set(got) - {'name', 'tooltip'})}"
        for field in ("name", "tooltip"):
            assert isinstance(got.get(field), str) and got[field].strip(), f"{node_id}.{key}: no {field}"

    outputs = entry.get("outputs", {})
    want_out = {str(i) for i in range(len(schema.outputs))}
    assert set(outputs) == want_out, f"{node_id}: outputs {sorted(outputs)}, schema has {sorted(want_out)}"
    for key in sorted(want_out):
        got = outputs[key]
        assert isinstance(got, dict) and isinstance(got.get("name"), str) and got["name"].strip(), \
            f"{node_id}: output {key} has no name"
        assert set(got) <= {"name", "tooltip"}, f"{node_id}: output {key}: unknown keys"


@pytest.mark.host
def test_node_defs_hold_no_stale_nodes(schemas, node_defs):
    stale = sorted(set(node_defs) - {_key(n) for n in schemas})
    assert not stale, f"nodeDefs.json translates nodes that do not exist: {stale}"


@pytest.mark.host
def test_main_json_covers_the_categories_and_only_our_types(schemas):
    main = _json(LOCALE / "main.json")
    assert "nodeDefs" not in main, "nodeDefs belong in nodeDefs.json (build_translations overwrites the key)"
    segments = {seg for s in schemas.values() for seg in s.category.split("/")}
    categories = main.get("nodeCategories", {})
    assert segments <= set(categories), f"nodeCategories lacks {sorted(segments - set(categories))}"
    ours = {getattr(x, "io_type", None) for s in schemas.values() for x in (*s.inputs, *s.outputs)}
    stale = sorted(set(main.get("dataTypes", {})) - ours)
    assert not stale, f"dataTypes translates types no node of this extension uses: {stale}"


@pytest.mark.host
def test_comfyui_loads_the_translations_and_the_web_directory(tmp_path, monkeypatch, schemas):
    """The host's own loaders: build_translations finds locales/zh, load_custom_node registers web/.
    The extension is loaded under a second name here; the host's registries are restored after."""
    import asyncio
    import sys
    from pathlib import Path

    import folder_paths
    import nodes

    from conftest import HOST

    # ComfyUI's top-level package `utils` (utils/json_util.py): with ComfyUI/comfy on sys.path a bare
    # `import utils` can find comfy/utils.py instead, so import it from the host root (restored after)
    if not hasattr(sys.modules.get("utils"), "__path__"):
        monkeypatch.delitem(sys.modules, "utils", raising=False)
        monkeypatch.syspath_prepend(str(HOST))
    from app.custom_node_manager import CustomNodeManager

    (tmp_path / "comfyui-ipadapter").symlink_to(REPO_ROOT, target_is_directory=True)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "custom_nodes", ([str(tmp_path)], set()))
    zh = CustomNodeManager().build_translations()["zh"]
    assert set(zh["nodeDefs"]) == set(schemas)
    assert zh["nodeDefs"]["IPALoader"]["inputs"]["ipadapter_file"]["name"]
    assert "ipadapter" in zh["nodeCategories"]

    for registry in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "EXTENSION_WEB_DIRS", "LOADED_MODULE_DIRS"):
        if hasattr(nodes, registry):
            monkeypatch.setattr(nodes, registry, dict(getattr(nodes, registry)))
    before = set(sys.modules)
    try:
        assert asyncio.run(nodes.load_custom_node(str(tmp_path / "comfyui-ipadapter")))
        web = nodes.EXTENSION_WEB_DIRS.get("comfyui-ipadapter")
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]
    assert web is not None, "ComfyUI registered no web directory for the extension (WEB_DIRECTORY)"
    assert Path(web).resolve() == (REPO_ROOT / "web").resolve()
    assert (Path(web) / "docs").is_dir()
