"""Memory held by image prompts: one adapter, two chained adapters, two chained plus
three further ``model.clone()`` calls (ComfyUI keeps every node's output model alive,
so all of them count).

Counted two ways. (1) Exactly: the unique tensor storages reachable from the models'
``model_options`` (where attn2 patches live), walking patches, branches, adapter
handles and modules; tracemalloc cannot see torch's allocations. (2) Process RSS,
before and after each stage and its peak (sampled by a thread), which also sees file
reading and the allocator. Both in units of one adapter's own size.
"""
from __future__ import annotations

import logging
import threading
import time
import types
from dataclasses import dataclass, field

import torch

from .common import collect, rss_bytes

log = logging.getLogger("bench.memory")

_ATOMS = (str, bytes, int, float, bool, complex, type(None), torch.device, torch.dtype, type,
          types.ModuleType, types.BuiltinFunctionType, range)


def reachable_storages(roots, exclude=()) -> dict[tuple, int]:
    """(device, data_ptr) -> bytes of every tensor storage reachable from ``roots``."""
    skip = {id(o) for o in exclude}
    seen, found, stack = set(), {}, list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or id(obj) in skip or isinstance(obj, _ATOMS):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.device.type != "meta":
                st = obj.untyped_storage()
                found[(str(obj.device), st.data_ptr())] = st.nbytes()
            continue
        if isinstance(obj, dict) or isinstance(obj, types.MappingProxyType):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, types.FunctionType):
            # closures may hold tensors; globals are module state, not the patch's
            stack.extend(c.cell_contents for c in (obj.__closure__ or ()) if c.cell_contents is not None)
        elif isinstance(obj, types.MethodType):
            stack.append(obj.__self__)
        else:
            if hasattr(obj, "__dict__"):
                stack.append(vars(obj))
            for slot in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, slot):
                    stack.append(getattr(obj, slot))
    return found


class PeakRSS:
    """Highest RSS seen while the ``with`` block runs (sampled every 2 ms)."""

    def __enter__(self):
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())


@dataclass
class Stage:
    name: str
    held: float           # reachable storages / adapter size
    rss: float            # RSS growth since the start / adapter size
    peak: float           # peak RSS growth since the start / adapter size
    cached: float = float("nan")      # reachable after one call per layer (K'/V' caches filled)
    rss_cached: float = float("nan")  # RSS growth then (weights paged in by the first use)


@dataclass
class MemoryResult:
    impl: str
    adapter_bytes: int
    stages: list = field(default_factory=list)


def fill_caches(model, calls) -> None:
    """One call of every attn2 patch, as a step would make (fills per-device caches)."""
    patches = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    with torch.no_grad():
        for c in calls:
            for key in c.keys or (c.key,):
                patches[key](c.q, c.k, c.v, c.extra)


def run_scenario(impl: str, base_model, load, prompt_for, apply, size: int, calls) -> MemoryResult:
    """``load()`` -> a fresh adapter handle; ``apply(model, handle, prompt)`` -> patched clone."""
    res = MemoryResult(impl, size)
    exclude = [base_model.model]  # the UNet's own weights are not the adapter's doing
    collect()
    rss0 = rss_bytes()
    alive = [base_model]

    def record(name, peak):
        collect()
        held = sum(reachable_storages([m.model_options for m in alive], exclude).values())
        res.stages.append(Stage(name, held / size, (rss_bytes() - rss0) / size, (peak - rss0) / size))
        log.info("memory %s %s: held %.2f, RSS %+.2f, peak %+.2f adapter sizes", impl, name,
                 *(getattr(res.stages[-1], a) for a in ("held", "rss", "peak")))

    with PeakRSS() as pk:
        ha = load()
        alive.append(apply(base_model, ha, prompt_for(ha, 0)))
    record("one adapter", pk.peak)
    with PeakRSS() as pk:
        hb = load()
        alive.append(apply(alive[-1], hb, prompt_for(hb, 1)))
    record("two chained", pk.peak)
    with PeakRSS() as pk:
        for _ in range(3):
            alive.append(alive[-1].clone())
    record("two chained + 3 clones", pk.peak)
    t0 = time.perf_counter()
    fill_caches(alive[-1], calls)
    collect()
    held = sum(reachable_storages([m.model_options for m in alive], exclude).values())
    res.stages[-1].cached = held / size
    res.stages[-1].rss_cached = (rss_bytes() - rss0) / size
    log.debug("filled caches in %.2f s", time.perf_counter() - t0)
    del alive, ha, hb
    collect()
    return res
