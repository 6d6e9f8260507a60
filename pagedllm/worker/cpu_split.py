"""A CPU decode step of many requests split by request over the cores: one part per thread, each part's forward on
one torch thread (PROTOTYPE, issue 19 session 13: measured before it is wired by default).

Why: with OpenMP's threads asleep between parallel regions (OMP_WAIT_POLICY=PASSIVE, envs.configure_openmp) every
GEMM of a step pays the wake-up of the other threads (~80 µs each on the 2-core VM: SmolLM2's four int4 projections
at 16 rows 1,039 µs a layer sleeping, 708 spinning). Two Python threads each running 8 of the 16 rows on one torch
thread do the same GEMMs with no wake-up (30 layers: 22 ms against 27 ms; benchmarks/cpu_session13). torch ops
release the GIL, so one part's Python runs while the other computes.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

_pool: ThreadPoolExecutor | None = None


def _on_one_thread(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    torch.set_num_threads(1)      # this thread's own OpenMP count (per-thread ICV)
    with torch.inference_mode():  # thread-local, as the caller's
        return fn()


def run_parts(parts: list[Callable[[], torch.Tensor]]) -> list[torch.Tensor]:
    """Run each callable on its own thread (the first on the caller's), each with one torch thread; results in order."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads() - 1), thread_name_prefix="cpu-split")
    threads = torch.get_num_threads()
    futures = [_pool.submit(_on_one_thread, fn) for fn in parts[1:]]
    torch.set_num_threads(1)
    try:
        first = parts[0]()
    finally:
        torch.set_num_threads(threads)
    return [first] + [f.result() for f in futures]
