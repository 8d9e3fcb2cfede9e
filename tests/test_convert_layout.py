"""What a converted editor file looks like and keeps, without the host: partial conversions, node modes,
subgraphs, and the layout of each replaced node's chain.

- A node of theirs downstream of one that stays is converted when what it takes from that node is a ComfyUI type
  (a MODEL, an IMAGE): the link is kept and the report says so. A link of their own types (IPADAPTER, EMBEDS)
  keeps the node as before.
- Bypassed and muted nodes of theirs become bypassed and muted nodes of ours.
- Nodes inside subgraph definitions are converted as a graph of their own, the subgraph's inputs and outputs
  rewired.
- Each replaced node's chain lies left to right where the node stood (every link between its nodes goes right),
  inside a group titled after it; the nodes that stay keep their order and overlap nothing new.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from ipadapter_ext.ip_adapter_core.convert import convert
from ipadapter_ext.ip_adapter_core.convert.graph import THEIR_NODES
from ipadapter_ext.ip_adapter_core.convert.layout import pair
from ipadapter_ext.ip_adapter_core.convert.v1_nodes import FILE_ID
from support.plus_graphs import MODEL, SCENARIOS, core, staying_loader, theirs, to_ui
from test_convert_v1 import OBJECT_INFO

EXAMPLES = os.environ.get("IPADAPTER_PLUS_EXAMPLES")


# ---------------------------------------------------------------------------- partial conversion

def test_a_node_fed_a_model_by_a_node_that_stays_is_converted():
    g = core("v1-5-pruned-emaonly.safetensors", MODEL)
    g["20"] = staying_loader(MODEL)
    g["21"] = theirs("IPAdapterModelLoader", {"ipadapter_file": "ip-adapter_sd15.safetensors"})
    g["22"] = theirs("IPAdapterAdvanced", {}, {"model": ["20", 0], "ipadapter": ["21", 0], "image": ["5", 0]})
    g["23"] = theirs("IPAdapterAdvanced", {}, {"model": ["22", 0], "ipadapter": ["20", 1], "image": ["5", 0]})
    g["7"]["inputs"]["model"] = ["23", 0]
    out, report = convert(g)
    kept = {k["id"]: k["reason"] for k in report.kept}
    assert set(kept) == {"20", "23"}, report.text()
    assert "IPADAPTER" in kept["23"] and "#20" in kept["23"]           # their adapter wire: it stays
    conv = next(c for c in report.converted if c["id"] == "22")
    assert any("#20" in note and "MODEL link is kept" in note for note in conv["notes"]), report.text()
    apply = next(v for v in out.values() if v["class_type"] == "IPAApply")
    assert apply["inputs"]["model"] == ["20", 0]                        # through the node that stays
    assert out["23"]["inputs"]["model"] == [next(k for k, v in out.items() if v is apply), 0]
    assert not report.dropped, report.text()


def test_a_node_fed_only_their_wires_by_a_node_that_stays_still_stays():
    g = core("v1-5-pruned-emaonly.safetensors", MODEL)
    g["20"] = staying_loader(MODEL)
    g["21"] = theirs("IPAdapterEncoder", {}, {"ipadapter": ["20", 1], "image": ["5", 0]})
    g["22"] = theirs("IPAdapterEmbeds", {}, {"model": MODEL, "ipadapter": ["20", 1], "pos_embed": ["21", 0]})
    g["7"]["inputs"]["model"] = ["22", 0]
    out, report = convert(copy.deepcopy(g))
    assert {k["id"] for k in report.kept} == {"20", "21", "22"} and out == g, report.text()


# ---------------------------------------------------------------------------- modes

@pytest.mark.parametrize("mode", [2, 4])      # muted, bypassed
def test_bypassed_and_muted_nodes_keep_their_mode(mode):
    their, _ = SCENARIOS["advanced"]()
    ui = to_ui(their, OBJECT_INFO)
    target = next(x for x in ui["nodes"] if x["type"] == "IPAdapterAdvanced")
    target["mode"] = mode
    out, report = convert(ui)
    made = [x for x in out["nodes"] if x["id"] not in {n["id"] for n in ui["nodes"]}]
    chain = {"IPAEncodeImage", "IPAProject", "IPAWeight", "IPAApply"}
    assert chain <= {x["type"] for x in made if x.get("mode") == mode}, report.text()
    assert all(x.get("mode", 0) == 0 for x in made if x["type"] == "IPAUnifiedLoader")


# ---------------------------------------------------------------------------- subgraphs

def pack(ui: dict, inner: set, name: str) -> dict:
    """The editor file with the nodes ``inner`` moved into a subgraph definition, as the editor's "Convert to
    subgraph" writes one: links crossing its border go through its input node (-10) and output node (-20) and
    an instance node of the subgraph's id at the top level."""
    ui = copy.deepcopy(ui)
    sid = "5e1b0a52-0000-4000-8000-000000000001"
    inst = max(x["id"] for x in ui["nodes"]) + 1
    next_link = max(link[0] for link in ui["links"]) + 1
    sg = {"id": sid, "version": 1, "state": {"lastGroupId": 0, "lastNodeId": inst, "lastLinkId": 0,
                                             "lastRerouteId": 0},
          "revision": 0, "config": {}, "name": name, "inputNode": {"id": -10, "bounding": [0, 0, 120, 60]},
          "outputNode": {"id": -20, "bounding": [2000, 0, 120, 60]}, "inputs": [], "outputs": [], "widgets": [],
          "nodes": [x for x in ui["nodes"] if x["id"] in inner], "groups": [], "links": [], "extra": {}}
    instance = {"id": inst, "type": sid, "pos": [500, 500], "size": [200, 100], "flags": {}, "order": 99,
                "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": []}
    top = []
    crossing_in: dict = {}
    for link in ui["links"]:
        lid, o, os_, t, ts, kind = link
        if o in inner and t in inner:
            sg["links"].append({"id": lid, "origin_id": o, "origin_slot": os_, "target_id": t, "target_slot": ts,
                                "type": kind})
        elif t in inner:                         # into the subgraph: one input per outer source
            key = (o, os_)
            if key not in crossing_in:
                crossing_in[key] = len(sg["inputs"])
                sg["inputs"].append({"id": f"in{len(sg['inputs'])}", "name": f"in{len(sg['inputs'])}",
                                     "type": kind, "linkIds": []})
                instance["inputs"].append({"name": sg["inputs"][-1]["name"], "type": kind, "link": next_link})
                top.append([next_link, o, os_, inst, len(instance["inputs"]) - 1, kind])
                next_link += 1
            slot = crossing_in[key]
            sg["links"].append({"id": lid, "origin_id": -10, "origin_slot": slot, "target_id": t, "target_slot": ts,
                                "type": kind})
            sg["inputs"][slot]["linkIds"].append(lid)
        elif o in inner:                         # out of it: one output per crossing link
            slot = len(sg["outputs"])
            sg["outputs"].append({"id": f"out{slot}", "name": f"out{slot}", "type": kind, "linkIds": [lid]})
            sg["links"].append({"id": lid, "origin_id": o, "origin_slot": os_, "target_id": -20, "target_slot": slot,
                                "type": kind})
            instance["outputs"].append({"name": f"out{slot}", "type": kind, "links": [next_link]})
            top.append([next_link, inst, slot, t, ts, kind])
            next_link += 1
        else:
            top.append(link)
    sg["state"]["lastLinkId"] = max(link[0] for link in ui["links"])
    ui["nodes"] = [x for x in ui["nodes"] if x["id"] not in inner] + [instance]
    ui["links"] = top
    ui["last_link_id"] = next_link
    ui["definitions"] = {"subgraphs": [sg]}
    return ui


