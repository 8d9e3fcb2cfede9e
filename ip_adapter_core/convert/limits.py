"""The converter's documented bounds, in one place: the route (nodes/routes.py), the command line
(scripts/convert_workflow.py) and ``convert()`` read them from here, and docs/guarantees.md
quotes them.

The sizes leave room for any workflow a person builds: their 21 example files have 10-27 nodes in
9-27 KB (indented; the editor posts compact JSON, about 600 B a node). ``bench/convert_scale.py``
measures what the limits cost.
"""
from __future__ import annotations

MAX_BYTES = 16 * 1024 * 1024   # a request body or input file: MAX_NODES compact nodes and room to spare
MAX_NODES = 20_000             # top-level nodes of either format
# The route's wait for one conversion. Measured (bench, shared 2-core CPU): 10k nodes 0.4 s, or 4.6 s when
# all of them are nodes of theirs that each become four of ours; 40k of those take 21 s.
TIME_LIMIT_S = 20.0
# A FromParams node becomes about five of ours per entry of its params list; CombineParams chains can
# double the list at every level (30 levels: 2^30 entries), so the unrolled list is capped.
MAX_PARAM_ENTRIES = 100
