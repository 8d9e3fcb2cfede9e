"""The extension in the real editor: Debian's Chromium driven by Playwright (PyPI) against a real ComfyUI
server with this extension loaded and random-weight models under the workflows' file names
(workflow_servers.py, shared with test_workflows.py).

- every example workflow opens (``app.loadGraphData``, as dropping the file does) with no missing node type
  and no missing-nodes dialog, every widget holding the file's value and accepting it (a combo value among its
  options, a number inside its range), every required socket linked; a screenshot of each as it opens;
- the template browser lists the extension's workflows under its folder name;
- the node documentation panel shows our page (web/docs) for a node;
- with the locale set to zh, node titles come from locales/zh;
- the Run button's path (``app.queuePrompt``: the editor's own graph→prompt conversion) runs a workflow to
  an image, seen in the page's queue history.

Chromium is Debian's (``apt-get install chromium``, done by scripts/env.sh where it can); Playwright's own
browser download is not used. Without a Chromium the module is skipped with one line saying why.
Screenshots go to pytest's temporary folder, or to docs/images/ with IPADAPTER_SCREENSHOTS=1 (how the
committed ones were made)."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from support.workflow_servers import REPO, SIZE, WORKFLOWS, comfy_server, ui, wf

pytestmark = [pytest.mark.host, pytest.mark.browser]

# The folder name the servers load the extension under: its own in the host's custom_nodes/, else the link's.
EXTENSION = (comfy_server.extension_in_host(comfy_server.find_host()) if comfy_server.host_module().find_comfyui()
             else None) or comfy_server.LINK_NAME
SHOTS = REPO / "docs" / "images"


def chromium() -> str | None:
    for name in (os.environ.get("IPADAPTER_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    exe = chromium()
    if exe is None:
        pytest.skip("BROWSER TESTS SKIPPED: no Chromium found (scripts/env.sh installs Debian's `chromium` with "
                    "apt where it can; or set IPADAPTER_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("BROWSER TESTS SKIPPED: playwright is not installed (requirements-test.txt)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


class Editor:
    """One page of the editor; helpers that wait for what the frontend does asynchronously."""

    def __init__(self, browser, server):
        self.server = server
        self.page = browser.new_page(viewport={"width": 1920, "height": 1080})
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.open()

    def open(self):
        self.page.goto(self.server.url)
        self.page.wait_for_function("window.app && window.app.graph && window.LiteGraph "
                                    "&& Object.keys(window.LiteGraph.registered_node_types).length > 100",
                                    timeout=120_000)
        # the template browser opens on a first visit, a moment after the app is ready
        try:
            self.page.wait_for_selector(".p-dialog", timeout=5_000)
        except Exception:  # noqa: BLE001 - not a first visit
            pass
        self.close_dialogs()
        # screenshots of whole workflows are zoomed out: draw text at every zoom, not the low-detail shapes
        for key, value in (("LiteGraph.Canvas.MinFontSizeForLOD", 0), ("Comfy.Minimap.Visible", False)):
            self.page.evaluate(f"async ([k, v]) => {{ await {self.store('setting')}.set(k, v); }}", [key, value])

    def store(self, name: str) -> str:
        """JS expression for one of the frontend's Pinia stores."""
        return f"window.app.extensionManager._p._s.get({json.dumps(name)})"

    def close_dialogs(self):
        self.page.evaluate(f"() => {{ const d = {self.store('dialog')}; while (d.dialogStack.length) d.closeDialog(); }}")
        self.page.wait_for_function("document.querySelectorAll('.p-dialog').length === 0", timeout=10_000)

    def dialogs(self) -> list[str]:
        return self.page.evaluate("() => Array.from(document.querySelectorAll('.p-dialog')).map(d => d.innerText)")

    def load(self, workflow: dict, name: str):
        """As dropping the file ``name``.json on the canvas: a new tab of that name, dialogs about missing
        nodes or models enabled (the frontend's defaults)."""
        self.page.evaluate("async ([wf, name]) => { await window.app.loadGraphData(wf, true, true, name); }",
                           [workflow, name])
        time.sleep(0.5)  # dialogs about the loaded graph open after the promise resolves

    def command(self, name: str):
        self.page.evaluate("async (c) => { await window.app.extensionManager.command.execute(c); }", name)

    def graph(self) -> list[dict]:
        return self.page.evaluate("""() => window.app.graph._nodes.map(n => ({
            id: n.id, type: n.type, title: n.title,
            saved: n.serialize().widgets_values || [],
            widgets: (n.widgets || []).map(w => ({name: w.name, type: w.type, value: w.value,
                values: w.options && Array.isArray(w.options.values) ? w.options.values : null,
                min: w.options ? w.options.min : null, max: w.options ? w.options.max : null})),
            inputs: (n.inputs || []).map(i => ({name: i.name, link: i.link}))}))""")

    def shot(self, name: str, tmp: Path) -> Path:
        folder = SHOTS if os.environ.get("IPADAPTER_SCREENSHOTS") == "1" else tmp
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.jpg"
        self.page.screenshot(path=str(path), type="jpeg", quality=70)
        return path


