"""Skinny-GEMM Triton kernel (pagedllm.kernels.triton_gemv) vs F.linear in fp32 (GPU, or TRITON_INTERPRET=1 on CPU)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_env import DEVICE, INTERPRET, NEEDS_GPU_OR_INTERPRETER

triton = pytest.importorskip("triton")

pytestmark = NEEDS_GPU_OR_INTERPRETER
# Triton 3.6's interpreter mis-converts to bf16; test fp16 there instead.
DTYPES = [torch.float16] if INTERPRET else [torch.bfloat16, torch.float16]

from pagedllm.kernels import triton_gemv  # noqa: E402
from pagedllm.kernels.triton_gemv import GemvConfig, skinny_linear, skinny_linear_with_config  # noqa: E402

# (N, K, bias): Qwen2.5-1.5B / 7B decode shapes, then odd ones (N, K not multiples of any block).
MODEL_SHAPES = [
    (2048, 1536, True), (1536, 1536, False), (17920, 1536, False), (1536, 8960, False),
    (4608, 3584, True), (3584, 3584, False), (37888, 3584, False), (3584, 18944, False),
]
LM_HEAD_SHAPES = [(151936, 1536, False), (152064, 3584, False)]
ODD_SHAPES = [(1, 64, True), (7, 100, False), (1000, 1000, True), (4099, 3001, True), (129, 17, False),
              (300, 8968, False)]
MS = [1, 2, 3, 8, 16]

if INTERPRET:   # the interpreter is slow: small shapes only
    SHAPES = [(2048, 1536, True), (1536, 96, False)] + ODD_SHAPES[:3] + [(129, 17, False)]
else:
    SHAPES = MODEL_SHAPES + LM_HEAD_SHAPES + ODD_SHAPES


def rel_err(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm()).item()


def _inputs(m, n, k, bias, dtype, seed=0):
    g = torch.Generator().manual_seed(seed * 7919 + m * 31 + n + k)
    x = torch.randn(m, k, generator=g).to(dtype).to(DEVICE)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(dtype).to(DEVICE)
    b = torch.randn(n, generator=g).to(dtype).to(DEVICE) if bias else None
    return x, w, b


def _ref(x, w, b):
    return F.linear(x.float(), w.float(), None if b is None else b.float())


CASES = [(n, k, bias, DTYPES[0]) for n, k, bias in SHAPES]
if not INTERPRET:   # fp16 on a few shapes (compiles are per dtype)
    FP16_SHAPES = [(2048, 1536, True), (3584, 18944, False), (4099, 3001, True), (300, 8968, False)]
    CASES += [(n, k, bias, torch.float16) for n, k, bias in FP16_SHAPES]


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("n,k,bias,dtype", CASES)
@pytest.mark.parametrize("with_bias", [None, "flip"])
def test_skinny_linear(n, k, bias, m, dtype, with_bias):
    if with_bias == "flip":
        bias = not bias
    x, w, b = _inputs(m, n, k, bias, dtype)
    out = skinny_linear(x, w, b)
    assert out is not None
    assert out.shape == (m, n) and out.dtype == dtype
    assert rel_err(out, _ref(x, w, b)) < 1e-2


@pytest.mark.parametrize("cfg", triton_gemv.CANDIDATES_M1 + triton_gemv.CANDIDATES_M16, ids=str)
def test_configs(cfg):
    """Every tile config the sweep may pick (split-K included) is correct, with K and N tails and a K so short that
    some splits are empty; FMA configs (meant for M == 1) also at M > 1, where they run the dot path."""
    dtype = DTYPES[0]
    for (n, k, bias), ms in [((4099, 3001, True), (1, 5, 16)), ((129, 17, False), (1, 3)),
                             ((1000, 2048, False), (1, 16))]:
        if INTERPRET and n > 1000 and not (cfg.split_k == 2 and cfg.block_n == 16):
            continue
        for m in ms:
            x, w, b = _inputs(m, n, k, bias, dtype, seed=1)
            out = skinny_linear_with_config(x, w, b, cfg)
            assert rel_err(out, _ref(x, w, b)) < 1e-2, (n, k, m)
            if cfg.split_k > 1:                  # the arrival counters were reset: a second call is right too
                out = skinny_linear_with_config(x, w, b, cfg)
                assert rel_err(out, _ref(x, w, b)) < 1e-2, (n, k, m)


def test_table_configs_run():
    """Every config in the measured table compiles and is correct on its own shape (M = 1 and 16)."""
    for (n, k), per_m in triton_gemv._TABLE.items():
        if INTERPRET and n * k > 4_000_000:
            continue
        for bucket, cfg in per_m.items():
            x, w, b = _inputs(bucket, n, k, False, DTYPES[0], seed=2)
            assert rel_err(skinny_linear_with_config(x, w, b, cfg), _ref(x, w, b)) < 1e-2


def test_declines():
    x = torch.randn(17, 64).to(DTYPES[0]).to(DEVICE)
    w = torch.randn(32, 64).to(DTYPES[0]).to(DEVICE)
    assert skinny_linear(x, w) is None                                   # M > 16
    assert skinny_linear(x[:4].float(), w.float()) is None               # fp32
    assert skinny_linear(x[:4], w[:, ::2].contiguous()) is None          # K mismatch
    wt = torch.randn(64, 32).to(DTYPES[0]).to(DEVICE).t()                # non-contiguous weight
    assert skinny_linear(x[:4], wt) is None
    assert skinny_linear(x[:4, ::2], w[:, :32].contiguous()) is None     # non-contiguous x
    if not INTERPRET:
        assert skinny_linear(x[:4].cpu(), w.cpu()) is None                # not CUDA


# ------------------------------------------------------------------- gate_up with SiLU-and-mul in the epilogue
GATED_SHAPES = ([(17920, 1536, False), (37888, 3584, False), (1002, 300, True)] if not INTERPRET
                else [(1002, 300, True), (48, 200, False)])
GATED_CFGS = [GemvConfig(8, 512, 4, 1, False), GemvConfig(8, 256, 4, 1, False, 2), GemvConfig(2, 128, 4, 1, False),
              GemvConfig(64, 128, 4, 3), GemvConfig(32, 256, 4, 5, True, 2), GemvConfig(16, 64, 4, 2)]


@pytest.mark.parametrize("n2,k,bias", GATED_SHAPES)
@pytest.mark.parametrize("cfg", GATED_CFGS, ids=str)
def test_gated_equals_linear_then_silu_and_mul(n2, k, bias, cfg):
    """gated=True (PAGEDLLM_GATE_UP_SILU): the [gate; up] GEMM with SiLU-and-mul in its epilogue gives the same bits
    as the same GEMM followed by triton_ops.silu_and_mul, for the FMA path (split-K too, and a tile of one output)
    and the dot path, output widths that are not a multiple of the tile, with and without bias; a second call after
    a split-K one is right (counters reset)."""
    from pagedllm.kernels.triton_ops import silu_and_mul
    for m in ((1, 3, 16) if cfg.use_dot else (1,)):
        x, w, b = _inputs(m, n2, k, bias, DTYPES[0], seed=4)
        expected = silu_and_mul(skinny_linear_with_config(x, w, b, cfg))
        for _ in range(2 if cfg.split_k > 1 else 1):
            out = skinny_linear_with_config(x, w, b, cfg, gated=True)
            assert out.shape == (m, n2 // 2) and out.dtype == x.dtype
            assert torch.equal(out, expected), (m, cfg)


def test_skinny_linear_silu_routes_as_skinny_linear():
    """skinny_linear_silu takes the table's config of the [gate; up] shape wherever skinny_linear would
    take the GEMM, and declines (None) where it would not: more rows than routed, fp32, an odd number of rows."""
    from pagedllm.kernels.triton_gemv import skinny_linear_silu
    from pagedllm.kernels.triton_ops import silu_and_mul
    n2, k = (17920, 1536) if not INTERPRET else (1002, 300)
    x, w, _ = _inputs(1, n2, k, False, DTYPES[0], seed=5)
    y = skinny_linear_silu(x, w)
    assert torch.equal(y, silu_and_mul(skinny_linear(x, w)))
    x17 = torch.randn(17, k).to(DTYPES[0]).to(DEVICE)
    assert skinny_linear_silu(x17, w) is None                     # M > 16
    assert skinny_linear_silu(x.float(), w.float()) is None       # fp32
    assert skinny_linear_silu(x, w[:-1].contiguous()) is None     # odd rows: not [gate; up]
    with pytest.raises(ValueError, match="gated"):
        skinny_linear_with_config(x, w[:-1].contiguous(), None, GemvConfig(8, 512, 4, 1, False), gated=True)


def test_empty():
    x = torch.randn(0, 64).to(DTYPES[0]).to(DEVICE)
    w = torch.randn(32, 64).to(DTYPES[0]).to(DEVICE)
    out = skinny_linear(x, w)
    assert out.shape == (0, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.parametrize("cfg", [None, GemvConfig(16, 512, 8, 1, False, 2), GemvConfig(16, 512, 4, 5, True, 3)],
                         ids=str)
def test_cuda_graph_capture(m, cfg):
    """Captured calls (several in one graph, split-K sharing the workspace) replay correctly on new inputs."""
    x, w, b = _inputs(m, 4608, 3584, True, torch.bfloat16, seed=3)
    w2 = torch.randn(1536, 3584, device="cuda", dtype=torch.bfloat16) * 0.02

    def fn():
        if cfg is None:
            y = skinny_linear(x, w, b)
            return y, skinny_linear(x, w2)
        y = skinny_linear_with_config(x, w, b, cfg)
        return y, skinny_linear_with_config(x, w2, None, cfg)

    fn()                                                  # warm-up (compile, workspace) outside capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out, out2 = fn()
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        assert rel_err(out, _ref(x, w, b)) < 1e-2
        assert rel_err(out2, _ref(x, w2, None)) < 1e-2


PREFETCH_CONFIGS = [GemvConfig(8, 512, 4, 1, False, prefetch=True), GemvConfig(8, 512, 4, 1, False, 2, prefetch=True),
                    GemvConfig(64, 256, 4, 5, prefetch=True), GemvConfig(32, 256, 4, 5, True, 2, prefetch=True)]


@pytest.mark.parametrize("cfg", PREFETCH_CONFIGS, ids=str)
def test_l2_prefetch_configs(cfg):
    """With the L2 prefetch before the PDL wait (the FMA path prefetches past its first tile, the dot path its whole
    slice, split-K each split's share): the same products, K tails shorter than a 128-byte line and N tails
    included, and a K longer than one 1,024-line prefetch round (8968 columns at BLOCK_N 8)."""
    for (n, k, bias), ms in [((4099, 3001, True), (1, 5, 16)), ((129, 17, False), (1, 3)), ((300, 8968, False), (1, 8))]:
        if INTERPRET and n > 1000:
            continue
        for m in ms:
            x, w, b = _inputs(m, n, k, bias, DTYPES[0], seed=4)
            assert rel_err(skinny_linear_with_config(x, w, b, cfg), _ref(x, w, b)) < 1e-2, (n, k, m)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("m", [1, 8])
def test_l2_prefetch_after_a_producer_in_a_graph(m):
    """A prefetching call launched early after the kernel that writes its x (PDL, captured in a graph) still reads
    the new x: the prefetch touches only W before the wait."""
    x0, w1, _ = _inputs(m, 3584, 3584, False, torch.bfloat16, seed=5)
    w2 = torch.randn(3584, 3584, device="cuda", dtype=torch.bfloat16) * 0.02
    cfg = GemvConfig(8, 512, 4, 1, False, prefetch=True) if m == 1 else GemvConfig(64, 256, 4, 5, prefetch=True)

    def fn():
        return skinny_linear_with_config(skinny_linear_with_config(x0, w1, None, cfg), w2, None, cfg)

    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    for _ in range(3):
        x0.copy_(torch.randn_like(x0))
        g.replay()
        torch.cuda.synchronize()
        mid = _ref(x0, w1, None).to(torch.bfloat16)
        assert rel_err(out, _ref(mid, w2, None)) < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the layer routes CUDA tensors only")
def test_routing_follows_the_measurements(monkeypatch):
    """A layer sends M == 1 to the kernel on any shape, 2 <= M <= 16 only where the kernel measured faster than
    cuBLAS (7B gate_up yes, 7B qkv yes since session 15, an untabled shape no), and each M bucket gets its own
    config."""
    from pagedllm.model.layers import linear
    assert triton_gemv.preferred(1, 4608, 3584) and triton_gemv.preferred(1, 1000, 1000)
    assert triton_gemv.preferred(8, 37888, 3584) and triton_gemv.preferred(2, 3584, 18944)
    assert triton_gemv.preferred(8, 4608, 3584) and not triton_gemv.preferred(8, 1000, 1000)
    assert not triton_gemv.preferred(17, 37888, 3584)
    assert triton_gemv.get_config(3, 3584, 18944).pdl is False          # measured faster without PDL
    assert triton_gemv.get_config(12, 3584, 18944) == triton_gemv._TABLE[(3584, 18944)][16]
    calls = []
    real = triton_gemv.skinny_linear
    monkeypatch.setattr(triton_gemv, "skinny_linear", lambda *a, **kw: calls.append(a[0].shape[0]) or real(*a, **kw))
    for m, n in [(1, 4608), (8, 4608), (8, 3584), (20, 3584)]:
        x, w, b = _inputs(m, n, 3584, False, torch.bfloat16)
        torch.testing.assert_close(linear.cuda_linear(x, w, b).float(), _ref(x, w, b), rtol=2e-2, atol=2e-2)
    assert calls == [1, 8, 8]       # anything at M = 20 stayed with cuBLAS
    monkeypatch.setattr(linear, "_SKINNY_MAX_M", 1)                     # PAGEDLLM_SKINNY_MAX_M=1
    x, w, b = _inputs(8, 3584, 3584, False, torch.bfloat16)
    linear.cuda_linear(x, w, b)
    assert calls == [1, 8, 8]
