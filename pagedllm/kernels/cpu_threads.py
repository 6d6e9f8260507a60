"""Small CPU kernels on one thread.

The engine runs torch on every core it may use (``cpu_threads``), with OpenMP's threads sleeping between parallel
regions (``OMP_WAIT_POLICY=PASSIVE``, envs.configure_openmp: spinning threads collapse a busy machine). Waking a
sleeping thread costs ~100 µs on a VM, more than some kernels take: a padded decode attention of a few short
contexts, or fbgemm's fp16-weight GEMM at a few rows, which its threads split no faster than one thread runs it
(docs/perf.md, issue 19). Those calls go through ``on_one_thread``; everything else keeps all threads.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def on_one_thread(fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` with torch on one thread, the thread count restored after (``torch.set_num_threads`` is ~µs).
    The same result as on several threads where each output element is computed by one thread (SDPA's rows,
    a GEMM's output tiles)."""
    threads = torch.get_num_threads()
    if threads == 1:
        return fn(*args)
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


# Weight-only GEMMs (fbgemm's fp16, torch's int4) of up to this many rows run on one thread. fbgemm fp16 at M = 1:
# 246 µs on two threads vs 86 on one (weights hot); SmolLM2 fp16 weights at batch 1 on the 2-core AVX2 EPYC,
# 23.0-24.9 -> 24.8-29.7 tok/s, 4 requests 77.7-83.3 -> 89.2-93.8, 8 and 16 requests two threads as fast or faster
# (session 8). torch's int4 GEMM with bf16 activations splits well back to back (SmolLM2 projection 36-39 vs 64 µs)
# but not inside a decode step: SmolLM2 dtype="bfloat16" at batch 1 on the AVX512-BF16 EPYC 25.0-29.0 -> 41.9-44.5
# tok/s (session 10; docs/perf.md, issue 19).
FEW_ROWS = 4


def gemm_for_rows(fn: Callable[..., T], rows: int, *args) -> T:
    """``fn(*args)``, a GEMM of ``rows`` rows: on one thread up to ``FEW_ROWS`` rows, on all of them above."""
    return on_one_thread(fn, *args) if rows <= FEW_ROWS else fn(*args)