@pytest.fixture(scope="module")
def editor(browser, servers):
    e = Editor(browser, servers.get("sd15", all_models=True))
    yield e
    e.page.close()


@pytest.fixture(scope="module")
def object_info(editor):
    return editor.server.object_info()


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= 1e-9 * max(1.0, abs(b))
    return a == b


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_opens_in_the_editor(editor, object_info, name, tmp_path):
    data = ui(name)
    editor.load(data, name)
    assert not [d for d in editor.dialogs() if "missing" in d.lower()], editor.dialogs()
    registered = set(editor.page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)"))
    nodes = editor.graph()
    assert not [n["type"] for n in nodes if n["type"] not in registered]
    by_id = {n["id"]: n for n in nodes}
    assert set(by_id) == {n["id"] for n in data["nodes"]}
    for saved in data["nodes"]:
        node = by_id[saved["id"]]
        where = f"{name}: node {saved['id']} {saved['type']}"
        values = node["saved"]  # what the editor would save again: the file's values, none changed or dropped
        assert len(values) == len(saved["widgets_values"]) and all(map(_same, values, saved["widgets_values"])), \
            (where, values, saved["widgets_values"])
        for w in node["widgets"]:
            if w["values"] is not None and w["type"] == "combo":
                assert w["value"] in w["values"], (where, w["name"], w["value"], w["values"][:10])
            if isinstance(w["value"], (int, float)) and not isinstance(w["value"], bool):
                assert w["min"] is None or w["value"] >= w["min"], (where, w)
                assert w["max"] is None or w["value"] <= w["max"], (where, w)
        spec = object_info.get(node["type"])
        if spec is None:  # frontend-only nodes (MarkdownNote)
            continue
        links = {i["name"]: i["link"] for i in node["inputs"]}
        for section, input_name, config in wf.ordered_inputs(spec):
            if section == "required" and not wf.is_widget(config):
                assert links.get(input_name) is not None, f"{where}: required input {input_name} is not linked"
    editor.command("Comfy.Canvas.FitView")
    time.sleep(0.3)
    assert editor.shot(name, tmp_path).stat().st_size > 10_000
    assert not editor.errors, editor.errors


def test_template_browser_lists_our_workflows(editor):
    editor.command("Comfy.BrowseTemplates")
    editor.page.wait_for_selector(".p-dialog", timeout=20_000)
    editor.page.get_by_text(EXTENSION, exact=True).first.click()
    editor.page.wait_for_function(f"document.querySelector('.p-dialog').innerText.includes("
                                  f"'Showing {len(WORKFLOWS)} of {len(WORKFLOWS)}')", timeout=20_000)
    text = editor.dialogs()[0]
    for name in WORKFLOWS:  # the browser titles a custom node's template by its file name
        assert name.replace("_", " ") in text or name in text, name
    editor.close_dialogs()


