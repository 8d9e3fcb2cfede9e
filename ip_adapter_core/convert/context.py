"""What a conversion rule sees and does: the node of theirs, its values and links, and the nodes it adds.

A rule (``rules.py``) reads one node of the popular extension through a ``Ctx`` and answers with nodes
of ours (``add``), a map from its output slots to refs (``out``, ``pipe``) and notes for the report. It
raises ``Unconvertible`` to leave the node as it is. Rules run in the order of the links between their
nodes, so a rule can ask what an upstream node of theirs became (``upstream``, ``ipadapter``).
"""
from __future__ import annotations

from .graph import New, Theirs
from .our_nodes import SPECS


class Unconvertible(Exception):
    """This node stays as it is; the message says why (shown in the report)."""


UNCONNECTED = ("none", "", 0)


class Linked(tuple):
    """A ref to what feeds a widget of theirs, carrying the value stored in the widget (kept in ours)."""

    value = None

    @classmethod
    def of(cls, ref, value):
        out = cls(ref)
        out.value = value
        return out


def is_ref(value) -> bool:
    return isinstance(value, tuple) and len(value) == 3 and value[0] in ("old", "new")


class Engine:
    """The state of one conversion: what each node of theirs became."""

    def __init__(self, theirs: dict, reroutes: dict, family: str | None, used: frozenset = frozenset()):
        self.theirs, self.reroutes, self.family, self.used = theirs, reroutes, family, used
        self.news: list[New] = []
        self.outmap: dict = {}       # (their id, slot) -> ref, or None for an output with no equivalent
        self.pipes: dict = {}        # (their id, slot) -> (ipadapter ref, clip_vision ref or None)
        self.kept: dict = {}         # their id -> why it stays
        self.records: dict = {}      # their id -> {"to": [our types], "notes": [...], "lost": [...]}
        self.cv_loaders: dict = {}   # ipadapter ref -> ref of the IPACLIPVisionLoader made for it
        self.facts: dict = {}        # their id -> data a downstream rule reads (params lists, weight lists)
        self.traced: dict = {}       # reroute id -> what it carries, so a long chain is walked once

    def trace(self, ref):
        """Follow a ref through the editor's Reroute nodes to the node that produces it."""
        path = {}                    # reroute ids walked, in order (a dict: ordered, fast to test)
        while ref is not None and ref[0] == "old" and ref[1] in self.reroutes and ref[1] not in self.traced:
            if ref[1] in path:       # a loop of reroutes carries nothing (convert() refuses loops first)
                ref = None
                break
            path[ref[1]] = True
            ref = self.reroutes[ref[1]]
        if ref is not None and ref[0] == "old" and ref[1] in self.traced:
            ref = self.traced[ref[1]]
        for rid in path:
            self.traced[rid] = ref
        return ref


class Ctx:
    def __init__(self, engine: Engine, node: Theirs):
        self.e, self.node = engine, node
        self.record = engine.records.setdefault(node.id, {"to": [], "notes": [], "lost": []})
        self.main_title_used = False
        self.slots: set = set()      # output slots this rule mapped, undone if it gives up

    # -- reading
    def v(self, name):
        return self.node.values[name]

    def src(self, name):
        return self.node.links.get(name)

    def w(self, name):
        """A widget's link if it is fed by one (a primitive node), else its value."""
        src = self.src(name)
        return Linked.of(src, self.v(name)) if src is not None else self.v(name)

    def linked(self, name) -> bool:
        return name in self.node.links

    def upstream(self, name):
        """(Theirs, slot) of the node of theirs that feeds input ``name``, through reroutes, or None."""
        ref = self.e.trace(self.src(name))
        if ref is None or ref[0] != "old" or ref[1] not in self.e.theirs:
            return None
        return self.e.theirs[ref[1]], ref[2]

    def used(self, slot: int) -> bool:
        """Whether anything consumes output ``slot`` (optional outputs get nodes only when used)."""
        return (self.node.id, slot) in self.e.used

    @property
    def family(self):
        return self.e.family

    # -- writing
    def add(self, kind: str, main: bool = False, **values) -> str:
        """Add one of our nodes; values that are refs become links. ``main`` gets the node's title."""
        key = f"{self.node.id}.{len(self.record['to'])}"
        widgets = {k: (v.value if isinstance(v, Linked) else v) for k, v in values.items()
                   if v is not None and not (is_ref(v) and not isinstance(v, Linked))}
        for name, default in SPECS[kind].defaults:   # the editor would show the default; write it
            if name not in widgets:
                widgets[name] = default
        inputs = {k: v for k, v in values.items() if is_ref(v)}
        title = self.node.title if main and not self.main_title_used else None
        self.main_title_used = self.main_title_used or main
        self.e.news.append(New(key, kind, widgets, inputs, self.node.id, title))
        self.record["to"].append(kind)
        return key

    @staticmethod
    def ref(key: str, slot: int = 0):
        return ("new", key, slot)

    def out(self, slot: int, ref) -> None:
        self.slots.add(slot)
        self.e.outmap[(self.node.id, slot)] = ref

    def unconnected(self, slot: int) -> None:
        """An output whose consumers' inputs stay unconnected on purpose (they then use their default)."""
        self.slots.add(slot)
        self.e.outmap[(self.node.id, slot)] = UNCONNECTED

    def pipe(self, slot: int, ipadapter, clip_vision) -> None:
        """An IPADAPTER output of theirs: ours is two sockets, the adapter and (from a preset) its encoder."""
        self.slots.add(slot)
        self.e.outmap[(self.node.id, slot)] = ipadapter
        self.e.pipes[(self.node.id, slot)] = (ipadapter, clip_vision)

    def note(self, text: str) -> None:
        self.record["notes"].append(text)

    def lost(self, text: str) -> None:
        self.record["lost"].append(text)

    # -- the two sockets our nodes need where theirs has one
    def ipadapter(self, name: str = "ipadapter"):
        """(adapter ref, encoder ref or None) for an IPADAPTER input of theirs."""
        src = self.src(name)
        up = self.e.trace(src)
        if up is not None and up[0] == "old" and (up[1], up[2]) in self.e.pipes:
            return self.e.pipes[(up[1], up[2])]
        return src, None

    def clip_vision(self, ipadapter_input: str = "ipadapter"):
        """The encoder for an apply node: its own clip_vision input, else the preset loader's, else an
        IP-Adapter CLIP Vision Loader that finds the adapter's encoder (one per adapter)."""
        if self.linked("clip_vision"):
            return self.src("clip_vision")
        ipa, cv = self.ipadapter(ipadapter_input)
        if cv is not None:
            return cv
        if ipa is None:
            return None
        if ipa not in self.e.cv_loaders:
            self.e.cv_loaders[ipa] = self.ref(self.add("IPACLIPVisionLoader", ipadapter=ipa))
        return self.e.cv_loaders[ipa]
