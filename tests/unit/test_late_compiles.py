"""The start-up / serving boundary of Triton compile logging (pagedllm.kernels.late_compiles), driven through the
hooks exactly as Triton's JIT calls them (no GPU here to compile for)."""
from __future__ import annotations

import logging

import pytest

knobs = pytest.importorskip("triton").knobs
if not hasattr(knobs.runtime, "jit_post_compile_hook"):
    pytest.skip("this Triton has no compile hooks", allow_module_level=True)

from pagedllm.kernels import late_compiles  # noqa: E402


@pytest.fixture
def fresh(monkeypatch):
    """Hooks and module state as in a new process, with a pre-existing user hook to chain to."""
    seen = []
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", None)
    monkeypatch.setattr(knobs.runtime, "jit_post_compile_hook", lambda **kw: seen.append(kw["key"]))
    monkeypatch.setattr(late_compiles, "_installed", False)
    monkeypatch.setattr(late_compiles, "_armed", False)
    monkeypatch.setattr(late_compiles, "late_compiles", 0)
    yield seen


def compile_once(key: str) -> None:
    """What JITFunction._do_compile does around a compile."""
    common = dict(repr=f"_kernel[num_warps=4]({key})", fn=None, compile={}, is_manual_warmup=False,
                  already_compiled=False)
    assert not knobs.runtime.jit_cache_hook(key=key, **common)    # a true answer would skip the compile
    knobs.runtime.jit_post_compile_hook(key=key, **common)


def test_logs_only_compiles_after_start_up(fresh, caplog):
    caplog.set_level(logging.INFO, logger="pagedllm.kernels.late_compiles")
    assert late_compiles.watch_late_compiles()
    late_compiles.pause()                       # a second engine starting in this process
    compile_once("during-start-up")
    assert late_compiles.late_compiles == 0 and not caplog.records
    assert late_compiles.startup_compiles == 1     # counted for the start-up timeline instead
    late_compiles.watch_late_compiles()         # its start-up done
    compile_once("SeqLens: i32, stride_bt: i32")
    assert late_compiles.late_compiles == 1
    (record,) = caplog.records
    assert "after start-up" in record.getMessage() and "stride_bt: i32" in record.getMessage()
    assert fresh == ["during-start-up", "SeqLens: i32, stride_bt: i32"]     # the user's hook still runs


def test_builds_of_the_thread_pool_are_counted_apart(fresh, monkeypatch):
    late_compiles.pause()
    late_compiles.building_ahead(True)          # kernels/parallel_compile: builds overlap, not timed one by one
    compile_once("ahead-1")
    compile_once("ahead-2")
    late_compiles.building_ahead(False)
    compile_once("in-capture")
    assert late_compiles.ahead_compiles == 2 and late_compiles.startup_compiles == 1
    late_compiles.pause()                       # the next engine's start-up counts from zero
    assert late_compiles.ahead_compiles == 0 and late_compiles.startup_compiles == 0
