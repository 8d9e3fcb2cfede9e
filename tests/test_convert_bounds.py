"""The converter is bounded (issue 19, item 3): on hostile or malformed workflows, through ``convert()`` and the
command line (the route: test_convert_route.py).

- Links that loop (a Combine Params fed by itself, 2- and 3-node loops, a Reroute fed by itself) are refused
  with a ConversionError that names the nodes.
- Malformed nodes and links of either format are refused with a ConversionError that names them, never a
  TypeError / KeyError / IndexError; an origin_slot of 10^9 allocates nothing (tracemalloc).
- Chains of 3,000 nodes (Reroutes, their nodes, ids descending) convert without a RecursionError.
- Work grows linearly: a Combine Params chain 30 deep, each fed twice by the one before (2^30 entries), is
  read once per node; the layout of a stack of their nodes, nodes among foreign ones and the types along a
  Reroute chain cost about twice the work for twice the nodes. Work is counted as lines the converter runs
  (``work``), not as time, so the checks do not depend on the machine.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from ipadapter_ext.bench.convert_scale import BUILD, UIGraph
from ipadapter_ext.ip_adapter_core.convert import ConversionError, convert
from ipadapter_ext.ip_adapter_core.convert.limits import MAX_BYTES, MAX_PARAM_ENTRIES
from plus_graphs import core, theirs

REPO = Path(__file__).resolve().parent.parent
CONVERTER = str(REPO / "ip_adapter_core" / "convert")
MODEL = ["1", 0]


class OverBudget(BaseException):
    """Not an Exception: the converter turns a rule's exceptions into "not converted" and goes on."""


def work(fn, budget: int = 50_000_000) -> int:
    """The number of lines of ip_adapter_core/convert that ``fn()`` runs (sys.settrace), a measure of work
    that does not depend on the machine's speed; over ``budget`` it stops with OverBudget, so a conversion
    that would run for hours (exponential) fails at once."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
            if count > budget:
                raise OverBudget(f"more than {budget:,} lines")
        return local

    def calls(frame, event, arg):
        return local if frame.f_code.co_filename.startswith(CONVERTER) else None

    sys.settrace(calls)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


# ---------------------------------------------------------------------------- graphs

def api_graph() -> dict:
    g = core("v1-5-pruned-emaonly.safetensors", MODEL)
    g["20"] = theirs("IPAdapterUnifiedLoader", {"preset": "PLUS (high strength)"}, {"model": MODEL})
    return g


def from_params(g: dict, params) -> dict:
    g["40"] = theirs("IPAdapterFromParams", {}, {"model": ["20", 0], "ipadapter": ["20", 1],
                                                  "ipadapter_params": params})
    g["7"]["inputs"]["model"] = ["40", 0]
    return g


def combine(*sources) -> dict:
    return theirs("IPAdapterCombineParams", {}, {f"params_{i + 1}": s for i, s in enumerate(sources)})


def doubling_chain(depth: int) -> dict:
    """Regional Conditioning → ``depth`` Combine Params, each fed twice by the one before: 2^depth entries."""
    g = api_graph()
    g["100"] = theirs("IPAdapterRegionalConditioning", {}, {"image": ["5", 0]})
    prev = "100"
    for k in range(depth):
        g[str(101 + k)] = combine([prev, 0], [prev, 0])
        prev = str(101 + k)
    return from_params(g, [prev, 0])


def ui_graph() -> dict:
    """Their loader → their IPAdapterAdvanced → a sampler, in the editor's format."""
    g = UIGraph()
    g.core()
    apply = g.advanced(10, (300, 0), 1)
    g.link(apply, 0, 4, 0, "MODEL")
    return g.workflow()


def api_chain(n: int) -> dict:
    """``n`` IPAdapterAdvanced chained by MODEL, ids descending (the order that made the old walk recurse)."""
    g = api_graph()
    prev = MODEL
    for k in range(n):
        nid = str(100_000 - k)
        g[nid] = theirs("IPAdapterAdvanced", {}, {"model": prev, "ipadapter": ["20", 1], "image": ["5", 0]})
        prev = [nid, 0]
    g["7"]["inputs"]["model"] = prev
    return g


def ui_chain(n: int) -> dict:
    g = UIGraph()
    g.core()
    prev = 1
    for k in range(n):
        prev = g.advanced(100_000 - k, (300 * k, 0), prev)
    g.link(prev, 0, 4, 0, "MODEL")
    return g.workflow()


# ---------------------------------------------------------------------------- loops

