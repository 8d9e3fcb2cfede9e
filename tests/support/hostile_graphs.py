"""Malformed and looping workflows of ComfyUI_IPAdapter_plus's nodes, in both formats, with the words a refusal
must hold: the cases of tests/test_convert_bounds.py, which the soak also posts to a live server
(hostile_convert_requests.py)."""
from __future__ import annotations

from ipadapter_ext.bench.convert_scale import UIGraph

from support.plus_graphs import core, theirs

MODEL = ["1", 0]


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

def edited_ui_graph(edit):
    def make():
        wf = ui_graph()
        edit(wf)
        return wf
    return make


def node_of(wf, nid):
    return next(n for n in wf["nodes"] if n.get("id") == nid)


def set_at(path_fn, value):
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
    "duplicate node ids": (lambda wf: node_of(wf, 4).__setitem__("id", 3), ["node id 3", "twice"]),
    "string id": (lambda wf: node_of(wf, 3).__setitem__("id", "3"), ["nodes[2]", "integer", "'3'"]),
    "float id": (lambda wf: node_of(wf, 3).__setitem__("id", 3.0), ["nodes[2]", "integer", "float"]),
    "bool id": (lambda wf: node_of(wf, 3).__setitem__("id", True), ["nodes[2]", "integer", "bool"]),
    "missing id": (lambda wf: node_of(wf, 3).pop("id"), ["nodes[2]", "integer", "None"]),
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
    "inputs not a list": (lambda wf: node_of(wf, 10).__setitem__("inputs", {"model": 1}), ["#10", "inputs", "dict"]),
    "input not an object": (lambda wf: node_of(wf, 10)["inputs"].__setitem__(1, "ipadapter"),
                            ["#10", "inputs[1]", "str"]),
    "input link a list": (lambda wf: node_of(wf, 10)["inputs"][1].__setitem__("link", [2]),
                          ["#10", "inputs[1].link", "list"]),
    "input widget a string": (lambda wf: node_of(wf, 10)["inputs"][0].__setitem__("widget", "weight"),
                              ["#10", "inputs[0].widget"]),
    "outputs not a list": (lambda wf: node_of(wf, 4).__setitem__("outputs", "LATENT"), ["#4", "outputs", "str"]),
    "output not an object": (lambda wf: node_of(wf, 2)["outputs"].__setitem__(0, 5), ["#2", "outputs[0]", "int"]),
    "type not a string": (lambda wf: node_of(wf, 4).__setitem__("type", ["KSampler"]), ["#4", "type", "list"]),
}

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
