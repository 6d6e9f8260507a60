"""Build the Triton kernel variants of a warm-up on a thread pool instead of one after the other (cold start).

On a cold Triton cache the start-up builds ~14 variants one at a time inside the warm-up forwards: 6.5 s of a 26.6 s
cold start on the H200 host (docs/perf.md, session 9). On the 2-core CPU VM two threads compiled our kernels for
sm_90 1.4x faster than one (~60% of a compile runs without the GIL: ptxas, parts of the MLIR pipeline), so 14
threads should take those 6.5 s to ~2.8 s.

``compile_ahead(warm_up, workers)`` runs ``warm_up`` once "dry": Triton calls its ``jit_cache_hook`` before building
any variant not in its cache; the hook here records the variant's specialisation data and answers True, which makes
the launch return without building or running it (that kernel's outputs keep whatever their buffers held: the
warm-up must read nothing back that steers the host -- ours are forwards over host-made inputs). Then every recorded
variant is built with ``JITFunction.preload`` under Triton's ``AsyncCompileMode`` on a thread pool, which also puts
them in the in-process cache, and the caller runs the real warm-up, which finds them all built.

On by default on the GPU with up to 16 threads (``PAGEDLLM_COMPILE_THREADS``; 0 = one by one). Measured on the H200
(docs/perf.md, session 10): cold ``serve`` 7B to /health 14.9 / 16.8 s with 16 threads against 18.0 / 22.4 s one by
one (memory profile + warm-up 4.6 / 5.5 s against 7.0 / 8.1 s); tests/gpu/test_parallel_compile.py passed there.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

logger = logging.getLogger(__name__)


def compile_ahead(warm_up: Callable[[], None], workers: int) -> tuple[int, float]:
    """Run ``warm_up`` dry, then build the Triton variants it met on ``workers`` threads; returns how many and the
    seconds the building took (wall time, the dry pass not included)."""
    try:
        from triton import knobs
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:      # a Triton without the hooks (< 3.4): the warm-up builds them one by one
        return 0, 0.0
    runtime = knobs.runtime
    if not hasattr(runtime, "jit_cache_hook"):
        return 0, 0.0
    from pagedllm.kernels import late_compiles
    recorded: dict[tuple[int, str], tuple] = {}

    def record(*, fn, compile, **_):
        data = compile["specialization_data"]
        recorded.setdefault((id(fn.jit_function), data), (fn.jit_function, data))
        return True          # neither build nor launch it now

    t0 = time.perf_counter()
    previous = runtime.jit_cache_hook
    runtime.jit_cache_hook = record
    try:
        warm_up()
    finally:
        runtime.jit_cache_hook = previous
    t1 = time.perf_counter()
    if recorded:
        from concurrent.futures import ThreadPoolExecutor
        from triton.runtime import _async_compile
        late_compiles.building_ahead(True)
        try:
            # ignore_errors: a variant that fails to build is left out of the cache, so the real warm-up builds it
            # one by one and raises its error there, as without this pass. Triton's exit would otherwise raise
            # before clearing its process-wide active mode, and every later engine built in this process would
            # fail with "Another AsyncCompileMode is already active" (seen on an H100 in session 25's tests).
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pagedllm-triton") as pool:
                mode = AsyncCompileMode(pool, ignore_errors=True)
                try:
                    with mode:              # its exit waits for every build and caches it
                        for jit_function, data in recorded.values():
                            jit_function.preload(data)
                finally:
                    if _async_compile.active_mode.get() is mode:     # preload itself raised inside the mode
                        _async_compile.active_mode.set(None)
        finally:
            late_compiles.building_ahead(False)
    took = time.perf_counter() - t1
    logger.info("Built %d Triton kernel variants on %d threads in %.1f s (dry warm-up %.1f s)", len(recorded),
                workers, took, t1 - t0)
    return len(recorded), took