LOOPS = {
    "combine params fed by itself": (lambda: from_params(dict(api_graph(), **{"22": combine(["22", 0])}), ["22", 0]),
                                     ["#22"]),
    "two combine params": (lambda: from_params(dict(api_graph(), **{"22": combine(["23", 0]),
                                                                    "23": combine(["22", 0])}), ["22", 0]),
                           ["#22", "#23"]),
    "three nodes": (lambda: from_params(dict(api_graph(), **{"22": combine(["24", 0]), "23": combine(["22", 0]),
                                                             "24": combine(["23", 0])}), ["22", 0]),
                    ["#22", "#23", "#24"]),
    "two apply nodes": (lambda: dict(api_graph(), **{
        "21": theirs("IPAdapterAdvanced", {}, {"model": ["22", 0], "ipadapter": ["20", 1], "image": ["5", 0]}),
        "22": theirs("IPAdapterAdvanced", {}, {"model": ["21", 0], "ipadapter": ["20", 1], "image": ["5", 0]})}),
                        ["#21", "#22"]),
}


def ui_reroute_loop() -> dict:
    wf = ui_graph()
    wf["nodes"].append({"id": 50, "type": "Reroute", "pos": [0, 0], "inputs": [{"name": "", "type": "*", "link": 90}],
                        "outputs": [{"name": "", "type": "*", "links": [90]}]})
    wf["links"].append([90, 50, 0, 50, 0, "*"])
    return wf


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_loops_are_refused_naming_their_nodes(name):
    make, names = LOOPS[name]
    with pytest.raises(ConversionError, match="loop") as err:
        convert(make())
    assert all(n in str(err.value) for n in names), err.value
    assert "IPAdapter" in str(err.value)          # with the nodes' types


def test_a_reroute_fed_by_itself_is_refused():
    with pytest.raises(ConversionError, match=r"loop: #50 \(Reroute\) → #50"):
        convert(ui_reroute_loop())


# ---------------------------------------------------------------------------- exponential params lists

def test_a_doubling_combine_params_chain_is_read_once_per_node():
    """30 levels, each fed twice by the one before: 2^30 entries. Each node's list is built once (the
    straightforward walk re-read the chain 2^30 times); FromParams stays, saying the list is too long."""
    wf = doubling_chain(30)
    result = {}
    steps = work(lambda: result.update(zip(("out", "report"), convert(wf))), budget=2_000_000)
    assert steps < 2_000_000
    kept = {k["id"]: k["reason"] for k in result["report"].kept}
    assert f"more than {MAX_PARAM_ENTRIES} entries" in kept["40"], kept


def test_a_short_doubling_chain_still_unrolls_every_entry():
    """5 levels: 2^5 = 32 entries (counted by hand), each one chained prompt (one IPAApply) as before."""
    out, report = convert(doubling_chain(5))
    assert not report.kept, report.text()
    assert sum(1 for n in out.values() if n["class_type"] == "IPAApply") == 32


# ---------------------------------------------------------------------------- malformed input

def edited_ui_graph(edit):
    def make():
        wf = ui_graph()
        edit(wf)
        return wf
    return make


def _node(wf, nid):
    return next(n for n in wf["nodes"] if n.get("id") == nid)


def _set(path_fn, value):
    def edit(wf):
        target, key = path_fn(wf)
        target[key] = value
    return edit


