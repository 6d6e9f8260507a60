"""Programmatic dependent launch (PDL) for the decode-path Triton kernels (Hopper and later).

A decode step at small batch is a chain of ~250 short kernels (1.5B at batch 1: ~6 µs each), and each one pays its
launch, its ramp-up and its first HBM round trip after the previous kernel has fully drained. With PDL a kernel is
launched with ``launch_pdl=True`` and may start while its predecessor still runs: the predecessor signals
(``gdc_launch_dependents``) once all its programs are running, the dependent's programs become resident in the SM
space left over, do whatever does not depend on the predecessor's output (the skinny GEMM loads its first weight
tile: weights are constants), then block in ``gdc_wait`` until the predecessor has finished and its writes are
visible. Captured into CUDA graphs as programmatic edges.

Rules for a kernel taking ``PDL``: nothing it reads that an earlier kernel writes, and nothing it writes, may be
touched before ``pdl_wait``; a kernel launched without PDL after one of ours is ordered as usual. Only the launch
side differs, so every kernel here still works (and is tested) with PDL off: ``--no-pdl`` / ``pdl=False`` (default
env ``PAGEDLLM_PDL``) turns it off (kernels/settings.py), and it is off on GPUs before compute capability 9.0 and
under the Triton interpreter (inline PTX).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from pagedllm import envs
from pagedllm.kernels import settings

try:   # Triton >= 3.3
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:   # pragma: no cover - older Triton: PDL stays off
    gdc_launch_dependents = gdc_wait = None


_INTERPRET = envs.TRITON_INTERPRET


@functools.lru_cache(maxsize=None)
def _supported(device_index: int) -> bool:
    """What the GPU and Triton can do (fixed for the process, so cached); the switch is read per call."""
    if gdc_wait is None or _INTERPRET:
        return False
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def pdl_enabled(device: torch.device) -> bool:
    return settings.current.pdl and device.type == "cuda" and _supported(
        device.index if device.index is not None else torch.cuda.current_device())


def pdl_launch_args(device: torch.device) -> dict:
    """Keyword arguments for a launch of a kernel with a ``PDL`` constexpr: the constexpr and Triton's launch flag."""
    return {"PDL": True, "launch_pdl": True} if pdl_enabled(device) else {"PDL": False}


# PAGEDLLM_PDL_EARLY_TRIGGER: signal the dependents before waiting rather than after. The next kernel still waits
# for this one to finish (which implies this one's predecessor finished), so the order of every write and read is
# the same; only how early the next kernel's programs become resident and issue their constant loads changes.
_EARLY_TRIGGER = tl.constexpr(envs.PAGEDLLM_PDL_EARLY_TRIGGER)


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """Wait for the previous kernel (its writes visible), then let the next one launch (PAGEDLLM_PDL_EARLY_TRIGGER:
    the other way round)."""
    if PDL:
        if _EARLY_TRIGGER:
            gdc_launch_dependents()
            gdc_wait()
        else:
            gdc_wait()
            gdc_launch_dependents()
