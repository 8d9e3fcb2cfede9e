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
