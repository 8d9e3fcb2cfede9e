"""ComfyUI_IPAdapter_plus files in the real editor (Chromium, see test_browser.py): converted on load.

- A file of theirs (built from their node schemas, plus_graphs.py) opens with our nodes, no missing-node
  dialog and one notice naming what was converted; so does their own ipadapter_style_composition.json, whose
  screenshot goes to docs/images/convert_on_load.jpg (with IPADAPTER_SCREENSHOTS=1).
- An API-format file of theirs (``app.loadApiJson``) opens converted too.
- The converted graph runs from the Run button's path (``app.queuePrompt``: the editor's own conversion).
- Nodes that cannot be converted (a preset with no equivalent here) are named in the notice and stay; only they are
  missing.
- A file the converter refuses: the notice says so and gives the server's reason.
- With their extension installed (stood in for by registering one of its node types in the page), loading
  changes nothing, and the menu command converts the open graph.
"""
from __future__ import annotations

import json
import time

import pytest

from ipadapter_ext.ip_adapter_core.convert import THEIR_NODE_IDS
from support.plus_graphs import LATER_PRESET, MODEL, SCENARIOS, staying_loader, theirs, to_ui
# the module-scoped fixtures of test_browser.py: one Chromium and one editor page for this module too
from test_browser import SIZE, browser, editor, object_info  # noqa: F401
from test_convert import their_examples

pytestmark = [pytest.mark.host, pytest.mark.browser]
COMMAND = "IPAdapter.ConvertPlusWorkflow"


FILE_WIDGETS = {"ipadapter_file"}


def notices(editor) -> list[str]:
    return editor.page.evaluate("() => Array.from(document.querySelectorAll('.p-toast-message'))"
                                ".map(t => t.innerText)")


def clear_notices(editor):
    editor.page.evaluate(f"() => {editor.store('toast')}.removeAll?.()")
    editor.page.evaluate("() => document.querySelectorAll('.p-toast-message').forEach(t => t.remove())")


def wait_notice(editor, text, timeout=30) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [n for n in notices(editor) if text in n]
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"no notice with {text!r}; notices: {notices(editor)}")


def types(editor) -> set[str]:
    return {n["type"] for n in editor.graph()}


def test_their_file_opens_converted_with_one_notice(editor, object_info, tmp_path):
    their, _ = SCENARIOS["advanced"]()
    clear_notices(editor)
    editor.load(to_ui(their, object_info), "plus_advanced")
    found = wait_notice(editor, "IP-Adapter: workflow converted")
    assert len(found) == 1 and "Converted 3 ComfyUI_IPAdapter_plus node(s) into 7" in found[0], found
    assert editor.dialogs() == [], editor.dialogs()
    present = types(editor)
    assert not present & set(THEIR_NODE_IDS), present
    assert {"IPALoader", "IPAPrepareReference", "IPAEncodeImage", "IPAProject", "IPAWeight", "IPAApply"} <= present
    # every required socket of our nodes is linked and every widget holds an accepted value
    for node in editor.graph():
        if node["type"].startswith("IPA"):
            for w in node["widgets"]:
                if w["values"]:
                    assert w["value"] in w["values"], (node["type"], w)
    assert not editor.errors, editor.errors


def test_their_own_example_opens_converted(editor, tmp_path):
    """Their examples/ipadapter_style_composition.json (SDXL style and composition), as they ship it: the
    screenshot in docs/converting.md. Needs their examples (IPADAPTER_PLUS_EXAMPLES, see test_convert.py)."""
    folder = their_examples()
    if folder is None:
        pytest.skip("THEIR EXAMPLE NOT OPENED: set IPADAPTER_PLUS_EXAMPLES (see test_convert.py)")
    workflow = json.loads((folder / "ipadapter_style_composition.json").read_text(encoding="utf-8"))
    clear_notices(editor)
    editor.load(workflow, "ipadapter_style_composition")
    found = wait_notice(editor, "IP-Adapter: workflow converted")
    assert "Converted 2 ComfyUI_IPAdapter_plus node(s)" in found[0], found
    present = types(editor)
    assert not present & set(THEIR_NODE_IDS) and {"IPAUnifiedLoader", "IPAApply"} <= present
    # the chain that replaced their style-and-composition node has its group, titled after it
    groups = editor.page.evaluate("() => (window.app.graph.groups || window.app.graph._groups || [])"
                                  ".map(g => g.title)")
    assert "IPAdapterStyleComposition" in groups, groups
    # the only dialog may be about its model files, which this test server does not have
    assert not [d for d in editor.dialogs() if "missing" in d.lower() and "node" in d.lower()], editor.dialogs()
    editor.close_dialogs()
    editor.command("Comfy.Canvas.FitView")
    time.sleep(0.5)
    assert editor.shot("convert_on_load", tmp_path).is_file()


