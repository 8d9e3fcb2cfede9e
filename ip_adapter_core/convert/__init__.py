"""Workflows of cubiq/ComfyUI_IPAdapter_plus → this extension's nodes, in both workflow formats.

``convert(workflow)`` returns the converted workflow and a ``Report``: which nodes became which of
ours, what differs, and which nodes stay as they are (FaceID, for example) and why. It is pure Python
(no ComfyUI, no torch) so the editor's route, the command line (``scripts/convert_workflow.py``) and
the tests share it. Nodes of other packs and the editor's own (notes, reroutes, primitives, groups)
are kept as they are, with their links re-sourced where they came from a converted node.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from .context import Ctx, Engine, Unconvertible
from .flux_nodes import OWN_SAMPLERS, PACK_OF
from .graph import (CORE_TYPES, THEIR_NODES, ConversionError, all_sources, as_int, check_format, copy_json,
                    output_type, read_api, read_ui, write_api, write_ui)
from .limits import MAX_NODES
from .rules import NOT_HERE, RULES
from .validate import find_cycle, ui_link

__all__ = ["convert", "Report", "ConversionError", "THEIR_NODE_IDS", "FAMILIES"]

log = logging.getLogger("ipadapter.convert")
THEIR_NODE_IDS = tuple(THEIR_NODES)
PLUS = "ComfyUI_IPAdapter_plus"
FAMILIES = ("auto", "sd15", "sdxl")
GLOBAL_NOTES = (
    "the middle block is patched here (theirs never is, nor was it on SD1.5 before March 2024, so pictures can "
    "differ slightly for weight types that give it λ)",
    "plus and full-face adapters without a negative image: the negative here is the reference's (zero "
    "normalised pixels), theirs encodes a black image",
)
# Names the checkpoint, UNet or adapter files of a family usually carry.
SDXL_NAMES = re.compile(r"xl|cosxl|pony|illustrious|noobai|playground|juggernaut.?x|proteus|sdxl", re.I)
SD15_NAMES = re.compile(r"sd.?1\.?5|sd15|v1-5|1\.5|realistic.?vision|dreamshaper_8|juggernaut_reborn", re.I)
MODEL_WIDGETS = {"CheckpointLoaderSimple": "ckpt_name", "CheckpointLoader": "ckpt_name",
                 "UNETLoader": "unet_name", "ImageOnlyCheckpointLoader": "ckpt_name"}


@dataclass
class Report:
    """What a conversion did, for the editor's notice and the command line."""

    format: str
    family: str | None
    family_source: str
    converted: list = field(default_factory=list)   # {"id", "type", "title", "to", "notes", "lost", "filled"}
    kept: list = field(default_factory=list)        # {"id", "type", "reason"}
    dropped: list = field(default_factory=list)     # {"node", "input", "why"}
    graph_notes: list = field(default_factory=list)  # differences that come from the rest of the graph

    @property
    def changed(self) -> bool:
        return bool(self.converted)

    @property
    def complete(self) -> bool:
        return not self.kept and not self.dropped and not any(c["lost"] for c in self.converted)

    def as_dict(self) -> dict:
        return {"format": self.format, "family": self.family, "family_source": self.family_source,
                "converted": self.converted, "kept": self.kept, "dropped": self.dropped,
                "complete": self.complete,
                "notes": (list(GLOBAL_NOTES) + self.graph_notes) if self.converted else [],
                "summary": self.summary()}

    def summary(self) -> str:
        if not self.converted and not self.kept:
            return f"No {PLUS} nodes in this workflow."
        made = sum(len(c["to"]) for c in self.converted)
        packs = " and ".join(sorted({PACK_OF.get(c["type"], PLUS) for c in self.converted + self.kept}))
        text = f"Converted {len(self.converted)} {packs} node(s) into {made} node(s) of this extension."
        if self.kept:
            names = ", ".join(sorted({k["type"] for k in self.kept}))
            text += f" Not converted ({len(self.kept)}, kept as they are): {names}."
        if self.dropped:
            text += f" {len(self.dropped)} link(s) could not be kept."
        return text

    def text(self) -> str:
        lines = [self.summary()]
        if self.family:
            lines.append(f"Model family: {self.family} ({self.family_source}).")
        for c in self.converted:
            title = f" “{c['title']}”" if c.get("title") else ""
            made = ", ".join(c["to"]) or "(no node: its inputs are wired to its consumers)"
            lines.append(f"  #{c['id']} {c['type']}{title} → {made}")
            for name in c.get("filled", []):
                lines.append(f"      older file: {name} missing, default used")
            if c.get("extra_values"):
                lines.append(f"      newer file? {c['extra_values']} widget value(s) beyond today's widgets ignored")
            lines += [f"      differs: {n}" for n in c["notes"]]
            lines += [f"      not kept: {n}" for n in c["lost"]]
        for k in self.kept:
            lines.append(f"  #{k['id']} {k['type']}: not converted, {k['reason']}")
        for d in self.dropped:
            lines.append(f"  link into #{d['node']}.{d['input']} removed: {d['why']}")
        if self.converted:
            lines += ["Differences that apply to every converted graph:"] + [f"  - {n}" for n in GLOBAL_NOTES]
            lines += [f"  - {n}" for n in self.graph_notes]
        return "\n".join(lines)