def test_node_docs_panel_shows_our_page(editor):
    """The node library's documentation panel for IP-Adapter Apply shows web/docs/IPAApply.md."""
    page = (REPO / "web" / "docs" / "IPAApply.md").read_text(encoding="utf-8")
    heading = next(line[3:].strip() for line in page.splitlines() if line.startswith("## "))
    editor.page.evaluate("() => window.app.extensionManager.sidebarTab.toggleSidebarTab('node-library')")
    editor.page.evaluate(f"() => {{ const d = {editor.store('nodeDef')}.nodeDefsByName['IPAApply']; "
                         f"{editor.store('nodeHelp')}.openHelp(d); }}")
    editor.page.wait_for_function(f"(h) => !{editor.store('nodeHelp')}.isLoading && "
                                  f"document.body.innerText.includes(h)", arg=heading, timeout=20_000)
    assert editor.page.evaluate(f"() => {editor.store('nodeHelp')}.error") is None
    editor.page.evaluate(f"() => {editor.store('nodeHelp')}.closeHelp()")
    editor.page.evaluate("() => window.app.extensionManager.sidebarTab.toggleSidebarTab('node-library')")


def test_zh_locale_gives_chinese_node_titles(editor, tmp_path):
    names = json.loads((REPO / "locales" / "zh" / "nodeDefs.json").read_text(encoding="utf-8"))
    setting = f"{editor.store('setting')}"
    editor.page.evaluate(f"async () => {{ await {setting}.set('Comfy.Locale', 'zh'); }}")
    try:
        editor.open()
        editor.load(ui("01_image_variation"), "01_image_variation")
        titles = editor.page.evaluate("""(ids) => ids.map(t => { const n = window.LiteGraph.createNode(t);
            return n ? n.title : null; })""", list(names))
        assert titles == [names[t]["display_name"] for t in names]
        assert any("\u4e00" <= ch <= "\u9fff" for ch in "".join(titles))
        editor.command("Comfy.Canvas.FitView")
        editor.shot("editor_zh", tmp_path)
    finally:
        editor.page.evaluate(f"async () => {{ await {setting}.set('Comfy.Locale', 'en'); }}")
        editor.open()


def test_run_button_queues_the_workflow_and_an_image_comes_back(editor):
    """01_image_variation at SIZE×SIZE, 2 steps, queued with app.queuePrompt (the Run button's path)."""
    editor.load(ui("01_image_variation"), "01_image_variation")
    editor.page.evaluate("""(size) => { for (const n of window.app.graph._nodes) for (const w of n.widgets || []) {
        if (n.type === 'KSampler' && w.name === 'steps') w.value = 2;
        if (n.type === 'EmptyLatentImage' && (w.name === 'width' || w.name === 'height')) w.value = size;
        if (n.type === 'SaveImage' && w.name === 'filename_prefix') w.value = 'browser/run_button'; } }""", SIZE)
    before = set(editor.server.get("/history"))
    editor.page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    deadline = time.time() + 900
    entry = None
    while time.time() < deadline and entry is None:
        time.sleep(2)
        new = {k: v for k, v in editor.server.get("/history").items() if k not in before}
        entry = next(iter(new.values()), None) if new and any(
            v.get("status", {}).get("completed") or v.get("status", {}).get("status_str") == "error"
            for v in new.values()) else None
    assert entry is not None, "the queued workflow did not finish in 15 minutes"
    assert entry["status"].get("status_str") == "success", entry["status"]
    images = [i for out in entry["outputs"].values() for i in out.get("images", [])]
    assert len(images) == 1 and images[0]["filename"].startswith("run_button")
    assert (editor.server.output_dir / images[0]["subfolder"] / images[0]["filename"]).is_file()
    # the page's own queue store sees the finished job
    editor.page.wait_for_function(f"() => {editor.store('queue')}.historyTasks.length > 0", timeout=30_000)
