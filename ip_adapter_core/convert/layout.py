"""Where the converter puts the nodes it adds in an editor file: stacked where the node of theirs stood,
each moved down past the nodes already there rather than drawn over them.

A grid of cells indexes the boxes, so finding the free place for one node looks at the few boxes near
it, not at every node of the file (a file of 40k nodes made the straightforward scan quadratic). A
node that would have to step past more than ``MAX_STEPS`` boxes goes below everything in its column
instead: a stack of 2,000 of their nodes, each replaced by four of ours, would otherwise walk past
all the nodes placed before it (quadratic again).
"""
from __future__ import annotations

import math

NODE_HEIGHT, ROW_HEIGHT, NODE_WIDTH, GAP, TITLE = 30, 24, 320, 20, 30
CELL = 512.0          # px; about one node, so a query looks at a handful of cells
MAX_CELLS = 64        # a box spanning more cells than this is kept in a plain list (rare: huge nodes)
MAX_STEPS = 64


def pair(value, default) -> tuple:
    """A position or size as finite numbers: the editor writes [x, y]; old LiteGraph files {"0": x, "1": y}."""
    if isinstance(value, dict):
        value = [value.get("0"), value.get("1")]
    try:
        x, y = list(value)[:2]
        x, y = float(x), float(y)
    except (TypeError, ValueError):
        return default
    return (x, y) if math.isfinite(x) and math.isfinite(y) else default


def box(node: dict) -> tuple:
    x, y = pair(node.get("pos"), (0.0, 0.0))
    w, h = pair(node.get("size"), (200.0, 100.0))
    return (x, y - TITLE, x + max(w, 0.0), y + max(h, 0.0))


def _cells(lo: float, hi: float) -> range | None:
    a, b = math.floor(lo / CELL), math.floor(hi / CELL)
    return range(a, b + 1) if b - a < MAX_CELLS else None


class Placer:
    """The boxes taken so far; ``place`` finds the first free y at or below a start for a new node."""

    def __init__(self, boxes):
        self.grid: dict = {}        # (cx, cy) -> set of boxes
        self.wide: list = []        # boxes over MAX_CELLS cells wide or tall
        self.bottom: dict = {}      # cx -> lowest edge of any box in that column of cells
        for b in boxes:
            self.add(b)

    def add(self, b: tuple) -> None:
        xs, ys = _cells(b[0], b[2]), _cells(b[1], b[3])
        if xs is None or ys is None or len(xs) * len(ys) > MAX_CELLS:
            self.wide.append(b)
            return
        for cx in xs:
            self.bottom[cx] = max(self.bottom.get(cx, -math.inf), b[3])
            for cy in ys:
                self.grid.setdefault((cx, cy), set()).add(b)

    def _hits(self, x1, y1, x2, y2) -> list:
        near = [b for cx in range(math.floor(x1 / CELL), math.floor(x2 / CELL) + 1)
                for cy in range(math.floor(y1 / CELL), math.floor(y2 / CELL) + 1)
                for b in self.grid.get((cx, cy), ())]
        return [b for b in near + self.wide if b[0] < x2 and x1 < b[2] and b[1] < y2 and y1 < b[3]]

    def place(self, x: float, y: float, w: float, h: float) -> float:
        """The y of a w×h node at x (title bar above y) that overlaps no box, and take its box."""
        for _ in range(MAX_STEPS):
            hit = self._hits(x, y - TITLE, x + w, y + h)
            if not hit:
                break
            y = max(b[3] for b in hit) + GAP + TITLE
        else:
            columns = range(math.floor(x / CELL), math.floor((x + w) / CELL) + 1)
            lowest = max([self.bottom.get(cx, -math.inf) for cx in columns]
                         + [b[3] for b in self.wide if b[0] < x + w and x < b[2]])
            y = max(y, lowest + GAP + TITLE)
        self.add((x, y - TITLE, x + w, y + h))
        return y


def height(spec, control) -> int:
    rows = max(len(spec.sockets), len(spec.outputs)) + len([w for w in spec.widgets if w != control])
    return NODE_HEIGHT + ROW_HEIGHT * rows


# ---------------------------------------------------------------------------- chains, left to right

COLUMN_GAP = 60       # px between the columns of a chain: room for the wires
PAD, GROUP_TITLE = 20, 46
GROUP_COLOR = "#3f789e"   # the editor's default group colour
# replaced nodes × boxes above which the chains are stacked instead (laying out one chain looks at every box, so
# the work is their product): a person's graph has tens of their nodes among a few hundred (the largest of 119
# public workflows collected for issue 23: see docs/converting.md), while the bounds allow 20,000 nodes.
MAX_LAYOUT_WORK = 100_000


