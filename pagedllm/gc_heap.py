"""Keep a long-lived process's start-up objects out of Python's garbage collector (as vLLM's ``freeze_gc_heap``).

After start-up an engine process holds ~0.5-1 million GC-tracked objects that live as long as it does: the modules
of torch and transformers, the model's Python objects, one ``KVBlock`` per KV-cache block (127,891 on an H200 with
a 7B model). Every full (generation-2) collection walks all of them: ~240 ms on the 2-core CPU VM for a tiny model
with 524,288 blocks. ``gc.freeze()`` moves everything alive now into the permanent generation, which collections
skip; objects made later (requests, outputs) are collected as before. Measured on the H200 (docs/perf.md, session
9): the unfrozen served 7B engine process ran no full collection in 16,000 steps, so this changed no throughput
there; it is kept as vLLM keeps it, against full collections in longer runs, for 135 ms at start-up.

Only for processes that exist to serve (the engine-core process, the rank workers, the API server): a frozen object
is never collected, so an offline ``LLM`` built inside a user's process (a notebook that builds several) does not
freeze that process's heap.
"""
from __future__ import annotations

import gc
import logging
import time
from contextlib import contextmanager

from pagedllm import envs

logger = logging.getLogger(__name__)


@contextmanager
def collections_paused():
    """No automatic collection inside; the collector's state is restored after. For code that makes long-lived
    objects in bulk and little garbage (the block pool: 127,891 blocks 0.165 s -> 0.055 s on the 2-core CPU VM,
    docs/perf.md session 33), and where a collection must not run (a CUDA-graph capture, worker/cuda_graphs.py)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def park_start_up_heap() -> None:
    """The engine-core process, at the end of its imports and config, which ran with collections paused (0.2-0.3 s
    of collections walking the growing heap on the 2-core CPU VM: docs/perf.md, session 33): freeze everything as it
    is, garbage included (``gc.freeze`` walks nothing), and turn the collector on. The model's build then collects
    only its own objects; ``freeze_gc_heap(..., parked=True)`` collects the parked ones once, after the core has
    answered. Merely re-enabling would leave them all in the youngest generation, and the first collection of the
    build would walk them (+0.2 s there for SmolLM2)."""
    gc.freeze()
    gc.enable()


def freeze_gc_heap(process: str, parked: bool = False) -> int:
    """Collect once, then freeze everything still alive; returns how many objects this call froze (0 with
    PAGEDLLM_GC_FREEZE=0). A second call (the API server freezes while the engine core builds, then before serving)
    walks only what came since: the count is taken from the objects not frozen yet (``gc.get_freeze_count`` walks
    all the frozen ones: ~30 ms for 340,000 on the 2-core CPU VM, twice per call before session 33). ``parked``:
    unfreeze first what ``park_start_up_heap`` froze, so its garbage is collected (with PAGEDLLM_GC_FREEZE=0 too)."""
    if parked:
        gc.unfreeze()
    if not envs.PAGEDLLM_GC_FREEZE:
        if parked:
            gc.collect()
        return 0
    t0 = time.perf_counter()
    gc.collect()
    frozen = len(gc.get_objects())      # after the collection: everything the collector tracks, all to be frozen
    gc.freeze()
    logger.info("%s: %d start-up objects frozen out of the garbage collector in %.0f ms", process, frozen,
                (time.perf_counter() - t0) * 1e3)
    return frozen
