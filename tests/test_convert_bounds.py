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
from ipadapter_ext.bench.convert_scale import BUILD
from ipadapter_ext.ip_adapter_core.convert import ConversionError, convert
from ipadapter_ext.ip_adapter_core.convert.limits import MAX_BYTES, MAX_PARAM_ENTRIES
from support.hostile_graphs import (
    API_MALFORMED,
    LOOPS,
    MODEL,
    UI_MALFORMED,
    api_chain,
    doubling_chain,
    edited_api_graph,
    edited_ui_graph,
    node_of,
    ui_chain,
    ui_graph,
    ui_reroute_loop,
)
from support.plus_graphs import staying_loader

REPO = Path(__file__).resolve().parent.parent
CONVERTER = str(REPO / "ip_adapter_core" / "convert")


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

# ---------------------------------------------------------------------------- loops

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

def test_a_doubling_combine_params_chain_is_read_once_pernode_of():
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

@pytest.mark.parametrize("name", sorted(UI_MALFORMED))
def test_malformed_editor_files_are_refused_naming_the_node_or_link(name):
    edit, words = UI_MALFORMED[name]
    with pytest.raises(ConversionError) as err:
        convert(edited_ui_graph(edit)())
    assert all(w in str(err.value) for w in words), (words, str(err.value))


@pytest.mark.parametrize("name", sorted(API_MALFORMED))
def test_malformed_api_workflows_are_refused_naming_thenode_of(name):
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
    node_of(wf, 3)["widgets_values"] = [nested]
    out, _ = convert(json.loads(json.dumps(wf)))
    assert json.loads(json.dumps(node_of(out, 3)["widgets_values"])) == [nested]


# ---------------------------------------------------------------------------- long chains

@pytest.mark.parametrize("shape", ["api", "ui", "reroutes"])
def test_chains_of_3000_nodes_convert_without_recursion(shape):
    wf = {"api": api_chain, "ui": ui_chain, "reroutes": BUILD["reroutes"]}[shape](3000)
    out, report = convert(wf)
    assert not report.kept and not report.dropped, report.text()
    assert len(report.converted) == (3001 if shape != "reroutes" else 2)


def test_a_chain_that_stays_keeps_its_whole_length_linearly():
    """3,000 chained apply nodes fed by a preset loader that stays (a preset with no equivalent here): every one of
    them stays (it would lose its adapter), found in one pass over the graph, not one conversion rerun per node."""
    wf = api_chain(3000)
    wf["20"] = staying_loader(MODEL)
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
