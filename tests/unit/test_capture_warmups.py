"""worker/cuda_graphs.capture_after_warm_up: which CUDA-graph captures run their warm-up forwards first, and that a
capture which met a Triton kernel variant not built yet is dropped and made again after a warm-up (the GPU half, with
real kernels and graphs: tests/gpu/test_parallel_compile.py). Here the capture, the warm-up and Triton's
``knobs.runtime`` are stand-ins, so this runs on any machine."""
from __future__ import annotations

import types

import pytest
import torch

from pagedllm.kernels import parallel_compile
from pagedllm.worker import cuda_graphs

_GUARD = parallel_compile.unbuilt_variants_skipped


class _Runtime:
    """Triton's knobs.runtime as far as the guard uses it: the hook Triton calls before building a variant that is
    not in this process's cache (a true answer skips the build and the launch)."""

    def __init__(self):
        self.jit_cache_hook = None


@pytest.fixture
def runtime(monkeypatch):
    rt = _Runtime()
    monkeypatch.setattr(parallel_compile, "unbuilt_variants_skipped", lambda: _GUARD(rt))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setenv("PAGEDLLM_CAPTURE_WARMUP_EACH", "0")
    return rt


class _Kernels:
    """A model's launches: a variant is "built" once a warm-up (a launch outside a guard) has met it; a launch inside
    the guard of a variant not built asks the hook, which skips it."""

    def __init__(self, runtime, variants):
        self.runtime, self.variants, self.built = runtime, variants, set()
        self.log: list[str] = []

    def launch_all(self, what: str) -> list[str]:
        ran = []
        for v in self.variants:
            hook = self.runtime.jit_cache_hook
            if v not in self.built:
                if hook is not None and hook(key=v, repr=v, fn=types.SimpleNamespace(name=v)):
                    continue                   # skipped: neither built nor run
                self.built.add(v)
            ran.append(v)
        self.log.append(what)
        return ran


def test_the_first_size_warms_up_the_others_capture_directly(runtime):
    k = _Kernels(runtime, ["rms_norm", "gemv"])
    got, seconds, way = cuda_graphs.capture_after_warm_up(lambda: k.launch_all("capture"),
                                                         lambda: k.launch_all("warm"), warm_first=True)
    assert way == "warmed" and k.log == ["warm", "warm", "capture"] and got == ["rms_norm", "gemv"]
    got, seconds, way = cuda_graphs.capture_after_warm_up(lambda: k.launch_all("capture"),
                                                         lambda: k.launch_all("warm"), warm_first=False)
    assert way == "direct" and seconds == 0.0 and k.log[3:] == ["capture"] and got == ["rms_norm", "gemv"]
    assert runtime.jit_cache_hook is None            # the guard put the previous hook back


def test_a_capture_that_met_an_unbuilt_variant_is_made_again_after_a_warm_up(runtime):
    k = _Kernels(runtime, ["rms_norm", "gemv"])
    k.built = {"rms_norm"}                           # the size's gemv variant was not built at start-up
    previous = lambda **_: None                      # noqa: E731 - e.g. late_compiles' hook, chained back after
    runtime.jit_cache_hook = previous
    got, _, way = cuda_graphs.capture_after_warm_up(lambda: k.launch_all("capture"),
                                                    lambda: k.launch_all("warm"), warm_first=False)
    # The first capture lacked gemv (skipped, not built inside it); the one kept has every kernel.
    assert way == "again" and k.log == ["capture", "warm", "warm", "capture"] and got == ["rms_norm", "gemv"]
    assert runtime.jit_cache_hook is previous


def test_every_size_warms_up_with_the_switch_or_without_triton_hooks(runtime, monkeypatch):
    k = _Kernels(runtime, ["rms_norm"])
    monkeypatch.setenv("PAGEDLLM_CAPTURE_WARMUP_EACH", "1")
    _, _, way = cuda_graphs.capture_after_warm_up(lambda: k.launch_all("capture"), lambda: k.launch_all("warm"),
                                                  warm_first=False)
    assert way == "warmed" and k.log == ["warm", "warm", "capture"]
    monkeypatch.setenv("PAGEDLLM_CAPTURE_WARMUP_EACH", "0")
    # A Triton older than 3.4 has no jit_cache_hook: nothing could catch a build inside the capture.
    monkeypatch.setattr(parallel_compile, "unbuilt_variants_skipped", lambda: _GUARD(types.SimpleNamespace()))
    _, _, way = cuda_graphs.capture_after_warm_up(lambda: k.launch_all("capture"), lambda: k.launch_all("warm"),
                                                  warm_first=False)
    assert way == "warmed" and k.log[3:] == ["warm", "warm", "capture"]


def test_capture_note_counts_the_warm_ups_and_the_captures_made_again():
    assert cuda_graphs._capture_note(["warmed", "direct", "direct"]) == "1 warmed up first"
    assert cuda_graphs._capture_note(["warmed", "again", "direct", "again"]) == (
        "1 warmed up first, 2 captured again after a kernel build")
