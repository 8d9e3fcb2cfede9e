"""The two workflow formats, read into one view and written back after the conversion.

The rules (``rules.py``) see every node of the popular extension as a ``Theirs``: its widget values by
name (the stored ones, or the schema's defaults where an older file stores fewer) and the sources of
its linked inputs, as ``("old", node id, output slot)``. They answer with ``New`` nodes of ours and an
output map. ``write_api`` / ``write_ui`` then splice those into a copy of the input: every other node,
its position, title, colour and settings, the groups and the editor state stay as they were, and only
the links that touched a converted node are rewritten.

Refs: ``("old", id, slot)`` is an output of a node of the input graph, ``("new", key, slot)`` one of a
node the rules add. A ref to a converted node is followed through the output map, so a chain of
converted nodes resolves to our nodes in one pass.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .layout import GAP, GROUP_COLOR, MAX_LAYOUT_WORK, NODE_WIDTH, Board, Placer, box, chain_layout, height, pair
from .limits import MAX_NODES
from .our_nodes import CONTROL, SPECS
from .flux_nodes import FLUX_NODES
from .plus_nodes import NODES
from .v1_nodes import NAME_ALIASES, V1_NODES, first_generation
from .validate import ConversionError, api_link, check_api, check_ui, is_int, ui_link

REROUTE = "Reroute"
# every node the converter knows: ComfyUI_IPAdapter_plus's (both generations) and the Flux packs'
THEIR_NODES = {**NODES, **V1_NODES, **FLUX_NODES}
THEIR_OUTPUTS = {kind: len(schema.outputs) for kind, schema in THEIR_NODES.items()}
# ComfyUI's own socket types: a link of one of these between a node that stays and one of ours still fits (a MODEL
# is a MODEL); their other types (IPADAPTER, EMBEDS, INSIGHTFACE, ...) only their nodes read.
CORE_TYPES = frozenset({"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK", "CLIP_VISION",
                        "CLIP_VISION_OUTPUT", "INT", "FLOAT", "STRING", "BOOLEAN"})
DIGITS = re.compile(r"-?[0-9]+")


@dataclass
class Theirs:
    """One node of the popular extension, as the rules read it."""

    id: str
    type: str
    values: dict                  # widget name -> value
    links: dict                   # input name (socket or widget) -> ("old", id, slot)
    title: str | None = None
    filled: list = field(default_factory=list)    # widgets that got their default (older file)
    extra_values: int = 0         # values beyond today's widgets (a newer file?)


@dataclass
class New:
    """A node the rules add: our type, widget values by name, inputs by name -> ref."""

    key: str
    type: str
    widgets: dict
    inputs: dict
    anchor: str                   # the id of the node of theirs it replaces
    title: str | None = None


# ---------------------------------------------------------------------------- reading

def is_ui(workflow) -> bool:
    return isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list) and "links" in workflow


def is_api(workflow) -> bool:
    return isinstance(workflow, dict) and bool(workflow) and all(
        isinstance(v, dict) and "class_type" in v for v in workflow.values())


def check_format(workflow, max_nodes: int | None = MAX_NODES) -> str:
    """The format, once every node and link has been checked (validate.py): later steps trust them."""
    if is_ui(workflow):
        check_ui(workflow, max_nodes)
        return "ui"   # nodes inside subgraphs are left as they are; the report counts them
    if is_api(workflow):
        check_api(workflow, max_nodes, THEIR_OUTPUTS)
        return "api"
    raise ConversionError("the workflow is neither the editor's UI format (a 'nodes' list and 'links') nor the "
                          "API format ({id: {'class_type', 'inputs'}}); save it again from the editor")


def _widget_values(node_type: str, stored) -> tuple[dict, list, int]:
    """Their widget values by name from positional (or named) storage, filling missing trailing ones."""
    schema = THEIR_NODES[node_type]
    names = [w.name for w in schema.widgets]
    if isinstance(stored, dict):
        values = {k: v for k, v in stored.items() if k in names}
        extra = len([k for k in stored if k not in names])
    else:
        stored = list(stored) if isinstance(stored, (list, tuple)) else []
        values = dict(zip(names, stored))
        extra = max(0, len(stored) - len(names))
    filled = [w.name for w in schema.widgets if w.name not in values]
    for w in schema.widgets:
        values.setdefault(w.name, w.default)
    return values, filled, extra


def ui_links(workflow: dict) -> dict:
    """link id -> [id, origin id, origin slot, target id, target slot, type], both link forms; links that name
    a node the file does not have are left out."""
    ids = {n["id"] for n in workflow["nodes"]}
    out = {}
    for index, raw in enumerate(workflow.get("links") or []):
        link = ui_link(raw, index)
        if link[1] in ids and link[3] in ids:
            out[link[0]] = link
    return out


def read_ui(workflow: dict) -> tuple[dict, dict]:
    """(their nodes by id, reroutes: id -> upstream ref) of a UI-format workflow's top level."""
    links = ui_links(workflow)
    theirs, reroutes = {}, {}
    for node in workflow["nodes"]:
        nid = str(node["id"])
        ins = {}
        for slot in node.get("inputs") or []:
            link = links.get(slot.get("link"))
            if link is not None:
                name = (slot.get("widget") or {}).get("name", slot.get("name"))
                ins[name] = ("old", str(link[1]), link[2])
        if node.get("type") == REROUTE:
            reroutes[nid] = next(iter(ins.values()), None)
        elif node.get("type") in THEIR_NODES:
            names = [(s.get("widget") or {}).get("name", s.get("name")) for s in node.get("inputs") or []
                     if isinstance(s, dict)]
            kind = first_generation(node["type"], names, node.get("widgets_values"))
            ins = _aliased(kind, ins)
            values, filled, extra = _widget_values(kind, node.get("widgets_values"))
            theirs[nid] = Theirs(nid, kind, values, ins, node.get("title"), filled, extra)
    return theirs, reroutes