def detect_family(workflow: dict, fmt: str) -> tuple[str | None, str]:
    """SD1.5 or SDXL from the names of the checkpoints and adapters the graph loads (None if unclear)."""
    names = []
    if fmt == "ui":
        for node in workflow["nodes"]:
            values = node.get("widgets_values")
            if node.get("type") in MODEL_WIDGETS and isinstance(values, list) and values:
                names.append(str(values[0]))
            elif node.get("type") == "IPAdapterModelLoader" and isinstance(values, list) and values:
                names.append(str(values[0]))
    else:
        for node in workflow.values():
            inputs = node.get("inputs") or {}
            for key in (MODEL_WIDGETS.get(node.get("class_type")), "ipadapter_file"):
                if key and isinstance(inputs.get(key), str):
                    names.append(inputs[key])
    for name in names:
        if SDXL_NAMES.search(name):
            return "sdxl", f"from '{name}'"
        if SD15_NAMES.search(name):
            return "sd15", f"from '{name}'"
    return None, "not found in the checkpoint or adapter names"


def _deps(theirs: dict, engine: Engine, private: bool = False) -> dict:
    """Their id -> the ids of theirs that feed it (links through reroutes count); ``private``: only through links
    of their own types (a node that stays can still feed ours a MODEL or an IMAGE, not an IPADAPTER)."""
    deps = {nid: set() for nid in theirs}
    for nid, node in theirs.items():
        for ref in node.links.values():
            up = engine.trace(ref)
            if up is not None and up[0] == "old" and up[1] in theirs and up[1] != nid and not (
                    private and output_type(theirs[up[1]], up[2]) in CORE_TYPES):
                deps[nid].add(up[1])
    return deps


def _order(theirs: dict, engine: Engine) -> list:
    """Their nodes, each after the nodes of theirs that feed it. Iterative: a chain of 3,000 of their nodes
    must not reach Python's recursion limit."""
    deps = _deps(theirs, engine)
    done, out = set(), []
    for start in sorted(theirs, key=_id_key):
        stack = [(start, iter(sorted(deps[start], key=_id_key)))]
        on_stack = {start}
        while stack:
            nid, ups = stack[-1]
            up = next(ups, None)
            if up is None:
                stack.pop()
                on_stack.discard(nid)
                if nid not in done:
                    done.add(nid)
                    out.append(nid)
            elif up not in done and up not in on_stack:
                stack.append((up, iter(sorted(deps[up], key=_id_key))))
                on_stack.add(up)
    return out


def _id_key(nid: str):
    number = as_int(nid)
    return (0, number, "") if number is not None else (1, 0, nid)


