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
from .graph import (THEIR_NODES, ConversionError, all_sources, as_int, check_format, read_api, read_ui, write_api,
                    write_ui)
from .limits import MAX_NODES
from .rules import NOT_HERE, RULES
from .validate import find_cycle

__all__ = ["convert", "Report", "ConversionError", "THEIR_NODE_IDS", "FAMILIES"]

log = logging.getLogger("ipadapter.convert")
THEIR_NODE_IDS = tuple(THEIR_NODES)
PLUS = "ComfyUI_IPAdapter_plus"
FAMILIES = ("auto", "sd15", "sdxl")
GLOBAL_NOTES = (
    "the middle block is patched here (theirs never is, so pictures can differ slightly for weight types "
    "that give it λ)",
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
    subgraph_nodes: int = 0                         # their nodes inside subgraphs, left as they are
    graph_notes: list = field(default_factory=list)  # differences that come from the rest of the graph

    @property
    def changed(self) -> bool:
        return bool(self.converted)

    @property
    def complete(self) -> bool:
        return not self.kept and not self.dropped and not any(c["lost"] for c in self.converted) \
            and not self.subgraph_nodes

    def as_dict(self) -> dict:
        return {"format": self.format, "family": self.family, "family_source": self.family_source,
                "converted": self.converted, "kept": self.kept, "dropped": self.dropped,
                "subgraph_nodes": self.subgraph_nodes, "complete": self.complete,
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
        if self.subgraph_nodes:
            lines.append(f"  {self.subgraph_nodes} node(s) inside subgraphs were left as they are: unpack the "
                         "subgraphs in the editor and convert again")
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


def _deps(theirs: dict, engine: Engine) -> dict:
    """Their id -> the ids of theirs that feed it (links through reroutes count)."""
    deps = {nid: set() for nid in theirs}
    for nid, node in theirs.items():
        for ref in node.links.values():
            up = engine.trace(ref)
            if up is not None and up[0] == "old" and up[1] in theirs and up[1] != nid:
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
            for name, ref in node.links.items():
                up = engine.trace(ref)
                if up is not None and up[0] == "old" and up[1] in engine.kept:
                    raise Unconvertible(f"its input {name} comes from #{up[1]} ({theirs[up[1]].type}), "
                                        "which is not converted")
            try:
                ctx = Ctx(engine, node)
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
    """``forced`` grown by every node of theirs whose consumers all stay, through the graph at once: a node
    that stays keeps the nodes of theirs it feeds (``_run`` does that), and a node whose outputs go only
    to nodes that stay stays too. One rerun per newly forced node was quadratic on long chains."""
    deps = _deps(theirs, engine)
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
    if fmt == "ui":
        report.subgraph_nodes = _subgraph_nodes(workflow)
    if not theirs:
        return workflow, report
    # A node of theirs whose outputs feed only nodes that stay (FaceID, say) stays too: converted, it
    # would only lose its links.
    consumers, used = {nid: set() for nid in theirs}, set()
    probe = Engine(theirs, reroutes, fam)
    for nid, refs in sources.items():
        if nid in reroutes:
            continue
        for ref in refs:
            up = probe.trace(ref)
            if up is not None and up[1] in consumers:
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
    return out, report


def _types(workflow: dict, fmt: str) -> dict:
    if fmt == "ui":
        return {str(n["id"]): n.get("type") for n in workflow["nodes"]}
    return {str(nid): n.get("class_type") for nid, n in workflow.items()}


def _subgraph_nodes(workflow: dict) -> int:
    """Their nodes inside subgraph definitions (left as they are); anything unexpected there counts nothing."""
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