def output_type(node: "Theirs", slot) -> str | None:
    """The type of output ``slot`` of one of their nodes, from its schema (None: no such output)."""
    outputs = THEIR_NODES[node.type].outputs
    return outputs[slot][1] if isinstance(slot, int) and 0 <= slot < len(outputs) else None


def input_type(node: "Theirs", name: str) -> str | None:
    """The type of their node's input ``name``: a socket's from the schema; None for a widget fed by a link."""
    return dict(THEIR_NODES[node.type].sockets).get(name)


def _aliased(kind: str, named: dict) -> dict:
    """Inputs under the names of the schema (older revisions of a node named some differently)."""
    aliases = NAME_ALIASES.get(kind)
    return {aliases.get(k, k): v for k, v in named.items()} if aliases else named


def all_sources(workflow: dict, fmt: str) -> dict:
    """node id -> refs of everything that feeds it, for every node of either format. In the editor's format
    both the link list and the links the nodes' inputs name count (read_ui reads the latter)."""
    out = {}
    if fmt == "ui":
        links = ui_links(workflow)
        for link in links.values():
            out.setdefault(str(link[3]), []).append(("old", str(link[1]), link[2]))
        for node in workflow["nodes"]:
            for slot in node.get("inputs") or []:
                link = links.get(slot.get("link"))
                if link is not None and link[3] != node["id"]:
                    out.setdefault(str(node["id"]), []).append(("old", str(link[1]), link[2]))
    else:
        for nid, node in workflow.items():
            out[str(nid)] = [("old", str(v[0]), v[1]) for v in (node.get("inputs") or {}).values()
                             if api_link(v)]
    return out


def read_api(workflow: dict) -> dict:
    theirs = {}
    for nid, node in workflow.items():
        kind = node.get("class_type")
        if kind not in THEIR_NODES:
            continue
        kind = first_generation(kind, list(node.get("inputs") or {}), None)
        inputs = _aliased(kind, node.get("inputs") or {})
        links = {k: ("old", str(v[0]), v[1]) for k, v in inputs.items() if api_link(v)}
        names = [w.name for w in THEIR_NODES[kind].widgets]
        stored = {k: v for k, v in inputs.items() if k in names and not api_link(v)}
        values, filled, _ = _widget_values(kind, stored)
        filled = [n for n in filled if n not in links]
        theirs[str(nid)] = Theirs(str(nid), kind, values, links, (node.get("_meta") or {}).get("title"), filled)
    return theirs


# ---------------------------------------------------------------------------- resolving refs