def _run(theirs: dict, reroutes: dict, family, forced: dict, used: frozenset) -> Engine:
    engine = Engine(theirs, reroutes, family, used)
    for nid in _order(theirs, engine):
        node = theirs[nid]
        before = (len(engine.news), len(engine.cv_loaders))
        ctx = None
        try:
            if nid in forced:
                raise Unconvertible(forced[nid])
            if node.type in NOT_HERE:
                raise Unconvertible(NOT_HERE[node.type])
            through = []
            for name, ref in node.links.items():
                up = engine.trace(ref)
                if up is not None and up[0] == "old" and up[1] in engine.kept:
                    kind = output_type(theirs[up[1]], up[2])
                    if kind not in CORE_TYPES:
                        raise Unconvertible(f"its input {name} comes from #{up[1]} ({theirs[up[1]].type}), which "
                                            f"is not converted, and carries {kind}, which only that pack reads")
                    through.append(f"its input {name} comes from #{up[1]} ({theirs[up[1]].type}), which is not "
                                   f"converted: the {kind} link is kept")
            try:
                ctx = Ctx(engine, node)
                ctx.record["notes"].extend(through)
                RULES[node.type](ctx)
            except Unconvertible:
                raise
            except Exception as exc:  # noqa: BLE001 - a malformed node must not stop the others' conversion
                log.warning("ComfyUI_IPAdapter_plus node #%r (%r) not converted", nid, node.type, exc_info=True)
                raise Unconvertible(f"its values could not be read ({type(exc).__name__}: {exc})") from exc
        except Unconvertible as exc:
            # Undo what the rule added before it gave up, so the node stays whole. Only this node's entries
            # are touched: copying the maps per node made a graph of n of their nodes cost n².
            del engine.news[before[0]:]
            for slot in (ctx.slots if ctx else ()):
                engine.outmap.pop((nid, slot), None)
                engine.pipes.pop((nid, slot), None)
            while len(engine.cv_loaders) > before[1]:
                engine.cv_loaders.popitem()      # the loaders this rule added are the last ones
            engine.records.pop(nid, None)
            engine.facts.pop(nid, None)
            engine.kept[nid] = str(exc)
    return engine


def _keep_closure(theirs: dict, engine: Engine, consumers: dict, forced: dict) -> dict:
    """``forced`` grown through the graph at once, along links of their own types only (IPADAPTER, EMBEDS, ...;
    a MODEL or an IMAGE fits ours either way): a node that stays keeps the nodes of theirs it feeds such a link
    (``_run`` does that), and a node whose such outputs go only to nodes that stay stays too. ``consumers``: their
    id -> the nodes that read one of its outputs of their types. One rerun per newly forced node was quadratic on
    long chains."""
    deps = _deps(theirs, engine, private=True)
    down = {nid: [] for nid in theirs}
    for nid, ups in deps.items():
        for up in ups:
            down[up].append(nid)
    feeds = {nid: set() for nid in theirs}         # who feeds whom, among consumers (any node)
    for nid, users in consumers.items():
        for user in users:
            if user in feeds:
                feeds[user].add(nid)
    kept = set(engine.kept)
    left = {nid: len(users) for nid, users in consumers.items()}
    queue = list(kept)
    forced = dict(forced)
    while queue:
        nid = queue.pop()
        for d in down[nid]:
            if d not in kept:
                kept.add(d)
                queue.append(d)
        for up in feeds[nid]:
            left[up] -= 1
            if not left[up] and up not in kept:
                kept.add(up)
                forced[up] = "its outputs go only to nodes that are not converted"
                queue.append(up)
    return forced


