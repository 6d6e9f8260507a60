"""Log the Triton kernel variants compiled after the engine's start-up, while requests are being served.

Start-up compiles every variant it can foresee (the memory-profile forward, the mixed-batch warm-ups, the CUDA-graph
captures); a variant that still appears later (a new specialisation of an integer argument, a shape the warm-ups
missed) makes the step that meets it wait for the compile, up to ~1 s on a cold cache. This logs each one with its
signature and how long it took, so such stalls (e.g. the cold-cache 1.5B ShareGPT run in docs/perf.md) can be traced
to a kernel. Uses Triton's ``knobs.runtime`` compile hooks (Triton >= 3.4); chains to hooks already set.
"""
from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

_installed = False
_armed = False
late_compiles = 0          # how many variants were compiled after start-up (tests, benchmarks)
# Compiles while an engine starts (not logged one by one; the start-up timeline reports their count and time).
startup_compiles = 0
startup_compile_seconds = 0.0
# Variants built ahead on a thread pool (kernels/parallel_compile.py): counted here, not timed one by one (their
# durations overlap; compile_ahead reports the wall time).
_ahead = False
ahead_compiles = 0


def pause() -> bool:
    """An engine is starting (compiles expected): stop logging until ``watch_late_compiles`` is called again, and
    count this start-up's compiles from zero. Returns whether Triton has the hooks."""
    global _armed, startup_compiles, startup_compile_seconds, ahead_compiles
    _armed = False
    startup_compiles, startup_compile_seconds, ahead_compiles = 0, 0.0, 0
    return _install()


def building_ahead(on: bool) -> None:
    """Compiles from now on are the thread pool's (``on``) or one by one again."""
    global _ahead
    _ahead = on


def watch_late_compiles() -> bool:
    """Start logging (installing the hooks the first time). Returns whether Triton has the hooks."""
    global _armed
    _armed = _install()
    return _armed


def _install() -> bool:
    global _installed
    if _installed:
        return True
    try:
        from triton import knobs
    except ImportError:
        return False
    runtime = knobs.runtime
    if not (hasattr(runtime, "jit_cache_hook") and hasattr(runtime, "jit_post_compile_hook")):
        return False
    before, after = runtime.jit_cache_hook, runtime.jit_post_compile_hook
    started: dict[str, float] = {}

    def on_cache_miss(*, key, **kwargs):
        started[str(key)] = time.perf_counter()
        return before(key=key, **kwargs) if before else None    # a true result would skip the compile

    def on_compiled(*, key, repr, **kwargs):
        global late_compiles, startup_compiles, startup_compile_seconds, ahead_compiles
        took = time.perf_counter() - started.pop(str(key), time.perf_counter())
        if _ahead:
            ahead_compiles += 1
        elif not _armed:
            startup_compiles += 1
            startup_compile_seconds += took
            # Which start-up variants the thread pool did not build ahead (a capture's, the sampler's).
            logger.debug("Triton built a kernel variant during start-up in %.0f ms: %s", took * 1e3, repr[:300])
        else:
            late_compiles += 1
            logger.info("Triton compiled a kernel variant after start-up in %.0f ms (the step waited): %s",
                        took * 1e3, repr[:2000])
        if after:
            after(key=key, repr=repr, **kwargs)

    runtime.jit_cache_hook = on_cache_miss
    runtime.jit_post_compile_hook = on_compiled
    _installed = True
    return True
