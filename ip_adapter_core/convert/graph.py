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

import copy
from dataclasses import dataclass, field

from .our_nodes import CONTROL, SPECS
from .plus_nodes import NODES as THEIR_NODES

REROUTE = "Reroute"
NODE_HEIGHT, ROW_HEIGHT, NODE_WIDTH, GAP, TITLE = 30, 24, 320, 20, 30


class ConversionError(ValueError):
    """A workflow the converter cannot read, with a message that says what was expected."""


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


def check_format(workflow) -> str:
    if is_ui(workflow):
        return "ui"   # nodes inside subgraphs are left as they are; the report counts them
    if is_api(workflow):
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
    """link id -> [id, origin id, origin slot, target id, target slot, type], both link forms."""
    out = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                    link.get("type", "*")]
        out[link[0]] = list(link)
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
            values, filled, extra = _widget_values(node["type"], node.get("widgets_values"))
            theirs[nid] = Theirs(nid, node["type"], values, ins, node.get("title"), filled, extra)
    return theirs, reroutes


def all_sources(workflow: dict, fmt: str) -> dict:
    """node id -> refs of everything that feeds it, for every node of either format."""
    out = {}
    if fmt == "ui":
        links = ui_links(workflow)
        for link in links.values():
            out.setdefault(str(link[3]), []).append(("old", str(link[1]), link[2]))
    else:
        for nid, node in workflow.items():
            out[str(nid)] = [("old", str(v[0]), v[1]) for v in (node.get("inputs") or {}).values()
                             if _is_api_link(v)]
    return out


def read_api(workflow: dict) -> dict:
    theirs = {}
    for nid, node in workflow.items():
        kind = node.get("class_type")
        if kind not in THEIR_NODES:
            continue
        inputs = node.get("inputs") or {}
        links = {k: ("old", str(v[0]), v[1]) for k, v in inputs.items() if _is_api_link(v)}
        names = [w.name for w in THEIR_NODES[kind].widgets]
        stored = {k: v for k, v in inputs.items() if k in names and not _is_api_link(v)}
        values, filled, _ = _widget_values(kind, stored)
        filled = [n for n in filled if n not in links]
        theirs[str(nid)] = Theirs(str(nid), kind, values, links, (node.get("_meta") or {}).get("title"), filled)
    return theirs


def _is_api_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
        and isinstance(value[1], int)


# ---------------------------------------------------------------------------- resolving refs

class Resolver:
    """Follows refs through the output map to the node that finally provides a value."""

    def __init__(self, converted: set, outmap: dict, kept_theirs: set, ids: dict):
        self.converted, self.outmap, self.kept_theirs, self.ids = converted, outmap, kept_theirs, ids
        self.dropped = []   # (consumer, input, why) for the report

    def final(self, ref):
        """("new", key, slot) or ("old", id, slot) of a node that stays, or None (no such output)."""
        seen = 0
        while ref is not None and ref[0] == "old" and ref[1] in self.converted:
            # an output the rule did not map has no equivalent: its consumers lose that input (reported)
            ref = self.outmap.get((ref[1], ref[2]))
            seen += 1
            if seen > 10000:
                raise ConversionError("a cycle of links between converted nodes")
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
            self.dropped.append((consumer, name, f"it came from node #{target[1]}, which was not converted"))
            return None
        if not ours and consumer in self.kept_theirs and target[0] == "new":
            self.dropped.append((consumer, name, "it came from a node that was converted to this extension's"))
            return None
        return self.node_slot(target)


# ---------------------------------------------------------------------------- writing

def _new_ids(existing, news) -> dict:
    top = max([int(i) for i in existing if str(i).lstrip("-").isdigit()] + [0])
    return {n.key: str(top + k + 1) for k, n in enumerate(news)}


def write_api(workflow: dict, theirs: dict, news: list, outmap: dict, kept: set) -> tuple[dict, list]:
    converted = set(theirs) - kept
    ids = _new_ids(workflow, news)
    res = Resolver(converted, outmap, kept, ids)
    out = {}
    for nid, node in workflow.items():
        if nid in converted:
            continue
        node = copy.deepcopy(node)
        for name, value in list((node.get("inputs") or {}).items()):
            if _is_api_link(value):
                src = res.link(("old", str(value[0]), value[1]), nid, name, ours=False)
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


