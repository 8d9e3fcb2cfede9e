"""Converter scale benchmark (issue 19): seconds of ``convert()`` on editor files of 1k, 10k and 40k nodes,
three shapes, and the growth from one size to the next. Needs no ComfyUI and no torch:

    python bench/convert_scale.py [--sizes 1000,10000,40000] [--shapes stack,foreign,reroutes]

- *stack*: all but four nodes are theirs (IPAdapterAdvanced), in one column, chained by their MODEL
  links: each becomes four of ours, which the layout must place next to the ones placed before;
- *foreign*: nodes of another pack on a grid, each fed by the one before it, with one node of theirs per
  thousand in the middle of the grid: the layout places our nodes among them;
- *reroutes*: one adapter link through a chain of Reroutes into one node of theirs, link ids descending
  from the source (the order that made the old type propagation take one pass per reroute).

*growth* is (time ratio) / (size ratio) from the previous size: about 1 means linear, the size ratio
(10, 4) quadratic. Each time is the fastest of ``--repeat`` runs (default 3). 40k nodes is over the route's MAX_NODES (limits.py); the benchmark lifts the limit.
Timings are wall-clock on whatever machine runs it: compare growth, not seconds, across machines.
"""
from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHAPES = ("stack", "foreign", "reroutes")
ADVANCED_VALUES = [0.8, "linear", "concat", 0.0, 1.0, "V only"]