def test_their_api_prompt_opens_converted(editor):
    """An API-format file of theirs (the editor loads those through app.loadApiJson, which would refuse it)."""
    their, _ = SCENARIOS["embeds"]()
    clear_notices(editor)
    editor.page.evaluate("async (p) => { await window.app.loadApiJson(p, 'plus_embeds_api'); }", their)
    found = wait_notice(editor, "IP-Adapter: workflow converted")
    assert "Converted 7 ComfyUI_IPAdapter_plus node(s) into 10" in found[0], found
    time.sleep(0.5)
    assert editor.dialogs() == [], editor.dialogs()
    present = types(editor)
    assert not present & set(THEIR_NODE_IDS) and {"IPACombineFeatures", "IPANoiseNegative", "IPAApply"} <= present


def test_the_converted_graph_runs_from_the_run_button(editor, object_info):
    their, _ = SCENARIOS["simple_old"]()
    editor.load(to_ui(their, object_info), "plus_simple")
    wait_notice(editor, "IP-Adapter: workflow converted")
    editor.page.evaluate("""(size) => { for (const n of window.app.graph._nodes) for (const w of n.widgets || []) {
        if (n.type === 'SaveImage' && w.name === 'filename_prefix') w.value = 'browser/plus_run'; } }""", SIZE)
    before = set(editor.server.get("/history"))
    editor.page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    deadline, entry = time.time() + 900, None
    while time.time() < deadline and entry is None:
        time.sleep(2)
        done = [v for k, v in editor.server.get("/history").items() if k not in before
                and (v.get("status", {}).get("completed") or v.get("status", {}).get("status_str") == "error")]
        entry = done[0] if done else None
    assert entry is not None, "the queued workflow did not finish in 15 minutes"
    assert entry["status"].get("status_str") == "success", entry["status"]
    classes = {node["class_type"] for node in entry["prompt"][2].values()}
    assert "IPAApplySimple" in classes and not classes & set(THEIR_NODE_IDS)


def test_unconvertible_nodes_stay_and_are_named(editor, object_info):
    their, _ = SCENARIOS["advanced"]()
    their["31"] = staying_loader(MODEL)
    their["32"] = theirs("IPAdapterFaceID", {}, {"model": ["31", 0], "ipadapter": ["31", 1], "image": ["5", 0]})
    their["33"] = {"class_type": "PreviewImage", "inputs": {"images": ["32", 1]}}
    clear_notices(editor)
    editor.load(to_ui(their, object_info), "plus_later_preset")
    found = wait_notice(editor, "IP-Adapter: workflow converted in part")
    assert "IPAdapterFaceID" in found[0] and LATER_PRESET in found[0], found
    dialogs = editor.dialogs()
    assert len(dialogs) == 1 and "IPAdapterFaceID" in dialogs[0] and "IPAdapterAdvanced" not in dialogs[0]
    editor.close_dialogs()
    assert {"IPAdapterFaceID", "IPAdapterUnifiedLoader"} <= types(editor)
    assert "IPAdapterAdvanced" not in types(editor)


def test_a_refused_file_says_so_and_why(editor, object_info):
    """A file the converter refuses (HTTP 4xx, here answered by a stand-in for the route, since the editor
    would not load a file the real route refuses for its links): the notice says it was refused and shows
    the server's reason; the file's nodes stay as they are."""
    their, _ = SCENARIOS["advanced"]()
    reason = "link 7: origin_slot 1000000000, but node #3 has 1 output(s)"
    editor.page.route("**/ipadapter/convert", lambda route: route.fulfill(
        status=400, content_type="application/json", body=json.dumps({"error": reason})))
    try:
        clear_notices(editor)
        editor.load(to_ui(their, object_info), "plus_refused")
        found = wait_notice(editor, "IP-Adapter: file refused by the converter")
    finally:
        editor.page.unroute("**/ipadapter/convert")
    assert "HTTP 400" in found[0] and reason in found[0], found
    editor.close_dialogs()
    assert "IPAdapterAdvanced" in types(editor)


