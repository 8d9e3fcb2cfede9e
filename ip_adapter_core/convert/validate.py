"""What a workflow must be before the converter walks it, checked once when it is read.

Everything later (rules, writers, layout) may then index nodes, links and slots without meeting a
raw TypeError or KeyError, and takes no size from the file: an origin_slot of 10^9 that reached the
writer would make it pad that node's outputs to 10^9 entries. A malformed node or link is refused
with a ``ConversionError`` that names it, what was expected and what was found. Links that name a
node the file does not have (left behind by older editors) are not an error: they are left out, as
the writer always did.
"""
from __future__ import annotations

__all__ = ["ConversionError", "check_ui", "check_api", "ui_link", "api_link", "find_cycle", "is_int"]

RESAVE = "open the file in the editor and save it again, or fix it by hand"


class ConversionError(ValueError):
    """A workflow the converter cannot read, with a message that says what was expected."""


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def found(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '…' if len(text) > 60 else text}"


def _count(n: int, max_nodes: int | None) -> None:
    if max_nodes is not None and n > max_nodes:
        raise ConversionError(f"the workflow has {n:,} nodes; the converter takes at most {max_nodes:,} "
                              "(ip_adapter_core/convert/limits.py MAX_NODES): convert a smaller part of it")


# ---------------------------------------------------------------------------- the editor's format

def ui_link(raw, index: int) -> list:
    """One entry of a UI file's ``links``, either form, as [id, origin, origin slot, target, target slot, type]."""
    where = f"links[{index}]"
    if isinstance(raw, dict):
        try:
            raw = [raw["id"], raw["origin_id"], raw["origin_slot"], raw["target_id"], raw["target_slot"],
                   raw.get("type", "*")]
        except KeyError as exc:
            raise ConversionError(f"{where}: a link object needs id, origin_id, origin_slot, target_id and "
                                  f"target_slot; {exc.args[0]!r} is missing; {RESAVE}") from None
    if not isinstance(raw, (list, tuple)) or len(raw) not in (5, 6):
        raise ConversionError(f"{where}: expected a link [id, origin id, origin slot, target id, target slot, "
                              f"type], found {found(raw)}; {RESAVE}")
    link = list(raw) + (["*"] if len(raw) == 5 else [])
    for k, name in enumerate(("id", "origin id", "origin slot", "target id", "target slot")):
        if not is_int(link[k]):
            raise ConversionError(f"{where} (link {link[0]!r}): its {name} must be an integer, found "
                                  f"{found(link[k])}; {RESAVE}")
    return link


def check_ui(workflow: dict, max_nodes: int | None) -> None:
    nodes = workflow["nodes"]
    _count(len(nodes), max_nodes)
    slots, first = {}, {}        # id -> (inputs, outputs); id -> where it was first seen
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise ConversionError(f"nodes[{i}]: expected a node object, found {found(node)}; {RESAVE}")
        nid, kind = node.get("id"), node.get("type")
        if not is_int(nid):
            raise ConversionError(f"nodes[{i}] (type {kind!r}): a node id must be an integer, found {found(nid)}; "
                                  f"{RESAVE}")
        if nid in first:
            raise ConversionError(f"node id {nid} is used twice, by {first[nid]} and nodes[{i}] (type {kind!r}); "
                                  f"node ids must be unique: {RESAVE}")
        first[nid] = f"nodes[{i}] (type {kind!r})"
        label = f"node #{nid} ({kind!r})"
        if not isinstance(kind, str):
            raise ConversionError(f"{label}: its type must be a string, found {found(kind)}; {RESAVE}")
        counts = []
        for key in ("inputs", "outputs"):
            entries = node.get(key)
            if entries is None:
                entries = []
            if not isinstance(entries, list):
                raise ConversionError(f"{label}: {key} must be a list, found {found(entries)}; {RESAVE}")
            for k, slot in enumerate(entries):
                if not isinstance(slot, dict):
                    raise ConversionError(f"{label}: {key}[{k}] must be an object, found {found(slot)}; {RESAVE}")
            counts.append(len(entries))
        for k, slot in enumerate(node.get("inputs") or []):
            link, widget = slot.get("link"), slot.get("widget")
            if link is not None and not is_int(link):
                raise ConversionError(f"{label}: inputs[{k}].link must be a link id (an integer) or null, found "
                                      f"{found(link)}; {RESAVE}")
            if widget is not None and not isinstance(widget, dict):
                raise ConversionError(f"{label}: inputs[{k}].widget must be an object, found {found(widget)}; "
                                      f"{RESAVE}")
            name = (widget or {}).get("name", slot.get("name"))
            if name is not None and not isinstance(name, str):
                raise ConversionError(f"{label}: inputs[{k}] has the name {found(name)}; expected a string; "
                                      f"{RESAVE}")
        slots[nid] = tuple(counts)
    links = workflow["links"]
    if links is None:
        links = []
    if not isinstance(links, list):
        raise ConversionError(f"links must be a list, found {found(links)}; {RESAVE}")
    by_id = {}
    for index, raw in enumerate(links):
        link = ui_link(raw, index)
        lid, origin, oslot, target, tslot = link[:5]
        if lid in by_id and by_id[lid] != link:
            raise ConversionError(f"link id {lid} is used by two different links ({by_id[lid][:5]} and "
                                  f"{link[:5]}); {RESAVE}")
        by_id[lid] = link
        if origin not in slots or target not in slots:
            continue        # a leftover link to a removed node: left out (graph.ui_links)
        if not 0 <= oslot < slots[origin][1]:
            raise ConversionError(f"link {lid}: origin_slot {oslot}, but node #{origin} has {slots[origin][1]} "
                                  f"output(s); {RESAVE}")
        if not 0 <= tslot < slots[target][0]:
            raise ConversionError(f"link {lid}: target_slot {tslot}, but node #{target} has {slots[target][0]} "
                                  f"input(s); {RESAVE}")