UI_MALFORMED = {
    # (edit, words the message must hold: what is wrong and where)
    "origin_slot 10^9": (lambda wf: wf["links"].append([99, 3, 10 ** 9, 4, 0, "MODEL"]),
                         ["link 99", "origin_slot 1000000000", "#3"]),
    "negative target_slot": (lambda wf: wf["links"].__setitem__(0, [1, 1, 0, 10, -1, "MODEL"]),
                             ["link 1", "target_slot -1"]),
    "target_slot past the inputs": (lambda wf: wf["links"].__setitem__(0, [1, 1, 0, 10, 7, "MODEL"]),
                                    ["link 1", "target_slot 7", "#10"]),
    "duplicate node ids": (lambda wf: _node(wf, 4).__setitem__("id", 3), ["node id 3", "twice"]),
    "string id": (lambda wf: _node(wf, 3).__setitem__("id", "3"), ["nodes[2]", "integer", "'3'"]),
    "float id": (lambda wf: _node(wf, 3).__setitem__("id", 3.0), ["nodes[2]", "integer", "float"]),
    "bool id": (lambda wf: _node(wf, 3).__setitem__("id", True), ["nodes[2]", "integer", "bool"]),
    "missing id": (lambda wf: _node(wf, 3).pop("id"), ["nodes[2]", "integer", "None"]),
    "link not a list": (lambda wf: wf["links"].__setitem__(0, "1,1,0"), ["links[0]", "str"]),
    "link too short": (lambda wf: wf["links"].__setitem__(0, [1, 1, 0]), ["links[0]", "[1, 1, 0]"]),
    "link with a string origin": (lambda wf: wf["links"].__setitem__(0, [1, "1", 0, 10, 0, "MODEL"]),
                                  ["links[0]", "origin id", "'1'"]),
    "link with a list id": (lambda wf: wf["links"].__setitem__(0, [[1], 1, 0, 10, 0, "MODEL"]), ["links[0]", "id"]),
    "link with a float slot": (lambda wf: wf["links"].__setitem__(0, [1, 1, 0.0, 10, 0, "MODEL"]),
                               ["links[0]", "origin slot"]),
    "link object without origin": (lambda wf: wf["links"].__setitem__(0, {"id": 1, "target_id": 10}),
                                   ["links[0]", "origin_id"]),
    "links not a list": (lambda wf: wf.__setitem__("links", {"1": [1, 1, 0, 10, 0]}), ["links", "dict"]),
    "two links, one id": (lambda wf: wf["links"].append([1, 3, 0, 10, 2, "IMAGE"]), ["link id 1"]),
    "node not an object": (lambda wf: wf["nodes"].__setitem__(2, "LoadImage"), ["nodes[2]", "str"]),
    "inputs not a list": (lambda wf: _node(wf, 10).__setitem__("inputs", {"model": 1}), ["#10", "inputs", "dict"]),
    "input not an object": (lambda wf: _node(wf, 10)["inputs"].__setitem__(1, "ipadapter"),
                            ["#10", "inputs[1]", "str"]),
    "input link a list": (lambda wf: _node(wf, 10)["inputs"][1].__setitem__("link", [2]),
                          ["#10", "inputs[1].link", "list"]),
    "input widget a string": (lambda wf: _node(wf, 10)["inputs"][0].__setitem__("widget", "weight"),
                              ["#10", "inputs[0].widget"]),
    "outputs not a list": (lambda wf: _node(wf, 4).__setitem__("outputs", "LATENT"), ["#4", "outputs", "str"]),
    "output not an object": (lambda wf: _node(wf, 2)["outputs"].__setitem__(0, 5), ["#2", "outputs[0]", "int"]),
    "type not a string": (lambda wf: _node(wf, 4).__setitem__("type", ["KSampler"]), ["#4", "type", "list"]),
}


@pytest.mark.parametrize("name", sorted(UI_MALFORMED))
def test_malformed_editor_files_are_refused_naming_the_node_or_link(name):
    edit, words = UI_MALFORMED[name]
    with pytest.raises(ConversionError) as err:
        convert(edited_ui_graph(edit)())
    assert all(w in str(err.value) for w in words), (words, str(err.value))


def edited_api_graph(edit):
    g = api_graph()
    g["21"] = theirs("IPAdapterAdvanced", {}, {"model": MODEL, "ipadapter": ["20", 1], "image": ["5", 0]})
    g["7"]["inputs"]["model"] = ["21", 0]
    edit(g)
    return g


API_MALFORMED = {
    "origin slot 10^9 of their node": (lambda g: g["21"]["inputs"].__setitem__("ipadapter", ["20", 10 ** 9]),
                                       ["'21'", "'ipadapter'", "1000000000", "'20'"]),
    "negative slot": (lambda g: g["21"]["inputs"].__setitem__("ipadapter", ["20", -1]), ["'21'", "'ipadapter'"]),
    "bool slot": (lambda g: g["21"]["inputs"].__setitem__("ipadapter", ["20", True]), ["'21'", "True"]),
    "bool node id in a link": (lambda g: g["7"]["inputs"].__setitem__("model", [True, 0]), ["'7'", "'model'"]),
    "inputs a list": (lambda g: g["21"].__setitem__("inputs", [MODEL]), ["'21'", "inputs", "list"]),
    "class_type not a string": (lambda g: g["21"].__setitem__("class_type", 5), ["'21'", "class_type", "int"]),
    "_meta a string": (lambda g: g["21"].__setitem__("_meta", "title"), ["'21'", "_meta", "str"]),
    "the same id twice": (lambda g: g.__setitem__(21, {"class_type": "Note", "inputs": {}}), ["'21'", "twice"]),
    "a key that is not an id": (lambda g: g.__setitem__(2.5, {"class_type": "Note", "inputs": {}}), ["2.5"]),
}


@pytest.mark.parametrize("name", sorted(API_MALFORMED))
def test_malformed_api_workflows_are_refused_naming_the_node(name):
    edit, words = API_MALFORMED[name]
    with pytest.raises(ConversionError) as err:
        convert(edited_api_graph(edit))
    assert all(w in str(err.value) for w in words), (words, str(err.value))