class Resolver:
    """Follows refs through the output map to the node that finally provides a value."""

    def __init__(self, converted: set, outmap: dict, kept_theirs: set, ids: dict, theirs: dict, news: list):
        self.converted, self.outmap, self.kept_theirs, self.ids = converted, outmap, kept_theirs, ids
        self.theirs = theirs
        self.new_types = {n.key: n.type for n in news}
        self.dropped = []   # (consumer, input, why) for the report
        self.finals = {}    # ref -> final ref: a chain of pass-through nodes is walked once, not per consumer

    def final(self, ref):
        """("new", key, slot) or ("old", id, slot) of a node that stays, or None (no such output)."""
        path, seen = [], set()
        while ref is not None and ref[0] == "old" and ref[1] in self.converted and ref not in self.finals:
            if ref in seen:   # convert() refuses loops before this; a loop here has no source
                ref = None
                break
            path.append(ref)
            seen.add(ref)
            # an output the rule did not map has no equivalent: its consumers lose that input (reported)
            ref = self.outmap.get((ref[1], ref[2]))
        ref = self.finals.get(ref, ref)
        for step in path:
            self.finals[step] = ref
        return ref

    def node_slot(self, ref):
        """(final node id as in the output, slot) for a final ref."""
        if ref[0] == "new":
            return self.ids[ref[1]], ref[2]
        return ref[1], ref[2]

    def link(self, ref, consumer: str, name: str, ours: bool):
        """The source for an input, or None when it must be dropped (a link between our nodes and a node of
        theirs that stays: their sockets' types are not ours)."""
        target = self.final(ref)
        if target is not None and target[0] == "none":
            return None
        if target is None:
            if ref is not None:
                self.dropped.append((consumer, name, "its source has no equivalent here"))
            return None
        if ours and target[0] == "old" and target[1] in self.kept_theirs:
            kind = output_type(self.theirs[target[1]], target[2])
            if kind not in CORE_TYPES:
                self.dropped.append((consumer, name, f"it came from node #{target[1]}, which was not converted, "
                                                     f"and carries {kind}, which only its own pack reads"))
                return None
        if not ours and consumer in self.kept_theirs and target[0] == "new":
            ours_kind = SPECS[self.new_types[target[1]]].outputs[target[2]][1]
            theirs_kind = input_type(self.theirs[consumer], name)
            if ours_kind != theirs_kind and not (theirs_kind is None and ours_kind in ("INT", "FLOAT", "STRING")):
                self.dropped.append((consumer, name, f"it came from a node that was converted to this extension's, "
                                                     f"whose {ours_kind} this node cannot read"))
                return None
        return self.node_slot(target)


# ---------------------------------------------------------------------------- writing

def as_int(value) -> int | None:
    """An integer node id (API keys are strings: "12"; "12:3" and the like are not numbers)."""
    if is_int(value):
        return value
    return int(value) if isinstance(value, str) and DIGITS.fullmatch(value) else None