class UIGraph:
    """An editor-format file built node by node, links written on both ends as the editor does."""

    def __init__(self):
        self.nodes, self.links = [], []

    def node(self, nid, kind, pos, inputs=(), outputs=(), values=()) -> int:
        self.nodes.append({"id": nid, "type": kind, "pos": list(pos), "size": [300, 100], "flags": {},
                           "order": len(self.nodes), "mode": 0,
                           "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
                           "outputs": [{"name": n, "type": t, "links": []} for n, t in outputs],
                           "properties": {}, "widgets_values": list(values)})
        return nid

    def link(self, origin, oslot, target, tslot, kind) -> None:
        lid = len(self.links) + 1
        self.links.append([lid, origin, oslot, target, tslot, kind])
        by_id = self._by_id()
        by_id[target]["inputs"][tslot]["link"] = lid
        by_id[origin]["outputs"][oslot]["links"].append(lid)

    def _by_id(self) -> dict:
        if len(getattr(self, "_index", {})) != len(self.nodes):
            self._index = {n["id"]: n for n in self.nodes}
        return self._index

    def core(self) -> None:
        """Checkpoint (1), their adapter loader (2), an image (3), the sampler (4)."""
        self.node(1, "CheckpointLoaderSimple", (-800, 0), (), (("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")),
                  ["v1-5-pruned-emaonly.safetensors"])
        self.node(2, "IPAdapterModelLoader", (-800, 300), (), (("IPADAPTER", "IPADAPTER"),),
                  ["ip-adapter_sd15.safetensors"])
        self.node(3, "LoadImage", (-800, 600), (), (("IMAGE", "IMAGE"), ("MASK", "MASK")), ["ref.png", "image"])
        self.node(4, "KSampler", (-400, -400), (("model", "MODEL"),), (("LATENT", "LATENT"),), [3, "fixed"])

    def advanced(self, nid, pos, model_from) -> int:
        self.node(nid, "IPAdapterAdvanced", pos, (("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("image", "IMAGE")),
                  (("MODEL", "MODEL"),), ADVANCED_VALUES)
        self.link(model_from, 0, nid, 0, "MODEL")
        self.link(2, 0, nid, 1, "IPADAPTER")
        self.link(3, 0, nid, 2, "IMAGE")
        return nid

    def workflow(self) -> dict:
        return {"last_node_id": max(n["id"] for n in self.nodes), "last_link_id": len(self.links),
                "nodes": self.nodes, "links": self.links, "groups": [], "version": 0.4}


def stack(n: int) -> dict:
    g = UIGraph()
    g.core()
    prev = 1
    for k in range(n - 4):
        prev = g.advanced(10 + k, (600, 120 * k), prev)
    g.link(prev, 0, 4, 0, "MODEL")
    return g.workflow()


def foreign(n: int) -> dict:
    g = UIGraph()
    g.core()
    theirs = max(1, n // 1000)
    others = n - 4 - theirs
    cols = 100
    for k in range(others):
        g.node(10 + k, "OtherPack.Node", (350 * (k % cols), 250 * (k // cols)), (("x", "LATENT"),), (("x", "LATENT"),))
        if k:
            g.link(10 + k - 1, 0, 10 + k, 0, "LATENT")
    rows = others // cols + 1
    prev = 1
    for j in range(theirs):    # in the middle of the grid, over the foreign nodes
        prev = g.advanced(10 + others + j, (350 * (cols // 2) + 20, 250 * (rows // 2) + 40 * j), prev)
    g.link(prev, 0, 4, 0, "MODEL")
    return g.workflow()


def reroutes(n: int) -> dict:
    g = UIGraph()
    g.core()
    count = n - 5
    top = 10 + count                      # descending ids along the chain
    chain = [top - k for k in range(count)]
    for k, rid in enumerate(chain):
        g.node(rid, "Reroute", (-400, 100 + 40 * k), (("", "*"),), (("", "*"),))
    apply = top + 1
    g.node(apply, "IPAdapterAdvanced", (0, 0), (("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("image", "IMAGE")),
           (("MODEL", "MODEL"),), ADVANCED_VALUES)
    # Links written from the apply node up the chain: link ids descend from the source, the order in which
    # one pass over the links in id order moves a type one reroute down.
    g.link(chain[-1], 0, apply, 1, "*")
    for up, down in zip(reversed(chain[:-1]), reversed(chain[1:])):
        g.link(up, 0, down, 0, "*")
    g.link(2, 0, chain[0], 0, "*")
    g.link(1, 0, apply, 0, "MODEL")
    g.link(3, 0, apply, 2, "IMAGE")
    g.link(apply, 0, 4, 0, "MODEL")
    return g.workflow()


BUILD = {"stack": stack, "foreign": foreign, "reroutes": reroutes}


def _convert():
    """convert() through the ipadapter_ext alias (the repository is not an installed package)."""
    if "ipadapter_ext" not in sys.modules:
        pkg = types.ModuleType("ipadapter_ext")
        pkg.__path__ = [str(REPO)]
        sys.modules["ipadapter_ext"] = pkg
    from ipadapter_ext.ip_adapter_core.convert import convert

    return convert


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,40000")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--repeat", type=int, default=3, help="runs per size; the fastest counts (a shared machine's "
                                                           "load only ever adds time)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    convert = _convert()
    print(f"convert() scale, {platform.python_implementation()} {platform.python_version()}, "
          f"{platform.machine()}, {time.strftime('%Y-%m-%d')}")
    print(f"| shape | nodes | nodes made | seconds | ms / 1k nodes | growth |\n|---|---:|---:|---:|---:|---:|")
    for shape in args.shapes.split(","):
        last = None
        for n in sizes:
            wf = BUILD[shape](n)
            took = float("inf")
            for _ in range(args.repeat):
                gc.collect()
                start = time.perf_counter()
                out, report = convert(wf, max_nodes=None)
                took = min(took, time.perf_counter() - start)
            made = len(out["nodes"]) - len(wf["nodes"]) + len(report.converted)
            growth = f"{(took / last[1]) / (n / last[0]):.2f}" if last else "–"
            print(f"| {shape} | {n:,} | {made:,} | {took:.2f} | {took * 1e6 / n:.0f} | {growth} |",
                  flush=True)
            last = (n, took)
            del wf, out, report
    return 0


if __name__ == "__main__":
    sys.exit(main())