def test_an_origin_slot_of_a_billion_allocates_nothing():
    """A link from output 10^9 of a node of another pack: the old writer padded that node's outputs to 10^9
    entries (gigabytes). Refused before anything is written; the conversion allocates under 1 MB."""
    wf = ui_graph()
    wf["links"][-1][1:3] = [3, 10 ** 9]     # the sampler's model from output 10^9 of LoadImage (it stays)
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match="origin_slot 1000000000"):
            convert(wf)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak


def test_links_to_nodes_the_file_does_not_have_are_left_out():
    """Leftovers of older editors, kept working as before: such a link is dropped, nothing is refused."""
    wf = ui_graph()
    wf["links"].append([77, 999, 0, 4, 0, "MODEL"])
    out, report = convert(wf)
    assert report.converted and all(link[0] != 77 for link in out["links"])


def test_deeply_nested_widget_values_are_copied_without_recursion():
    nested = 1
    for _ in range(700):         # json.loads reads it; copy.deepcopy would hit the recursion limit
        nested = [nested]
    wf = ui_graph()
    _node(wf, 3)["widgets_values"] = [nested]
    out, _ = convert(json.loads(json.dumps(wf)))
    assert json.loads(json.dumps(_node(out, 3)["widgets_values"])) == [nested]


# ---------------------------------------------------------------------------- long chains

@pytest.mark.parametrize("shape", ["api", "ui", "reroutes"])
def test_chains_of_3000_nodes_convert_without_recursion(shape):
    wf = {"api": api_chain, "ui": ui_chain, "reroutes": BUILD["reroutes"]}[shape](3000)
    out, report = convert(wf)
    assert not report.kept and not report.dropped, report.text()
    assert len(report.converted) == (3001 if shape != "reroutes" else 2)


def test_a_chain_that_stays_keeps_its_whole_length_linearly():
    """3,000 chained apply nodes fed by a FaceID loader, which stays: every one of them stays (it would lose
    its adapter), found in one pass over the graph, not one conversion rerun per node."""
    wf = api_chain(3000)
    wf["20"] = theirs("IPAdapterUnifiedLoaderFaceID", {}, {"model": MODEL})
    out, report = convert(wf)
    assert len(report.kept) == 3001 and not report.converted


# ---------------------------------------------------------------------------- linear growth

@pytest.mark.parametrize("shape", ["stack", "foreign", "reroutes"])
def test_work_grows_linearly_with_the_graph(shape):
    """Lines run for n and 2n nodes (bench/convert_scale.py's shapes): linear work doubles (quadratic would
    give 4×). Sizes past the layout's walk bound (64 boxes), small enough for a traced run."""
    n = {"stack": 300, "foreign": 2000, "reroutes": 1000}[shape]
    small, large = BUILD[shape](n), BUILD[shape](2 * n)
    ratio = work(lambda: convert(large)) / work(lambda: convert(small))
    assert ratio < 2.6, ratio


def test_placed_nodes_overlap_nothing():
    """The layout's answer is still a free place: no new node's box crosses another node's."""
    out, _ = convert(BUILD["foreign"](3000))
    boxes = [(n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1], n["type"])
             for n in out["nodes"]]
    ours = [b for b in boxes if b[4].startswith("IPA")]
    assert ours
    for a in ours:
        assert not [b for b in boxes if b is not a and b[0] < a[2] and a[0] < b[2] and b[1] < a[3] and a[1] < b[3]]


# ---------------------------------------------------------------------------- the command line

def _cli(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "convert_workflow.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_command_line_refuses_with_the_file_named(tmp_path):
    src, dst = tmp_path / "loop.json", tmp_path / "out.json"
    src.write_text(json.dumps(LOOPS["two combine params"][0]()))
    run = _cli(src, dst)
    assert run.returncode == 1 and "loop.json" in run.stderr and "#22" in run.stderr and not dst.exists()
    big = tmp_path / "big.json"
    with big.open("wb") as f:               # sparse: MAX_BYTES + 1 bytes that are never read
        f.truncate(MAX_BYTES + 1)
    run = _cli(big, dst)
    assert run.returncode == 1 and "big.json" in run.stderr and f"{MAX_BYTES:,}" in run.stderr, run.stderr
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    run = _cli(deep, dst)
    assert run.returncode == 1 and "deep.json" in run.stderr and "Traceback" not in run.stderr, run.stderr
    bad = tmp_path / "bad.json"
    wf = ui_graph()
    wf["links"][0] = [1, 1, 10 ** 9, 10, 0, "MODEL"]
    bad.write_text(json.dumps(wf))
    run = _cli(bad, dst)
    assert run.returncode == 1 and "bad.json" in run.stderr and "link 1" in run.stderr, run.stderr


def test_the_input_is_not_modified():
    wf = BUILD["reroutes"](50)
    before = copy.deepcopy(wf)
    convert(wf)
    assert wf == before