def copy_json(value):
    """A copy of nested dicts and lists, without recursion: a widget value nested 600 deep parses, but
    copy.deepcopy would reach Python's recursion limit on it."""
    top = [value]
    stack = [(top, 0, value)]
    while stack:
        parent, key, item = stack.pop()
        if isinstance(item, dict):
            parent[key] = new = dict(item)
            stack.extend((new, k, v) for k, v in item.items() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            parent[key] = new = list(item)
            stack.extend((new, k, v) for k, v in enumerate(item) if isinstance(v, (dict, list)))
    return top[0]


def _new_ids(existing, news) -> dict:
    top = max([i for i in map(as_int, existing) if i is not None] + [0])
    return {n.key: str(top + k + 1) for k, n in enumerate(news)}


def write_api(workflow: dict, theirs: dict, news: list, outmap: dict, kept: set) -> tuple[dict, list]:
    converted = set(theirs) - kept
    ids = _new_ids(workflow, news)
    res = Resolver(converted, outmap, kept, ids, theirs, news)
    out = {}
    for nid, node in workflow.items():
        if str(nid) in converted:
            continue
        node = copy_json(node)
        for name, value in list((node.get("inputs") or {}).items()):
            if api_link(value):
                src = res.link(("old", str(value[0]), value[1]), str(nid), name, ours=False)
                if src is None:
                    del node["inputs"][name]
                else:
                    node["inputs"][name] = [src[0], src[1]]
        out[nid] = node
    for n in news:
        inputs = dict(n.widgets)
        for name, ref in n.inputs.items():
            src = res.link(ref, ids[n.key], name, ours=True)
            if src is not None:
                inputs[name] = [src[0], src[1]]
        entry = {"inputs": inputs, "class_type": n.type}
        if n.title:
            entry["_meta"] = {"title": n.title}
        out[ids[n.key]] = entry
    return out, res.dropped


def write_ui(workflow: dict, theirs: dict, news: list, outmap: dict, kept: set) -> tuple[dict, list]:
    converted = set(theirs) - kept
    out = copy_json(workflow)
    nodes = {str(n["id"]): n for n in out["nodes"]}
    ids = _new_ids(nodes, news)
    res = Resolver(converted, outmap, kept, ids, theirs, news)
    old_links = ui_links(out)

    # New nodes: each replaced node's chain laid out left to right where it stood, in a group titled after it
    # (layout.py); the nodes that stay move right and down just enough to make room.
    order = max([n["order"] for n in out["nodes"] if is_int(n.get("order"))] + [0])
    new_nodes = []
    for k, n in enumerate(news):
        spec = SPECS[n.type]
        anchor = nodes[n.anchor]
        entry = {"id": int(ids[n.key]), "type": n.type, "pos": [0.0, 0.0],
                 "size": [NODE_WIDTH, height(spec, CONTROL)], "flags": {}, "order": order + k + 1,
                 "mode": anchor.get("mode", 0),
                 "inputs": [], "outputs": [{"name": name, "type": kind, "links": [], "slot_index": i}
                                           for i, (name, kind) in enumerate(spec.outputs)],
                 "properties": {"Node name for S&R": n.type},
                 "widgets_values": [("fixed" if w == CONTROL else n.widgets.get(w)) for w in spec.widgets]}
        for key in ("color", "bgcolor"):
            if key in anchor:
                entry[key] = anchor[key]
        if n.title:
            entry["title"] = n.title
        new_nodes.append(entry)
    _place(out, nodes, converted, news, new_nodes)

    # Links: keep those between nodes that stay, re-source those that came from converted nodes, add ours.
    links = []
    last = out.get("last_link_id") if is_int(out.get("last_link_id")) else 0
    next_id = max(list(old_links) + [last]) + 1
    for lid, (_, origin, oslot, target, tslot, kind) in sorted(old_links.items()):
        if str(target) in converted or str(origin) not in nodes or str(target) not in nodes:
            continue
        tnode = nodes[str(target)]
        name = _input_name(tnode, tslot)
        src = res.link(("old", str(origin), oslot), str(target), name, ours=False)
        if src is not None:
            links.append([lid, int(src[0]), src[1], target, tslot, kind])
    all_nodes = [n for n in out["nodes"] if str(n["id"]) not in converted] + new_nodes
    by_id = {str(n["id"]): n for n in all_nodes}
    for n, entry in zip(news, new_nodes):
        spec = SPECS[n.type]
        widget_types = dict(spec.widget_types)
        for name, kind in spec.sockets:
            entry["inputs"].append({"name": name, "type": kind, "link": None})
        for name, ref in n.inputs.items():
            src = res.link(ref, str(entry["id"]), name, ours=True)
            if src is None:
                continue
            slot = next((i for i, s in enumerate(entry["inputs"]) if s["name"] == name), None)
            if slot is None:      # a widget fed by a link (a primitive, another node's number)
                entry["inputs"].append({"name": name, "type": widget_types[name], "widget": {"name": name},
                                        "link": None})
                slot = len(entry["inputs"]) - 1
            links.append([next_id, int(src[0]), src[1], entry["id"], slot, entry["inputs"][slot]["type"]])
            next_id += 1
    _link_types(links, by_id, set(ids.values()))
    _relink(all_nodes, links)
    out["nodes"] = all_nodes
    out["links"] = links
    out["last_node_id"] = max([int(n["id"]) for n in all_nodes if isinstance(n["id"], int)] + [0])
    out["last_link_id"] = max([link[0] for link in links] + [last])
    return out, res.dropped


def _place(out: dict, nodes: dict, converted: set, news: list, entries: list) -> None:
    """Positions for the new node entries (and groups around each replaced node's chain), see layout.py."""
    chains: dict = {}
    for n, entry in zip(news, entries):
        chains.setdefault(n.anchor, []).append((n, entry))
    staying = [node for nid, node in nodes.items() if nid not in converted]
    anchors = sorted(chains, key=lambda a: pair(nodes[a].get("pos"), (0.0, 0.0)))
    if len(anchors) * (len(staying) + len(anchors) + len(entries)) > MAX_LAYOUT_WORK:
        _stack(nodes, converted, chains)
        return
    if out.get("groups") is None:
        out["groups"] = []
    groups = out["groups"] if isinstance(out["groups"], list) else []   # a malformed value stays as it was
    board = Board(staying + [nodes[a] for a in anchors], groups)
    group_id = max([g["id"] for g in groups if isinstance(g, dict) and is_int(g.get("id"))] + [0])
    for a in anchors:
        anchor, chain = nodes[a], chains[a]
        keys = [n.key for n, _ in chain]
        feeds = {n.key: [ref[1] for ref in n.inputs.values() if ref[0] == "new"] for n, _ in chain}
        grouped = len(chain) > 1
        if not grouped:     # one node for one: it takes the replaced node's width, so nothing needs to move for it
            w = pair(anchor.get("size"), (NODE_WIDTH, 0.0))[0]
            chain[0][1]["size"][0] = w if 200 <= w <= 2 * NODE_WIDTH else NODE_WIDTH
        offsets, width, tall = chain_layout(keys, feeds, {n.key: e["size"][1] for n, e in chain}, grouped,
                                            chain[0][1]["size"][0])
        x0, y0 = box(anchor)[:2]
        x0, y0 = board.make_room((x0, y0, x0 + width, y0 + tall), {id(anchor)})[:2]
        for n, entry in chain:
            entry["pos"] = [x0 + offsets[n.key][0], y0 + offsets[n.key][1]]
            board.nodes.append(entry)
        board.nodes.remove(anchor)
        if grouped:
            group_id += 1
            title = anchor.get("title") if isinstance(anchor.get("title"), str) else anchor.get("type")
            groups.append({"id": group_id, "title": str(title)[:200], "bounding": [x0, y0, width, tall],
                           "color": anchor["color"] if isinstance(anchor.get("color"), str) else GROUP_COLOR,
                           "font_size": 24, "flags": {}})


def _stack(nodes: dict, converted: set, chains: dict) -> None:
    """For graphs too large to lay out chain by chain: each chain stacked where its node stood, moved down past
    the nodes already there rather than drawn over them."""
    taken = Placer(box(n) for nid, n in nodes.items() if nid not in converted)
    for a, chain in chains.items():
        x, y = pair(nodes[a].get("pos"), (0.0, 0.0))
        for _, entry in chain:
            y = taken.place(x, y, NODE_WIDTH, entry["size"][1])
            entry["pos"] = [x, y]
            y += entry["size"][1] + GAP


def _link_types(links: list, by_id: dict, new_ids: set) -> None:
    """Every link's type is its origin's output type; a Reroute takes the type of what it now carries. A
    chain of reroutes is followed up once and its type written back down (passes over all links until
    nothing changed took one pass per reroute: quadratic on a 1,000-reroute chain)."""
    into = {(str(link[3]), link[4]): link for link in links}
    kinds = {}                   # id(link) -> its final type
    for link in links:
        path, on_path = [], set()
        while id(link) not in kinds:
            origin = by_id[str(link[1])]
            up = into.get((str(link[1]), 0)) if origin.get("type") == REROUTE and str(link[1]) not in new_ids \
                else None
            if up is None or id(up) in on_path or up is link:    # a source, or a loop (refused before this)
                kinds[id(link)] = _origin_type(link, origin, new_ids)
                break
            path.append(link)
            on_path.add(id(link))
            link = up
        kind = link[5] = kinds[id(link)]
        for below in path:
            below[5] = kinds[id(below)] = kind
            outs = by_id[str(below[1])].get("outputs") or []
            if outs and outs[0].get("type") != kind:
                outs[0]["type"] = kind


def _origin_type(link: list, origin: dict, new_ids: set):
    if str(link[1]) in new_ids:
        return SPECS[origin["type"]].outputs[link[2]][1]
    outs = origin.get("outputs") or []
    if link[2] < len(outs) and outs[link[2]].get("type") not in (None, "*"):
        return outs[link[2]]["type"]
    return link[5]


def _input_name(node: dict, slot: int) -> str:
    ins = node.get("inputs") or []
    if slot < len(ins):
        return (ins[slot].get("widget") or {}).get("name", ins[slot].get("name", str(slot)))
    return str(slot)


def _relink(nodes: list, links: list) -> None:
    """Make every node's inputs[].link and outputs[].links agree with the link list."""
    by_id = {str(n["id"]): n for n in nodes}
    for n in nodes:
        for slot in n.get("inputs") or []:
            slot["link"] = None
        for slot in n.get("outputs") or []:
            slot["links"] = []
    for lid, origin, oslot, target, tslot, _ in links:
        tin = by_id[str(target)].get("inputs") or []
        if tslot < len(tin):
            tin[tslot]["link"] = lid
        # validate.check_ui holds origin slots to the node's outputs: this pads nothing on a file
        outs = by_id[str(origin)]["outputs"] = by_id[str(origin)].get("outputs") or []
        while len(outs) <= oslot:
            outs.append({"name": "*", "type": "*", "links": []})
        if not isinstance(outs[oslot].get("links"), list):
            outs[oslot]["links"] = []
        outs[oslot]["links"].append(lid)