def convert(workflow: dict, family: str = "auto", max_nodes: int | None = MAX_NODES) -> tuple[dict, Report]:
    """Convert a workflow of either format; returns (the new workflow, the report). A workflow without
    nodes of theirs comes back unchanged. A malformed or looping workflow, or one of more than
    ``max_nodes`` nodes (limits.py; None: no limit), raises ConversionError naming what is wrong."""
    if not (isinstance(family, str) and family in FAMILIES):
        raise ConversionError(f"family: expected one of {', '.join(FAMILIES)}; got {family!r}")
    fmt = check_format(workflow, max_nodes)
    sources = all_sources(workflow, fmt)
    loop = find_cycle({nid: [ref[1] for ref in refs] for nid, refs in sources.items()})
    if loop:
        types = _types(workflow, fmt)
        path = " → ".join(f"#{nid} ({types.get(nid, '?')})" for nid in [*reversed(loop), loop[-1]])
        raise ConversionError(f"the links form a loop: {path}; ComfyUI cannot run a loop either: remove "
                              "one of these links and convert again")
    if fmt == "ui":
        theirs, reroutes = read_ui(workflow)
    else:
        theirs, reroutes = read_api(workflow), {}
    fam, source = detect_family(workflow, fmt) if family == "auto" else (family, "as asked")
    report = Report(fmt, fam, source)
    if not theirs:
        if fmt == "ui" and _subgraph_nodes(workflow):
            return convert_subgraphs(copy_json(workflow), fam, report, max_nodes), report
        return workflow, report
    # A node of theirs whose outputs of their own types feed only nodes that stay stays too: converted, it would
    # only lose those links.
    consumers, used = {nid: set() for nid in theirs}, set()
    probe = Engine(theirs, reroutes, fam)
    for nid, refs in sources.items():
        if nid in reroutes:
            continue
        for ref in refs:
            up = probe.trace(ref)
            if up is not None and up[1] in consumers:
                if output_type(theirs[up[1]], up[2]) not in CORE_TYPES:
                    consumers[up[1]].add(nid)
                used.add((up[1], up[2]))
    forced, reasons = {}, {}
    for _ in range(len(theirs) + 1):   # the closure makes this one or two passes (a check, not a search)
        engine = _run(theirs, reroutes, fam, forced, frozenset(used))
        for nid, why in engine.kept.items():   # the first reason is the cause; a rerun only sees its effects
            reasons.setdefault(nid, why)
        more = _keep_closure(theirs, engine, consumers, forced)
        if more == forced:
            break
        forced = more
    kept = set(engine.kept)
    if fmt == "ui":
        out, dropped = write_ui(workflow, theirs, engine.news, engine.outmap, kept)
    else:
        out, dropped = write_api(workflow, theirs, engine.news, engine.outmap, kept)
    for nid in _order(theirs, engine):
        node = theirs[nid]
        if nid in kept:
            report.kept.append({"id": nid, "type": node.type, "reason": reasons[nid]})
        else:
            rec = engine.records.get(nid, {"to": [], "notes": [], "lost": []})
            report.converted.append({"id": nid, "type": node.type, "title": node.title, "to": rec["to"],
                                     "notes": rec["notes"], "lost": rec["lost"], "filled": node.filled,
                                     "extra_values": node.extra_values})
    report.dropped = [{"node": n, "input": i, "why": w} for n, i, w in dropped]
    report.graph_notes = _graph_notes(workflow, fmt) if report.converted else []
    if fmt == "ui" and _subgraph_nodes(out):
        out = convert_subgraphs(out, fam, report, max_nodes)
    return out, report


def _types(workflow: dict, fmt: str) -> dict:
    if fmt == "ui":
        return {str(n["id"]): n.get("type") for n in workflow["nodes"]}
    return {str(nid): n.get("class_type") for nid, n in workflow.items()}


SUBGRAPH_IN, SUBGRAPH_OUT = -10, -20   # the ids the editor gives a subgraph's input and output nodes