def edges(nodes: list, links: list) -> list:
    """Links as (origin type, slot, target type, target input name), the same whatever the ids."""
    by_id = {x["id"]: x for x in nodes}
    out = []
    for link in links:
        lid, o, os_, t, ts, _ = link if isinstance(link, list) else (
            link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"], None)
        name = lambda nid: by_id[nid]["type"] if nid in by_id else str(nid)  # noqa: E731
        target = by_id.get(t)
        slot_name = target["inputs"][ts]["name"] if target else ts
        out.append((name(o), os_, name(t), slot_name))
    return sorted(map(repr, out))


def test_nodes_inside_subgraphs_are_converted():
    their, _ = SCENARIOS["advanced"]()
    ui = to_ui(their, OBJECT_INFO)
    inner = {x["id"] for x in ui["nodes"] if x["type"] in THEIR_NODES or x["type"] == "Reroute"}
    packed = pack(ui, inner, "adapter part")
    before = copy.deepcopy(packed)
    out, report = convert(packed)
    assert packed == before and report.complete, report.text()
    assert {c["id"].split("/")[0] for c in report.converted} == {"adapter part"}
    sg = out["definitions"]["subgraphs"][0]
    kinds = {x["type"] for x in sg["nodes"]}
    assert not kinds & set(THEIR_NODES) and {"IPAProject", "IPAWeight", "IPAApply"} <= kinds
    # every link inside names nodes it has (or its input and output nodes); each input's linkIds are its links
    ids = {x["id"] for x in sg["nodes"]} | {-10, -20}
    assert all(link["origin_id"] in ids and link["target_id"] in ids for link in sg["links"])
    for slot, entry in enumerate(sg["inputs"]):
        assert sorted(entry["linkIds"]) == sorted(link["id"] for link in sg["links"]
                                                  if link["origin_id"] == -10 and link["origin_slot"] == slot)
        assert entry["linkIds"], entry                      # nothing that fed the subgraph was lost
    assert [len(e["linkIds"]) for e in sg["outputs"]] == [1] * len(sg["outputs"])
    assert [g["title"] for g in sg["groups"]] == ["IPAdapterAdvanced"]      # the chain's group, in the subgraph
    for node in sg["nodes"]:
        for k, slot in enumerate(node.get("inputs") or []):
            if slot.get("link") is not None:
                link = next(x for x in sg["links"] if x["id"] == slot["link"])
                assert (link["target_id"], link["target_slot"]) == (node["id"], k)
    # the same links between our nodes as when the file is converted without the subgraph
    flat, _ = convert(ui)
    ours = lambda nodes: [x for x in nodes if x["type"].startswith("IPA")]  # noqa: E731
    inner_flat = [link for link in flat["links"] if any(x["id"] == link[3] for x in ours(flat["nodes"]))
                  and any(x["id"] == link[1] for x in ours(flat["nodes"]))]
    sg_ours = {x["id"] for x in ours(sg["nodes"])}
    inner_sg = [link for link in sg["links"] if link["origin_id"] in sg_ours and link["target_id"] in sg_ours]
    assert edges(flat["nodes"], inner_flat) == edges(sg["nodes"], inner_sg)
    assert out["nodes"] == before["nodes"] and out["links"] == before["links"]   # the top level has none of theirs


def test_a_malformed_subgraph_is_refused_naming_it():
    their, _ = SCENARIOS["advanced"]()
    ui = to_ui(their, OBJECT_INFO)
    packed = pack(ui, {x["id"] for x in ui["nodes"] if x["type"] in THEIR_NODES or x["type"] == "Reroute"},
                  "broken one")
    packed["definitions"]["subgraphs"][0]["links"].append({"id": 999, "origin_id": "x"})
    with pytest.raises(Exception) as err:
        convert(packed)
    assert "broken one" in str(err.value)


# ---------------------------------------------------------------------------- layout

def chains_and_groups(ui: dict, out: dict):
    old = {x["id"] for x in ui["nodes"]}
    made = {x["id"]: x for x in out["nodes"] if x["id"] not in old}
    return made, out["groups"][len(ui.get("groups") or []):]    # the converter appends its groups


def check_layout(ui: dict, out: dict, report) -> None:
    made, groups = chains_and_groups(ui, out)
    replaced = [c for c in report.converted if len(c["to"]) > 1]
    assert len(groups) == len(replaced), [g["title"] for g in groups]
    assert sorted(g["title"] for g in groups) == sorted(c.get("title") or FILE_ID.get(c["type"], c["type"])
                                                       for c in replaced)
    member = {}
    for group in groups:                          # every new node of a chain lies in its group
        x, y, w, h = group["bounding"]
        inside = {n["id"] for n in made.values() if x <= n["pos"][0] and n["pos"][0] + n["size"][0] <= x + w
                  and y <= n["pos"][1] - 30 and n["pos"][1] + n["size"][1] <= y + h}
        assert inside and not inside & set(member), group
        member.update(dict.fromkeys(inside, group["title"]))
    for _, origin, _, target, _, _ in out["links"]:     # inside a chain every link goes right
        if origin in member and member[origin] == member.get(target):
            assert made[origin]["pos"][0] < made[target]["pos"][0], (made[origin]["type"], made[target]["type"])
    def edges_of(n):          # old files store sizes as {"0": w, "1": h}
        (x, y), (w, h) = pair(n["pos"], (0, 0)), pair(n["size"], (0, 0))
        return x, y - 30, x + w, y + h

    boxes = [(*edges_of(n), n["id"]) for n in out["nodes"]]
    before = {n["id"]: edges_of(n) for n in ui["nodes"]}
    for a in boxes:
        for b in boxes:
            if a[4] < b[4] and a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                was = before.get(a[4]), before.get(b[4])
                assert None not in was and was[0][0] < was[1][2] and was[1][0] < was[0][2] \
                    and was[0][1] < was[1][3] and was[1][1] < was[0][3], (a, b)   # only overlaps there were


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_chain_lies_left_to_right_in_its_group(name):
    their, _ = SCENARIOS[name]()
    ui = to_ui(their, OBJECT_INFO)
    out, report = convert(ui)
    check_layout(ui, out, report)


@pytest.mark.skipif(not EXAMPLES, reason="IPADAPTER_PLUS_EXAMPLES is not set (test_convert.py says how)")
def test_their_style_composition_example_is_laid_out_as_drawn():
    path = Path(EXAMPLES) / "ipadapter_style_composition.json"
    ui = json.loads(path.read_text())
    out, report = convert(ui)
    check_layout(ui, out, report)
    made, groups = chains_and_groups(ui, out)
    apply_group = next(g for g in groups if "IPAApply" in {
        n["type"] for n in made.values() if g["bounding"][0] <= n["pos"][0] <= g["bounding"][0] + g["bounding"][2]})
    assert apply_group["bounding"][2] > apply_group["bounding"][3]       # wider than tall: a row, not a column
