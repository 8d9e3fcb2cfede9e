"""The converter's documented bounds, in one place: the route (nodes/routes.py), the command line
(scripts/convert_workflow.py) and ``convert()`` read them from here, and README › "What is guaranteed"
quotes them.

The sizes leave room for any workflow a person builds: their 21 example files have 10-27 nodes and
take 10-60 KB; the editor's own stress files stay under 2,000 nodes.
"""
from __future__ import annotations

MAX_BYTES = 16 * 1024 * 1024   # a request body or input file: ~400 B per node in the editor's format, 40k nodes
MAX_NODES = 20_000             # top-level nodes of either format
TIME_LIMIT_S = 20.0            # the route's wait for one conversion (measured: 10k nodes convert in ~2 s on CPU)
# A FromParams node becomes about five of ours per entry of its params list; CombineParams chains can
# double the list at every level (30 levels: 2^30 entries), so the unrolled list is capped.
MAX_PARAM_ENTRIES = 100