def columns(keys: list, inputs: dict) -> dict:
    """key -> column: 0 for a node fed by none of the others in ``keys``, else one more than its furthest feeder
    (``keys`` in the order the rule made them, which follows the links)."""
    column = {}
    for key in keys:
        feeders = [column[k] for k in inputs.get(key, ()) if k in column]
        column[key] = 1 + max(feeders) if feeders else 0
    return column


def chain_layout(keys: list, inputs: dict, heights: dict, grouped: bool, width: float = NODE_WIDTH) \
        -> tuple[dict, float, float]:
    """(key -> (dx, dy) of the node's body from the region's top left, region width, region height): the nodes
    one column per step of the chain, left to right, stacked within a column; with ``grouped`` room for a
    group's title and padding around them; without, one node of ``width``."""
    column = columns(keys, inputs)
    pad, title = (PAD, GROUP_TITLE) if grouped else (0.0, 0.0)
    filled: dict = {}
    offsets = {}
    for key in keys:
        c = column[key]
        y = filled.get(c, title + pad)
        offsets[key] = (pad + c * (NODE_WIDTH + COLUMN_GAP), y + TITLE)
        filled[c] = y + TITLE + heights[key] + GAP
    if not grouped:
        return offsets, width, max(filled.values()) - GAP
    width = 2 * pad + (max(column.values()) + 1) * NODE_WIDTH + max(column.values()) * COLUMN_GAP
    height = max(filled.values()) - GAP + pad
    return offsets, width, height


class Board:
    """Every box of an editor file that can move: node entries (``pos``/``size``) and groups (``bounding``).
    ``make_room`` shifts, as a whole, what lies right of a line and what lies below one, by just enough that a
    region fits, so nothing that did not overlap before overlaps after (a uniform shift keeps distances)."""

    def __init__(self, nodes: list, groups: list):
        self.nodes, self.groups = nodes, groups

    @staticmethod
    def _group_box(group: dict) -> tuple | None:
        b = group.get("bounding")
        if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                             for v in b)):
            return None
        return (b[0], b[1], b[0] + b[2], b[1] + b[3])

    def make_room(self, region: tuple, skip: set) -> tuple:
        """Shift the boxes (but those whose id() is in ``skip``) so none overlaps ``region`` (x0, y0, x1, y1);
        returns the region, moved down first past boxes that start above and left of it and reach into it (they
        overlapped the replaced node already: shifting right or down would not clear them)."""
        x0, y0, x1, y1 = region
        boxes = [(n, box(n)) for n in self.nodes if id(n) not in skip]
        for _ in range(MAX_STEPS):
            above = [b[3] for _, b in boxes if b[0] <= x0 and b[1] < y0 and b[0] < x1 and x0 < b[2]
                     and b[1] < y1 and y0 < b[3]]
            if not above:
                break
            y1, y0 = y1 + max(above) + GAP - y0, max(above) + GAP
        dx = max([x1 + GAP - b[0] for _, b in boxes if b[0] > x0 and b[1] < y1 and y0 < b[3]] + [0.0])
        if dx > 0:
            for n, b in boxes:
                if b[0] > x0:
                    n["pos"] = [b[0] + dx, b[1] + TITLE]
            self._groups(lambda g: g[0] > x0, lambda g: g[0] < x1 and x0 < g[2] and g[1] < y1 and y0 < g[3], dx, 0.0)
        boxes = [(n, box(n)) for n in self.nodes if id(n) not in skip]
        dy = max([y1 + GAP - b[1] for _, b in boxes if b[1] >= y0 and b[0] < x1 and x0 < b[2] and b[1] < y1]
                 + [0.0])
        if dy > 0:
            for n, b in boxes:
                if b[1] >= y0:
                    n["pos"] = [b[0], b[1] + dy + TITLE]
            self._groups(lambda g: g[1] >= y0, lambda g: g[0] < x1 and x0 < g[2] and g[1] < y1 and y0 < g[3], 0.0, dy)
        return x0, y0, x1, y1

    def _groups(self, moves, grows, dx: float, dy: float) -> None:
        for group in self.groups:
            g = self._group_box(group)
            if g is None:
                continue
            b = group["bounding"]
            if moves(g):
                group["bounding"] = [b[0] + dx, b[1] + dy, b[2], b[3]]
            elif grows(g):      # a group the region reaches into (around the replaced node) keeps what it held
                group["bounding"] = [b[0], b[1], b[2] + dx, b[3] + dy]