def convert_subgraphs(out: dict, family: str | None, report: Report, max_nodes: int | None) -> dict:
    """Convert the nodes of theirs inside each subgraph definition of ``out`` (a copy), as a graph of its own:
    its input and output nodes (ids -10 and -20, which its links name) stand in as nodes that stay, and each
    input's and output's ``linkIds`` are written again from the converted links. The report lists the nodes as
    "<subgraph name>/<id>". A malformed definition raises ConversionError naming it."""
    for k, sg in enumerate(out["definitions"]["subgraphs"]):
        if not (isinstance(sg, dict) and any(isinstance(n, dict) and n.get("type") in THEIR_NODES
                                             for n in (sg.get("nodes") if isinstance(sg.get("nodes"), list)
                                                       else []))):
            continue
        name = str(sg.get("name") or sg.get("id") or k)[:80]
        try:
            sg_in, sg_out = _slots(sg, "inputs"), _slots(sg, "outputs")
            graph = {"nodes": [{"id": SUBGRAPH_IN, "type": "(subgraph input)", "pos": [0, 0], "size": [0, 0],
                                "outputs": [{"name": s.get("name"), "type": s.get("type"), "links": []}
                                            for s in sg_in]},
                               {"id": SUBGRAPH_OUT, "type": "(subgraph output)", "pos": [0, 0], "size": [0, 0],
                                "inputs": [{"name": s.get("name"), "type": s.get("type"), "link": None}
                                           for s in sg_out]}] + list(sg["nodes"]),
                     "links": sg.get("links") if sg.get("links") is not None else [],
                     "groups": sg.get("groups") if isinstance(sg.get("groups"), list) else [],
                     "last_link_id": _state(sg, "lastLinkId")}
            converted, sub = convert(graph, family or "auto", max_nodes)
        except ConversionError as exc:
            raise ConversionError(f"subgraph {name!r}: {exc}") from None
        links = [link for link in (ui_link(raw, i) for i, raw in enumerate(converted["links"]))]
        sg["nodes"] = [n for n in converted["nodes"] if n["id"] not in (SUBGRAPH_IN, SUBGRAPH_OUT)]
        if isinstance(sg.get("groups"), list) or converted["groups"]:
            sg["groups"] = converted["groups"]     # with a group around each replaced node's chain
        sg["links"] = [{"id": lid, "origin_id": o, "origin_slot": os_, "target_id": t, "target_slot": ts, "type": kind}
                       for lid, o, os_, t, ts, kind in links]
        for slot, entry in enumerate(sg_in):
            entry["linkIds"] = [link[0] for link in links if link[1] == SUBGRAPH_IN and link[2] == slot]
        for slot, entry in enumerate(sg_out):
            entry["linkIds"] = [link[0] for link in links if link[3] == SUBGRAPH_OUT and link[4] == slot]
        if isinstance(sg.get("state"), dict):
            sg["state"]["lastNodeId"] = max([n["id"] for n in sg["nodes"]] + [_state(sg, "lastNodeId")])
            sg["state"]["lastLinkId"] = max([link[0] for link in links] + [_state(sg, "lastLinkId")])
        for entry in sub.converted + sub.kept:
            entry["id"] = f"{name}/{entry['id']}"
        report.converted += sub.converted
        report.kept += sub.kept
        report.dropped += [{**d, "node": f"{name}/{d['node']}"} for d in sub.dropped]
        report.graph_notes += [n for n in sub.graph_notes if n not in report.graph_notes]
        if report.family is None and sub.family is not None:
            report.family, report.family_source = sub.family, sub.family_source
    return out


def _slots(sg: dict, key: str) -> list:
    entries = sg.get(key) if sg.get(key) is not None else []
    if not (isinstance(entries, list) and all(isinstance(e, dict) for e in entries)):
        raise ConversionError(f"its {key} must be a list of objects, found {type(entries).__name__}")
    return entries


def _state(sg: dict, key: str) -> int:
    value = (sg.get("state") or {}).get(key) if isinstance(sg.get("state"), dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _subgraph_nodes(workflow: dict) -> int:
    """Their nodes inside subgraph definitions; anything unexpected there counts nothing."""
    definitions = workflow.get("definitions")
    subgraphs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
    return sum(1 for sg in (subgraphs if isinstance(subgraphs, list) else []) if isinstance(sg, dict)
               for n in (sg.get("nodes") if isinstance(sg.get("nodes"), list) else [])
               if isinstance(n, dict) and n.get("type") in THEIR_NODES)


def _graph_notes(workflow: dict, fmt: str) -> list:
    types = {n.get("type") for n in workflow["nodes"]} if fmt == "ui" else \
        {n.get("class_type") for n in workflow.values()}
    notes = []
    for kind in sorted(types & set(OWN_SAMPLERS)):
        notes.append(f"{kind} ({OWN_SAMPLERS[kind]}) stays: it runs Flux through its own loop, which ComfyUI's block "
                     "patches never reach, so the converted image prompt does not act there; use KSampler (or "
                     "SamplerCustomAdvanced) instead")
    if "DualCFGGuider" in types:
        notes.append("DualCFGGuider: theirs gives the positive image tokens to the guider's 'negative' cond "
                     "(it picks tokens by batch position), ours gives it the negative tokens")
    return notes