# ---------------------------------------------------------------------------- the API format

def api_link(value) -> bool:
    """Whether an API input value is a link: [node id, output slot], as ComfyUI reads it."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
        and isinstance(value[1], int)


def check_api(workflow: dict, max_nodes: int | None, outputs: dict) -> None:
    """``outputs``: class_type -> number of outputs, for the types whose outputs are known (theirs)."""
    _count(len(workflow), max_nodes)
    ids = {}
    for key, node in workflow.items():
        if not (isinstance(key, str) or is_int(key)):
            raise ConversionError(f"node id {found(key)}: API-format node ids must be strings; {RESAVE}")
        if str(key) in ids:
            raise ConversionError(f"node id {str(key)!r} is used twice ({ids[str(key)]!r} and {key!r}); {RESAVE}")
        ids[str(key)] = key
    for key, node in workflow.items():
        label = f"node {str(key)!r}"
        kind = node["class_type"]
        if not isinstance(kind, str):
            raise ConversionError(f"{label}: class_type must be a string, found {found(kind)}; {RESAVE}")
        label = f"node {str(key)!r} ({kind})"
        for field in ("inputs", "_meta"):
            if node.get(field) is not None and not isinstance(node[field], dict):
                raise ConversionError(f"{label}: {field} must be an object, found {found(node[field])}; {RESAVE}")
        for name, value in (node.get("inputs") or {}).items():
            if not api_link(value):
                continue
            source, slot = value
            if isinstance(source, bool) or isinstance(slot, bool) or slot < 0:
                raise ConversionError(f"{label}: input {name!r} is {found(value)}; a link is [node id, output slot "
                                      f"≥ 0]; {RESAVE}")
            origin = workflow.get(source, workflow.get(str(source)))
            known = outputs.get(origin["class_type"]) if isinstance(origin, dict) else None
            if known is not None and slot >= known:
                raise ConversionError(f"{label}: input {name!r} takes output {slot} of node {str(source)!r} "
                                      f"({origin['class_type']}), which has {known} output(s); {RESAVE}")


# ---------------------------------------------------------------------------- loops

def find_cycle(sources: dict) -> list | None:
    """A list of node ids that feed each other in a loop, or None. ``sources``: id -> ids that feed it.
    Iterative (a 3,000-node chain must not reach Python's recursion limit), linear in nodes and links."""
    state = {}                   # id -> 1 on the current path, 2 done
    for start in sources:
        if start in state:
            continue
        path, stack = [start], [iter(sources.get(start, ()))]
        state[start] = 1
        while stack:
            up = next(stack[-1], None)
            if up is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(up) == 1:
                return path[path.index(up):]
            elif up not in state:
                state[up] = 1
                path.append(up)
                stack.append(iter(sources.get(up, ())))
    return None
