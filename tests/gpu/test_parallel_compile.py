"""kernels/parallel_compile.compile_ahead: a dry warm-up records the Triton variants it would build, they are built on
threads, and the real warm-up then builds nothing and computes what the eager kernels compute (GPU only: the
hooks it uses are in Triton's GPU launcher, not in the interpreter)."""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from pagedllm.kernels import late_compiles, triton_ops  # noqa: E402
from pagedllm.kernels.parallel_compile import compile_ahead  # noqa: E402

# Hidden sizes no other test uses (N and D are constexprs: each is a variant of its own, unbuilt in this process).
SIZES = [1000 + 24 * i for i in range(6)]


def _inputs(sizes):
    g = torch.Generator(device="cuda").manual_seed(0)
    return [(torch.randn(3, n, device="cuda", dtype=torch.bfloat16, generator=g),
             torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=g),
             torch.randn(3, 2 * n, device="cuda", dtype=torch.bfloat16, generator=g)) for n in sizes]


def _run(inputs):
    return [(triton_ops.rms_norm(x, w, 1e-6)[0], triton_ops.silu_and_mul(gu)) for x, w, gu in inputs]


def test_variants_built_ahead_on_threads_then_no_build_and_same_results(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))       # nothing on disk either
    inputs = _inputs(SIZES)
    late_compiles.pause()                   # as an engine's start-up: hooks installed, counts from zero
    built, seconds = compile_ahead(lambda: _run(inputs), workers=4)
    assert built == 2 * len(SIZES) and seconds > 0       # one RMSNorm and one SiLU-and-mul variant per size
    assert late_compiles.ahead_compiles == built         # counted as the pool's, not as one-by-one start-up builds
    late_compiles.watch_late_compiles()
    before = late_compiles.late_compiles
    try:
        got = _run(inputs)
        torch.cuda.synchronize()
        assert late_compiles.late_compiles == before     # all found built
    finally:
        late_compiles.pause()
    for (x, w, gu), (norm, act) in zip(inputs, got):
        xf = x.float()
        ref_norm = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()).to(x.dtype)
        d = gu.shape[-1] // 2
        ref_act = (torch.nn.functional.silu(gu[:, :d].float()) * gu[:, d:].float()).to(gu.dtype)
        torch.testing.assert_close(norm, ref_norm, rtol=1.6e-2, atol=1e-2)
        torch.testing.assert_close(act, ref_act, rtol=1.6e-2, atol=1e-2)


@triton.jit
def _fails_to_build(X, FAIL: triton.language.constexpr):
    triton.language.static_assert(FAIL == 0, "this variant does not build")
    triton.language.store(X, 1.0)


def test_a_variant_that_fails_to_build_raises_at_its_launch_and_leaves_no_mode_behind(tmp_path, monkeypatch):
    """A build that fails on the pool (a config the kernel rejects, e.g. a 16-wide fp8 dot) is left out: the real
    launch raises that compile error as it would without the pool, and a later engine in this process can build
    ahead again (Triton's AsyncCompileMode is not left active: it was, and every later engine then failed)."""
    from triton.runtime._async_compile import AsyncCompileMode, active_mode
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    x = torch.zeros(1, device="cuda")
    late_compiles.pause()
    built, _ = compile_ahead(lambda: _fails_to_build[(1,)](x, FAIL=1), workers=2)
    assert built == 1 and active_mode.get() is None
    with pytest.raises(Exception, match="this variant does not build"):
        _fails_to_build[(1,)](x, FAIL=1)
    built, _ = compile_ahead(lambda: _fails_to_build[(1,)](x, FAIL=0), workers=2)
    _fails_to_build[(1,)](x, FAIL=0)
    assert built == 1 and float(x) == 1.0
    with AsyncCompileMode(None):     # would raise "Another AsyncCompileMode is already active"
        pass


@pytest.mark.parametrize("prep", [True, False])
def test_launchers_are_built_on_the_pool_so_the_first_launches_run_no_compiler(tmp_path, monkeypatch, prep):
    """PAGEDLLM_TRITON_PREP (default on): each built variant's C launcher is built on the pool too, so the real
    warm-up's first launches only load them; off, the first launches run gcc one after the other (session 27)."""
    from triton.runtime import build
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))       # launchers are cached there too: none yet
    monkeypatch.setenv("PAGEDLLM_TRITON_PREP", "1" if prep else "0")
    sizes = [1400 + 24 * i for i in range(3)] if prep else [1600 + 24 * i for i in range(3)]    # unbuilt variants
    inputs = _inputs(sizes)
    late_compiles.pause()
    built, _ = compile_ahead(lambda: _run(inputs), workers=4)
    assert built == 2 * len(sizes)
    compiler_runs = []
    real_build = build._build
    monkeypatch.setattr(build, "_build", lambda name, *a: compiler_runs.append(name) or real_build(name, *a))
    try:
        _run(inputs)
        torch.cuda.synchronize()
    finally:
        late_compiles.pause()
    assert (compiler_runs == []) == prep, compiler_runs


def test_triton_prepared_in_background_builds_its_cuda_helper_into_the_cache(tmp_path, monkeypatch):
    from pagedllm.kernels import parallel_compile
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(parallel_compile, "_prep", None)
    parallel_compile.prepare_triton_in_background()
    parallel_compile.wait_for_triton_prep()
    assert parallel_compile._prep is not None and not parallel_compile._prep.is_alive()
    assert [p.name for p in tmp_path.rglob("cuda_utils*.so")], list(tmp_path.rglob("*"))


def test_a_graph_captured_without_warm_up_builds_a_missed_variant_outside_the_capture(tmp_path, monkeypatch):
    """worker/cuda_graphs.capture_after_warm_up on real kernels: a capture meeting a variant not built yet is dropped
    (the launch skipped, not built inside the capture), warmed up and captured again; the graph it keeps replays what
    the eager kernels compute, and a second capture of the same sizes goes direct."""
    from pagedllm.worker.cuda_graphs import _capturing, capture_after_warm_up
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PAGEDLLM_CAPTURE_WARMUP_EACH", "0")
    inputs = _inputs([n + 8 for n in SIZES[:2]])        # sizes of their own: unbuilt in this process
    stream = torch.cuda.Stream()

    def capture():
        graph = torch.cuda.CUDAGraph()
        with _capturing(graph, None, stream):
            out = _run(inputs)
        return graph, out

    ways = []
    for _ in range(2):
        (graph, out), _, way = capture_after_warm_up(capture, lambda: _run(inputs), warm_first=False)
        ways.append(way)
        for x, _w, gu in inputs:          # new values in the static inputs: the replay must compute from them
            x.normal_(), gu.normal_()
        graph.replay()
        torch.cuda.synchronize()
        for (x, w, gu), (norm, act) in zip(inputs, out):
            torch.testing.assert_close(norm, triton_ops.rms_norm(x, w, 1e-6)[0])
            torch.testing.assert_close(act, triton_ops.silu_and_mul(gu))
    assert ways == ["again", "direct"]