def test_with_their_extension_installed_only_the_command_converts(editor, object_info):
    """Last in the module: it registers a stand-in node type, removed at the end."""
    their, _ = SCENARIOS["advanced"]()
    menu = editor.page.evaluate(f"""() => {{
        const cmds = {editor.store('command')}.commands.map(c => c.id);
        return cmds.includes({COMMAND!r}); }}""")
    assert menu, "the command is not registered"
    paths = editor.page.evaluate(f"""() => {{
        const walk = (items, path) => items.flatMap(i => [path + '/' + (i.label || ''),
            ...(i.items ? walk(i.items, path + '/' + (i.label || '')) : [])]);
        return walk({editor.store('menuItem')}.menuItems, ''); }}""")
    assert "/Extensions/IP-Adapter/Convert ComfyUI_IPAdapter_plus nodes to IP-Adapter nodes" in paths, paths
    editor.page.evaluate("""() => { for (const t of ['IPAdapterAdvanced', 'IPAdapterModelLoader',
            'PrepImageForClipVision']) {
        class StandIn extends window.LiteGraph.LGraphNode {}
        window.LiteGraph.registerNodeType(t, StandIn); } }""")
    try:
        clear_notices(editor)
        editor.load(to_ui(their, object_info), "plus_installed")
        time.sleep(2)
        assert not [n for n in notices(editor) if "IP-Adapter" in n]
        assert "IPAdapterAdvanced" in types(editor)
        editor.command(COMMAND)
        wait_notice(editor, "IP-Adapter: workflow converted")
        assert "IPAdapterAdvanced" not in types(editor) and "IPAApply" in types(editor)
    finally:
        editor.page.evaluate("""() => { for (const t of ['IPAdapterAdvanced', 'IPAdapterModelLoader',
            'PrepImageForClipVision']) delete window.LiteGraph.registered_node_types[t]; }""")


def test_their_examples_open_and_make_a_prompt(editor):
    """Every example of theirs that converts fully: opened as they ship it, converted on load, and turned into
    a prompt by the editor (``app.graphToPrompt``, what the Run button sends) with only our and core nodes
    and the other packs' nodes the file uses; a missing-node dialog names only those other packs' nodes."""
    from test_convert import EXAMPLES

    folder = their_examples()
    if folder is None:
        pytest.skip("THEIR EXAMPLES NOT OPENED: set IPADAPTER_PLUS_EXAMPLES (see test_convert.py)")
    registered = set(editor.page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)"))
    for name, status in sorted(EXAMPLES.items()):
        if status != "fully":
            continue
        workflow = json.loads((folder / name).read_text(encoding="utf-8"))
        others = {n["type"] for n in workflow["nodes"]} - registered - set(THEIR_NODE_IDS)
        clear_notices(editor)
        editor.load(workflow, name[:-5])
        wait_notice(editor, "IP-Adapter: workflow converted")
        for dialog in editor.dialogs():
            if "missing" in dialog.lower():
                assert others and not any(t in dialog for t in THEIR_NODE_IDS), (name, dialog)
        editor.close_dialogs()
        present = types(editor)
        assert not present & set(THEIR_NODE_IDS), (name, present)
        prompt = editor.page.evaluate("async () => (await window.app.graphToPrompt()).output")
        classes = {v["class_type"] for v in prompt.values()}
        if others:   # the other packs' nodes are missing here: the editor sends them without a class
            classes.discard(None)
        assert classes and not classes & set(THEIR_NODE_IDS), (name, classes)
        assert classes <= registered | others, (name, classes - registered - others)
        for node in editor.graph():
            for w in node["widgets"]:
                # a file name is theirs, kept as it is (this server has only the files our workflows use)
                if node["type"].startswith("IPA") and w["values"] and w["name"] not in FILE_WIDGETS:
                    assert w["value"] in w["values"], (name, node["type"], w)
    assert not editor.errors, editor.errors
