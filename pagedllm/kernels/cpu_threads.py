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