def _pair(value, default) -> tuple:
    """A position or size as numbers: the editor writes [x, y]; old LiteGraph files {"0": x, "1": y}."""
    if isinstance(value, dict):
        value = [value.get("0"), value.get("1")]
    try:
        x, y = list(value)[:2]
        return float(x), float(y)
    except (TypeError, ValueError):
        return default


def _box(node: dict) -> tuple:
    x, y = _pair(node.get("pos"), (0.0, 0.0))
    w, h = _pair(node.get("size"), (200.0, 100.0))
    return (x, y - TITLE, x + w, y + h)


def _free_y(taken: list, x, y, w, h) -> float:
    """The first y at or below ``y`` where a w×h node at x overlaps none of ``taken`` (title bars included)."""
    for _ in range(len(taken) + 1):
        hit = [b for b in taken if b[0] < x + w and x < b[2] and b[1] < y + h and y - TITLE < b[3]]
        if not hit:
            break
        y = max(b[3] for b in hit) + GAP + TITLE
    return y


def _height(spec) -> int:
    rows = max(len(spec.sockets), len(spec.outputs)) + len([w for w in spec.widgets if w != CONTROL])
    return NODE_HEIGHT + ROW_HEIGHT * rows


def write_ui(workflow: dict, theirs: dict, news: list, outmap: dict, kept: set) -> tuple[dict, list]:
    converted = set(theirs) - kept
    out = copy.deepcopy(workflow)
    nodes = {str(n["id"]): n for n in out["nodes"]}
    ids = _new_ids(nodes, news)
    res = Resolver(converted, outmap, kept, ids)
    old_links = ui_links(out)

    # New nodes, stacked where the node of theirs stood, in the order the rules made them, each moved down
    # past the nodes that stay (and the ones placed before it) rather than drawn over them.
    placed = {}
    taken = [_box(n) for nid, n in nodes.items() if nid not in converted]
    order = max([n.get("order", 0) for n in out["nodes"]] + [0])
    new_nodes = []
    for k, n in enumerate(news):
        spec = SPECS[n.type]
        anchor = nodes[n.anchor]
        x, y = placed.get(n.anchor, _pair(anchor.get("pos"), (0.0, 0.0)))
        height = _height(spec)
        y = _free_y(taken, x, y, NODE_WIDTH, height)
        taken.append((x, y - TITLE, x + NODE_WIDTH, y + height))
        placed[n.anchor] = (x, y + height + GAP)
        entry = {"id": int(ids[n.key]), "type": n.type, "pos": [x, y], "size": [NODE_WIDTH, height],
                 "flags": {}, "order": order + k + 1, "mode": anchor.get("mode", 0),
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

    # Links: keep those between nodes that stay, re-source those that came from converted nodes, add ours.
    links = []
    next_id = max([int(i) for i in old_links] + [int(out.get("last_link_id") or 0)]) + 1
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
    # Every link's type is its origin's output type; a Reroute takes the type of what it now carries.
    new_ids = set(ids.values())
    into = {(str(link[3]), link[4]): link for link in links}
    for _ in range(len(links) + 1):
        changed = False
        for link in links:
            origin = by_id[str(link[1])]
            outs = origin.get("outputs") or []
            kind = link[5]
            if str(link[1]) in new_ids:
                kind = SPECS[origin["type"]].outputs[link[2]][1]
            elif origin.get("type") == REROUTE and (str(link[1]), 0) in into:
                kind = into[(str(link[1]), 0)][5]
                if outs and outs[0].get("type") != kind:
                    outs[0]["type"] = kind
            elif link[2] < len(outs) and outs[link[2]].get("type") not in (None, "*"):
                kind = outs[link[2]]["type"]
            changed = changed or kind != link[5]
            link[5] = kind
        if not changed:
            break
    _relink(all_nodes, links)
    out["nodes"] = all_nodes
    out["links"] = links
    out["last_node_id"] = max([int(n["id"]) for n in all_nodes if isinstance(n["id"], int)] + [0])
    out["last_link_id"] = max([link[0] for link in links] + [int(out.get("last_link_id") or 0)])
    return out, res.dropped


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
        tin = by_id[str(target)].setdefault("inputs", [])
        if tslot < len(tin):
            tin[tslot]["link"] = lid
        outs = by_id[str(origin)].setdefault("outputs", [])
        while len(outs) <= oslot:
            outs.append({"name": "*", "type": "*", "links": []})
        outs[oslot].setdefault("links", []).append(lid)
