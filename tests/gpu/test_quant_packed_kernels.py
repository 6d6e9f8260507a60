"""Packed int4/int8 Triton matmuls (pagedllm.kernels.quant.triton_packed) against packed.reference_matmul.

GPU: the full grid (bits x group sizes x M = 1..4096 x odd N x fp16/bf16, perm, GGUF-converted weights, every
candidate config, CUDA-graph replay). Under TRITON_INTERPRET=1 on the CPU: a small subset (fp16, small shapes).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from kernel_env import DEVICE, INTERPRET, NEEDS_GPU_OR_INTERPRETER

triton = pytest.importorskip("triton")

pytestmark = NEEDS_GPU_OR_INTERPRETER
# Triton 3.6's interpreter mis-converts to bf16; test fp16 there.
DTYPES = [torch.float16] if INTERPRET else [torch.bfloat16, torch.float16]
big_only = pytest.mark.skipif(INTERPRET, reason="too slow under the Triton interpreter")

from pagedllm.kernels.quant import triton_packed  # noqa: E402
from pagedllm.kernels.quant.packed import PackedWeight, pack_along_k, reference_matmul  # noqa: E402
from pagedllm.kernels.quant.triton_packed import (  # noqa: E402
    CANDIDATES, PackedConfig, packed_matmul, packed_matmul_with_config)

if INTERPRET:
    MS, NS, K, GROUPS = [1, 2, 16, 33, 130], [72, 40], 512, [16, 32, 64, 128, None]
else:
    MS, NS, K, GROUPS = [1, 2, 3, 4, 7, 16, 33, 128, 1000, 4096], [584, 1536, 4736], 1024, [16, 32, 64, 128, None]

# Error of the kernels against the float32 reference, relative to the result's norm: the dequantized tile is rounded
# to x's dtype before the tensor-core dot (2^-8 for bf16, 2^-11 for fp16) and the output is rounded once more.
TOL = {torch.bfloat16: 1.2e-2, torch.float16: 2e-3}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm()).item()


def random_packed(k: int, n: int, bits: int, group_size: int, seed: int, perm: bool = False,
                  scale_dtype: torch.dtype = torch.float16) -> PackedWeight:
    """Random unsigned q, zero points z and scales s (offset = -z * s) so that W = (q - z) * s is centred."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 1 << bits, (k, n), generator=g)
    groups = k // group_size
    scales = (torch.rand(groups, n, generator=g) + 0.5) * (2.0 / (1 << bits)) / k ** 0.5
    zeros = torch.randint(0, 1 << bits, (groups, n), generator=g).float()
    w = PackedWeight(qweight=pack_along_k(q, bits), scales=scales.to(scale_dtype),
                     offsets=(-zeros * scales).to(scale_dtype), bits=bits, group_size=group_size,
                     perm=torch.randperm(k, generator=g) if perm else None)
    return _to_device(w)


def _to_device(w: PackedWeight) -> PackedWeight:
    return PackedWeight(qweight=w.qweight.to(DEVICE), scales=w.scales.to(DEVICE), offsets=w.offsets.to(DEVICE),
                        bits=w.bits, group_size=w.group_size, perm=None if w.perm is None else w.perm.to(DEVICE))


def _x(m: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g).to(dtype).to(DEVICE)


def _check(x, w, bias=None, y=None):
    y = packed_matmul(x, w, bias) if y is None else y
    ref = reference_matmul(x.float(), w, None if bias is None else bias.float())
    assert y.shape == ref.shape and y.dtype == x.dtype
    err = rel_err(y, ref)
    assert err < TOL[x.dtype], f"relative error {err:.2e}"


def _cases():
    cases = []
    for bits in (4, 8):
        for group in GROUPS:
            for i, m in enumerate(MS):
                for dtype in DTYPES:
                    n = NS[(i + bits + (group or 0)) % len(NS)]      # every N meets every M class across groups
                    cases.append((bits, group, m, n, dtype))
    return cases


@pytest.mark.parametrize("bits,group,m,n,dtype", _cases(),
                         ids=lambda v: str(v).replace("torch.", "") if not isinstance(v, int) else str(v))
def test_packed_matmul_matches_reference(bits, group, m, n, dtype):
    group_size = group or K                   # None: one group per column (per-channel)
    w = random_packed(K, n, bits, group_size, seed=bits * 1000 + group_size + n)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(m)).to(dtype).to(DEVICE) if m % 2 else None
    _check(_x(m, K, dtype, seed=m), w, bias)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("m", [1, 5, 40])
def test_k_not_a_multiple_of_the_tile(bits, m):
    """K = 16 * 23 (group 16) and per-channel: the last K tile of every kernel is partial (masked)."""
    k = 368 if INTERPRET else 16 * 67
    for group_size in (16, k):
        w = random_packed(k, 136, bits, group_size, seed=group_size + m)
        _check(_x(m, k, DTYPES[0], seed=m), w)


@pytest.mark.parametrize("m", [1, 6, 48])
def test_perm_desc_act(m):
    """GPTQ desc_act: x's columns are gathered by perm before the kernel."""
    w = random_packed(K, NS[0], 4, 128 if K >= 256 else 32, seed=m, perm=True)
    x = _x(m, K, DTYPES[0], seed=m)
    _check(x, w)
    # The same weight without perm, x gathered by the caller: the same numbers.
    plain = PackedWeight(w.qweight, w.scales, w.offsets, w.bits, w.group_size)
    torch.testing.assert_close(packed_matmul(x, w), packed_matmul(x[:, w.perm], plain), rtol=0, atol=0)


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
def test_scale_dtypes(scale_dtype):
    w = random_packed(K, NS[0], 4, 32, seed=3, scale_dtype=scale_dtype)
    for m in (1, 4, 33):
        _check(_x(m, K, DTYPES[0], seed=m), w)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"])
def test_gguf_converted_weights(qtype):
    gguf = pytest.importorskip("gguf")
    from pagedllm.kernels.quant.gguf_packed import gguf_to_packed
    n, k = (40, 256) if INTERPRET else (584, 1024)
    kind = gguf.GGMLQuantizationType[qtype]
    rng = np.random.default_rng(int(kind))
    if qtype in ("Q4_0", "Q4_1", "Q8_0"):
        data = gguf.quants.quantize((rng.standard_normal((n, k)) / k ** 0.5).astype(np.float32), kind)
    else:   # gguf has no K-quant quantizer: random blocks with sane fp16 fields (as tests/unit/test_gguf_packed.py)
        block, type_size = gguf.GGML_QUANT_SIZES[kind]
        blocks = rng.integers(0, 256, size=(n * k // block, type_size), dtype=np.uint8)
        for at in ((208,) if qtype == "Q6_K" else (0, 2)):
            blocks[:, at:at + 2] = (rng.standard_normal(blocks.shape[0]) * 1e-3).astype(np.float16).view(
                np.uint8).reshape(-1, 2)
        data = blocks.reshape(n, -1)
    w = _to_device(gguf_to_packed(data, kind))
    for m in ([1, 3, 20] if INTERPRET else [1, 8, 40, 300]):
        _check(_x(m, k, DTYPES[0], seed=m), w)


@pytest.mark.parametrize("bucket", sorted(CANDIDATES))
def test_every_candidate_config(bucket):
    """Every config the benchmark sweeps computes the right thing (so the table can take any of them)."""
    m = {1: 1, 16: 9, 32: 24, 64: 40, 128: 100, 256: 200, 4096: 300}[bucket]
    if INTERPRET and bucket > 64:
        pytest.skip("too slow under the Triton interpreter")
    n, k = (72, 256) if INTERPRET else (1000, 2048)
    configs = CANDIDATES[bucket][:3] if INTERPRET else CANDIDATES[bucket]
    for bits in (4, 8):
        w = random_packed(k, n, bits, 128, seed=bits)
        x = _x(m, k, DTYPES[0], seed=bucket)
        for cfg in configs:
            _check(x, w, y=packed_matmul_with_config(x, w, None, cfg))


@pytest.mark.parametrize("n", [128, 136])
@pytest.mark.parametrize("even_tiles", [False, True])
def test_column_tiles_even_and_ragged(n, even_tiles, monkeypatch):
    """Every kernel of triton_packed with N a multiple of its column tile (EVEN_N, where _EVEN_N_TILES allows it:
    unclamped, vector loads, unmasked dequantize stores) and with a ragged last tile (clamped loads, masked stores):
    decode (FMA, FMA with prefetch, dot), dequantize + cuBLAS (two tiles) and the fused GEMM."""
    monkeypatch.setattr(triton_packed, "_EVEN_N_TILES", even_tiles)
    k = 256
    configs = [(1, PackedConfig(1, 64, 128, 4, 1)), (1, PackedConfig(1, 128, 64, 4, 1, prefetch=True)),
               (5, PackedConfig(16, 64, 128, 4, 3)), (40, triton_packed._DQ),
               (40, PackedConfig(0, 64, 256, 4, 1, cublas=True)), (40, PackedConfig(32, 64, 64, 4, 2))]
    for bits in (4, 8):
        w = random_packed(k, n, bits, 32, seed=n + bits)
        for m, cfg in configs:
            plan = triton_packed._make_plan(m, n, k, bits, 32, False, torch.device(DEVICE), cfg)
            assert plan.constexprs["EVEN_N"] == (even_tiles and n == 128), cfg
            x = _x(m, k, DTYPES[-1], seed=m)
            _check(x, w, y=packed_matmul_with_config(x, w, None, cfg))


@pytest.mark.parametrize("even_tiles", [False, True])
def test_scratch_in_slabs_matches_the_whole_scratch(even_tiles, monkeypatch):
    """SCRATCH_SLAB_BYTES: the dequantize + cuBLAS path a column slab at a time (slabs of 128 columns over N 328:
    two whole, one ragged; 4-bit g128 and 8-bit gathered groups, per-channel, with and without a bias) gives the
    whole-W path's result and the reference's."""
    monkeypatch.setattr(triton_packed, "_EVEN_N_TILES", even_tiles)
    n, k, m = 328, 256, 40
    x = _x(m, k, DTYPES[-1], seed=m)
    bias = _x(1, n, DTYPES[-1], seed=n)[0]
    for bits, group in [(4, 128), (8, 32), (4, None)]:
        w = random_packed(k, n, bits, group or k, seed=bits + (group or 0))
        for b in (None, bias):
            monkeypatch.setattr(triton_packed, "SCRATCH_SLAB_BYTES", 0)
            whole = packed_matmul_with_config(x, w, b, triton_packed._DQ)
            monkeypatch.setattr(triton_packed, "SCRATCH_SLAB_BYTES", 2 * k * 128)
            assert triton_packed.slab_cols(k, n, triton_packed._DQ.block_n) == 128
            slabs = packed_matmul_with_config(x, w, b, triton_packed._DQ)
            _check(x, w, b, slabs)
            torch.testing.assert_close(slabs, whole, rtol=1e-3, atol=1e-3)


def test_split_k_is_deterministic_and_reusable():
    """Split-K's arrival counters are reset by the kernel: repeated calls give the same bits."""
    n, k = (40, 1024) if INTERPRET else (584, 8192)
    w = random_packed(k, n, 4, 128, seed=0)
    # 4 K tiles in 4 splits; 8 tiles in 3 splits (the last one partly past K: masked), also with the prefetch.
    for m, cfg in ((1, PackedConfig(1, 32, 256, 4, 1, 4)), (4, PackedConfig(16, 32, 128, 4, 3, 4)),
                   (1, PackedConfig(1, 32, 128, 4, 1, 3)), (3, PackedConfig(16, 32, 128, 4, 3, 3)),
                   (1, PackedConfig(1, 32, 128, 4, 1, 3, prefetch=True))):
        x = _x(m, k, DTYPES[0], seed=m)
        first = packed_matmul_with_config(x, w, None, cfg)
        _check(x, w, y=first)
        for _ in range(3):
            torch.testing.assert_close(packed_matmul_with_config(x, w, None, cfg), first, rtol=0, atol=0)


def test_rejects_mismatched_k():
    w = random_packed(256, 32, 4, 32, seed=0)
    triton_packed._PLANS.clear()
    with pytest.raises(ValueError, match="x has 128 features; the packed weight takes 256"):
        packed_matmul(_x(1, 128, DTYPES[0], seed=0), w)


@big_only
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs")
def test_cuda_graph_replay():
    """Decode shapes captured in a CUDA graph (split-K workspace allocated before capture) replay correctly."""
    w = random_packed(3584, 4608, 4, 128, seed=1)
    xs = [_x(m, 3584, torch.bfloat16, seed=m) for m in (1, 4)]
    eager = [packed_matmul(x, w) for x in xs]          # warm-up: compiles, workspace
    _assert_graph_replays_negated(xs, [w] * len(xs), eager)


@big_only
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs")
def test_capture_without_a_big_enough_scratch_takes_the_fused_gemm(monkeypatch):
    """A prefill-sized call first met inside a CUDA-graph capture cannot grow the dequantize scratch there: it runs
    the fused GEMM instead, allocates no scratch, and replays correctly."""
    monkeypatch.setattr(triton_packed, "_SCRATCH", {})
    monkeypatch.setattr(triton_packed, "_PLANS", {})
    w = random_packed(1024, 584, 4, 128, seed=5)
    x = _x(300, 1024, torch.bfloat16, seed=5)
    assert triton_packed.get_config(300, 584, 1024, 4, 128).cublas          # the scratch path outside capture
    eager = packed_matmul_with_config(x, w, None, triton_packed._IN_CAPTURE_GEMM)   # compiles the fused GEMM
    _check(x, w, y=eager)
    _assert_graph_replays_negated([x], [w], [eager])
    assert not triton_packed._SCRATCH


def _assert_graph_replays_negated(xs, ws, eager):
    """Capture ``packed_matmul`` of each (x, w), negate the inputs in place, replay: the outputs must be -eager."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [packed_matmul(x, w) for x, w in zip(xs, ws)]
    for x in xs:
        x.mul_(-1.0)
    graph.replay()
    torch.cuda.synchronize()
    for out, e in zip(outs, eager):
        torch.testing.assert_close(out, -e, rtol=0, atol=0)


# --- M == 1, 4-bit: triton_packed_gemv (the batch-1 kernel) ---------------------------------------------------------

from pagedllm.kernels.quant import triton_packed_gemv  # noqa: E402
from pagedllm.kernels.quant.triton_packed_gemv import GEMV_CANDIDATES, PackedGemvConfig  # noqa: E402

# The kernel's math is reference_matmul's in fp32 (q exact, scale once a tile): what is left is the output's rounding
# to x's dtype (2^-9 for bf16, 2^-12 for fp16 at most per element; less over the norm).
GEMV_TOL = {torch.bfloat16: 4e-3, torch.float16: 6e-4}
# Inline PTX does not run in the interpreter: there, the same kernel with Triton's & and | (asm=False).
GEMV_CONFIGS = ([c._replace(asm=False, block_n=32, num_warps=1) for c in GEMV_CANDIDATES[:4]] if INTERPRET
                else GEMV_CANDIDATES)
# Every candidate at group 128 (what the 7B sweep times); three at the other group sizes (compile time on the GPU).
GEMV_FEW = GEMV_CONFIGS[:2] + [GEMV_CONFIGS[1]._replace(asm=False)]
asm_only = pytest.mark.skipif(INTERPRET, reason="inline PTX does not run in the Triton interpreter")


def _check_gemv(x, w, bias, cfg, tol=None):
    y = packed_matmul_with_config(x, w, bias, cfg)
    ref = reference_matmul(x.float(), w, None if bias is None else bias.float())
    assert y.shape == ref.shape and y.dtype == x.dtype
    err = rel_err(y, ref)
    assert err < (tol or GEMV_TOL)[x.dtype], f"{cfg}: relative error {err:.2e}"
    return y


def _no_offsets(w: PackedWeight) -> PackedWeight:
    return PackedWeight(w.qweight, w.scales, torch.zeros_like(w.offsets), w.bits, w.group_size, w.perm)


@pytest.mark.parametrize("group", [32, 64, 128, None])
@pytest.mark.parametrize("offsets", [True, False])
def test_gemv_matches_reference(group, offsets):
    """Every swept config; group sizes 32/64/128 and per-channel; odd N (a ragged last column tile, unaligned rows);
    K of several groups; with and without offsets, bias on odd N."""
    k = 512 if INTERPRET else 2048
    group_size = group or k
    for n in ([40, 37] if INTERPRET else [1536, 1001]):
        w = random_packed(k, n, 4, group_size, seed=n + group_size)
        if not offsets:
            w = _no_offsets(w)
        bias = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(DTYPES[0]).to(DEVICE) if n % 2 else None
        for dtype in DTYPES:
            x = _x(1, k, dtype, seed=n)
            configs = GEMV_CONFIGS if group == 128 and dtype == DTYPES[0] else GEMV_FEW
            for cfg in configs:
                _check_gemv(x, w, bias if bias is None else bias.to(dtype), cfg)


@pytest.mark.parametrize("split_k", [1, 3, 5])
def test_gemv_uneven_splits(split_k):
    """Splits that do not divide the K tiles: the last split's tiles past K are masked (words 0, scale 0)."""
    k, n = (640, 48) if INTERPRET else (3584, 584)
    w = random_packed(k, n, 4, 128 if not INTERPRET else 32, seed=split_k)
    x = _x(1, k, DTYPES[0], seed=split_k)
    for nsub, prefetch, ahead, half in ((1, True, 0, False), (2, False, 0, False), (2, False, 3, False),
                                        (2, False, 0, 1), (1, True, 0, 1), (2, False, 0, 2)):   # ahead: L2 prefetch
        cfg = PackedGemvConfig(32 if INTERPRET else 128, 16, nsub, 1 if INTERPRET else 4, prefetch=prefetch,
                               asm=not INTERPRET, split_k=split_k, l2_ahead=ahead, half=half, so_tile=half)
        first = packed_matmul_with_config(x, w, None, cfg)
        (_check_half if half else _check_gemv)(x, w, None, cfg)
        torch.testing.assert_close(packed_matmul_with_config(x, w, None, cfg), first, rtol=0, atol=0)


# The f16x2 path (half=True) rounds each product and each sum of four to fp16 (2^-11 relative at most, x scaled by a
# power of two per program so that nothing overflows); the sums of those are fp32 as on the fp32 path.
HALF_TOL = {torch.bfloat16: 5e-3, torch.float16: 1.5e-3}
HALF_CONFIGS = [c for c in GEMV_CANDIDATES if c.half]
if INTERPRET:     # one and two sub-tiles of each scale mode (per program, per packed row)
    HALF_CONFIGS = [c._replace(asm=False, block_n=32, num_warps=1)
                    for c in [next(c for c in HALF_CONFIGS if c.half == h and c.nsub == nsub)
                              for h in (1, 2) for nsub in (1, 2)]]


def _check_half(x, w, bias, cfg):
    return _check_gemv(x, w, bias, cfg, HALF_TOL)


@pytest.mark.parametrize("group", [32, 128, None])
def test_gemv_half_matches_reference(group):
    """half=True: every swept f16x2 config against the fp32 reference, odd N with a bias, and x with a wide range:
    outliers (an activation of 3e4, a thousand times the rest) and values far below the largest (1e-6)."""
    k = 512 if INTERPRET else 2048
    group_size = group or k
    for n in ([40, 37] if INTERPRET else [1536, 1001]):
        w = random_packed(k, n, 4, group_size, seed=n + group_size + 1)
        bias = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(DTYPES[0]).to(DEVICE) if n % 2 else None
        for dtype in DTYPES:
            x = _x(1, k, dtype, seed=n + 1)
            wide = x.clone()
            wide[0, 3] = 3e4
            wide[0, k // 2 + 1] = -2e4
            wide[0, 8:40] *= 1e-6
            for cfg in HALF_CONFIGS:
                b = None if bias is None else bias.to(dtype)
                _check_half(x, w, b, cfg)
                _check_half(wide, w, b, cfg)


def test_gemv_half_zero_and_extreme_x():
    """x all zero gives exactly the bias; x up to fp16's largest values (65504), and bf16 x up to 1e30, stays finite
    and accurate: the power-of-two scale follows x (per program and per packed row), it is not a fixed one."""
    k, n = (256, 40) if INTERPRET else (3584, 584)
    w = random_packed(k, n, 4, 128 if not INTERPRET else 32, seed=11)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(3)).to(DTYPES[0]).to(DEVICE)
    for cfg, dtype in [(c, d) for c in (HALF_CONFIGS[0], HALF_CONFIGS[-1]) for d in DTYPES]:
        zero = torch.zeros(1, k, dtype=dtype, device=DEVICE)
        torch.testing.assert_close(packed_matmul_with_config(zero, w, bias.to(dtype), cfg), bias.to(dtype)[None],
                                   rtol=0, atol=0)
        big = _x(1, k, torch.float32, seed=5)
        big = (big / big.abs().max() * (6.0e4 if dtype == torch.float16 else 1e30)).to(dtype)
        _check_half(big, w, None, cfg)


def test_gemv_half_scale_pass_in_chunks(monkeypatch):
    """half=1 over a split longer than X_SCALE_BLOCK: the scale pass takes the largest |x| of every chunk, so an
    outlier in the last chunk neither overflows fp16 (inf) nor loses accuracy."""
    monkeypatch.setattr(triton_packed_gemv, "X_SCALE_BLOCK", 64 if INTERPRET else 512)
    k, n = (512, 40) if INTERPRET else (3584, 584)
    w = random_packed(k, n, 4, 32 if INTERPRET else 128, seed=31)
    x = _x(1, k, DTYPES[0], seed=31)
    x[0, k - 5] = 3e4
    cfg = next(c for c in HALF_CONFIGS if c.half == 1)._replace(split_k=1)
    assert triton_packed_gemv.make_plan(n, k, w.group_size, False, 1, cfg).constexprs["XBLOCK"] < k
    _check_half(x, w, None, cfg)


def test_gemv_pipelined_stages():
    """stages > 1 (the words streamed through shared memory by Triton's pipeliner): every such candidate on an odd N
    with a bias, K split unevenly, as accurate as its path without the pipeline; stages with the register prefetch
    is refused."""
    k, n = (640, 37) if INTERPRET else (3584, 1001)
    w = random_packed(k, n, 4, 32 if INTERPRET else 128, seed=21)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(21)).to(DTYPES[0]).to(DEVICE)
    x = _x(1, k, DTYPES[0], seed=21)
    staged = [c for c in GEMV_CANDIDATES if c.stages > 1]
    assert staged
    for cfg in staged:
        if INTERPRET:
            cfg = cfg._replace(asm=False, block_n=32, num_warps=1)
        for split_k in (0, 3):
            _check_gemv(x, w, bias, cfg._replace(split_k=split_k), HALF_TOL if cfg.half else None)
    with pytest.raises(ValueError, match="stages must be"):
        triton_packed_gemv.make_plan(32, 256, 32, False, 4, PackedGemvConfig(prefetch=True, stages=3))


@asm_only
def test_gemv_half_asm_matches_plain():
    """The f16x2 PTX against its plain-Triton twin (same roundings, except the twin's a * b + c is two of them)."""
    w = random_packed(3584, 4608, 4, 128, seed=7)
    x = _x(1, 3584, torch.bfloat16, seed=7)
    for cfg in [next(c for c in HALF_CONFIGS if c.half == h and c.nsub == nsub) for h in (1, 2) for nsub in (1, 2)]:
        a = _check_half(x, w, None, cfg)
        b = _check_half(x, w, None, cfg._replace(asm=False))
        assert rel_err(a, b.float()) < 2e-3


@asm_only
def test_gemv_asm_equals_plain():
    """The inline-PTX field extraction gives the same bits as Triton's & and | (same math, same order)."""
    w = random_packed(3584, 4608, 4, 128, seed=7)
    x = _x(1, 3584, torch.bfloat16, seed=7)
    for cfg in GEMV_CANDIDATES[:3]:
        torch.testing.assert_close(packed_matmul_with_config(x, w, None, cfg),
                                   packed_matmul_with_config(x, w, None, cfg._replace(asm=False)), rtol=0, atol=0)


def test_m1_routing():
    """M == 1 4-bit takes the batch-1 kernel unless M1_TABLE names a PackedConfig (the old decode kernel stays
    selectable); 8-bit and groups that are not whole packed rows keep the decode kernel."""
    n, k = 40, 256
    assert isinstance(triton_packed.get_config(1, n, k, 4, 32), PackedGemvConfig)
    assert isinstance(triton_packed.get_config(1, n, k, 8, 32), PackedConfig)
    assert isinstance(triton_packed.get_config(1, n, k, 4, 4), PackedConfig)
    w = random_packed(k, n, 4, 32, seed=1)
    x = _x(1, k, DTYPES[0], seed=1)
    saved = dict(triton_packed.M1_TABLE)
    try:
        triton_packed.M1_TABLE[(n, k, 4)] = PackedConfig(1, 32, 64, 1, 1, prefetch=True)
        triton_packed._PLANS.clear()
        old = packed_matmul(x, w)
        assert {p.kind for p in triton_packed._PLANS.values()} == {"decode"}
        del triton_packed.M1_TABLE[(n, k, 4)]
        triton_packed._PLANS.clear()
        new = packed_matmul(x, w)
        assert {p.kind for p in triton_packed._PLANS.values()} == {"gemv"}
    finally:
        triton_packed.M1_TABLE.clear()
        triton_packed.M1_TABLE.update(saved)
        triton_packed._PLANS.clear()
    _check(x, w, y=old)
    _check(x, w, y=new)


def test_gemv_rejects_bad_configs():
    w = random_packed(256, 32, 8, 32, seed=0)
    with pytest.raises(ValueError, match="4-bit weights at M == 1"):
        packed_matmul_with_config(_x(1, 256, DTYPES[0], seed=0), w, None, PackedGemvConfig())
    with pytest.raises(ValueError, match="nsub must be 1 or 2"):
        triton_packed_gemv.make_plan(32, 256, 32, False, 4, PackedGemvConfig(nsub=3))
    with pytest.raises(ValueError, match="half must be 0, 1"):
        triton_packed_gemv.make_plan(32, 256, 32, False, 4, PackedGemvConfig(half=3))


@big_only
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs")
def test_gemv_cuda_graph_replay():
    """The 7B shapes' M == 1 path (split-K counters reset by the kernel) captured and replayed."""
    ws = [random_packed(k, n, 4, 128, seed=n) for n, k in ((4608, 3584), (37888, 3584), (3584, 18944))]
    xs = [_x(1, w.in_features, torch.bfloat16, seed=i) for i, w in enumerate(ws)]
    eager = [packed_matmul(x, w) for x, w in zip(xs, ws)]
    for x, w, e in zip(xs, ws, eager):
        _check(x, w, y=e)
    _assert_graph_replays_negated(xs, ws, eager)


# --- triton_packed_wide: the fused tensor-core matmul for 17..256 rows (selected per shape in _TABLE) ---

from pagedllm.kernels.quant import triton_packed_wide as wide  # noqa: E402

# Qwen2.5-7B qkv, o, gate_up, down, and a small odd shape (N not a multiple of any tile, K a partial split)
WIDE_SHAPES = [(4608, 3584), (3584, 3584), (37888, 3584), (3584, 18944), (200, 640)]
WIDE_MS = [3, 17, 33, 100] if INTERPRET else [2, 8, 16, 17, 32, 64, 100, 128, 256]


@pytest.mark.parametrize("m", WIDE_MS)
@pytest.mark.parametrize("group", [128, None])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_wide_matches_reference(m, group, bias, dtype):
    """Every wide candidate config of M's row bucket against the float32 reference (per-channel: group = K), on a
    small odd shape (N not a multiple of any tile, K a partial split)."""
    n, k = WIDE_SHAPES[-1]
    w = random_packed(k, n, 4, group or k, seed=m + n, scale_dtype=dtype)
    x = _x(m, k, dtype, seed=m)
    b = _x(1, n, dtype, seed=n)[0] if bias else None
    for cfg in wide.CANDIDATES[wide.row_bucket(m)]:
        _check(x, w, b, packed_matmul_with_config(x, w, b, cfg))


@big_only
@pytest.mark.parametrize("n,k", WIDE_SHAPES[:4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_wide_routed_configs_match_reference(n, k, dtype):
    """What the launcher picks for 17..256 rows on the 7B shapes (the wide kernel where _TABLE routes it), with a
    bias, at each row bucket's edges."""
    w = random_packed(k, n, 4, 128, seed=n, scale_dtype=dtype)
    b = _x(1, n, dtype, seed=n)[0]
    for m in (17, 32, 33, 64, 65, 128, 129):
        x = _x(m, k, dtype, seed=m)
        _check(x, w, b, triton_packed.packed_matmul(x, w, b))


@pytest.mark.parametrize("n,k", [(256, 512), pytest.param(3584, 3584, marks=big_only)])
def test_fp32_x_at_every_row_bucket(n, k):
    """An fp32 model on the GPU (an AWQ checkpoint with dtype=float32): what the launcher picks at 1..256 rows,
    against the float32 reference. Before session 32, 2..16 rows met WIDE_DECODE's pairs config (bf16x2 / f16x2
    unpack) and failed to compile; (3584, 3584) is a 7B shape whose table has pairs configs at 17..64 rows."""
    w = random_packed(k, n, 4, 128, seed=n + k, scale_dtype=torch.float32)
    for m in (1, 2, 8, 16, 17, 32, 64) if INTERPRET else (1, 2, 5, 8, 16, 17, 32, 64, 100, 256):
        x = _x(m, k, torch.float32, seed=m)
        y = packed_matmul(x, w)
        ref = reference_matmul(x, w)
        assert y.dtype == torch.float32 and rel_err(y, ref) < 2e-3, (m, rel_err(y, ref))


def test_wide_routing():
    """The 7B table: the wide kernel where the probe timed it faster than dequantize + cuBLAS (sessions 12 and 20,
    H200; 28 and 29, H100); 17..64 rows of every shape on the kperm + w_as_a configs with the values unpacked in
    pairs but gate_up at 33..64 (compact), and with partial row tiles masked, gate_up 65..256 and down 65..128 on
    the 128-row pairs tiles."""
    def pick(m, n, k):
        return triton_packed.get_config(m, n, k, 4, 128)

    def picks_wide(m, n, k):
        return isinstance(pick(m, n, k), wide.PackedWideConfig)
    assert picks_wide(17, 37888, 3584) and picks_wide(64, 37888, 3584) and picks_wide(128, 37888, 3584)
    assert picks_wide(129, 37888, 3584) and picks_wide(256, 37888, 3584)
    assert not picks_wide(257, 37888, 3584)
    assert pick(16, 37888, 3584) == triton_packed._WIDE_DECODE_CFG     # 2..16 rows: WIDE_DECODE's config
    assert picks_wide(24, 3584, 18944) and picks_wide(65, 3584, 18944) and picks_wide(128, 3584, 18944)
    assert not picks_wide(129, 3584, 18944)
    assert picks_wide(64, 4608, 3584) and not picks_wide(65, 4608, 3584)
    assert picks_wide(64, 3584, 3584) and not any(picks_wide(m, 3584, 3584) for m in (65, 128, 256))
    for n, k in ((4608, 3584), (3584, 3584), (37888, 3584), (3584, 18944)):
        assert pick(17, n, k).kperm and pick(32, n, k).w_as_a and pick(32, n, k).pairs, (n, k)
        # an fp32 x (an fp32 model on the GPU) never takes a pairs config: they unpack into bf16x2 / f16x2
        for m in (2, 16, 32, 64, 128, 256):
            cfg = triton_packed.get_config(m, n, k, 4, 128, half_x=False)
            assert not getattr(cfg, "pairs", False), (m, n, k, cfg)
    assert all(pick(64, n, k).pairs for n, k in ((4608, 3584), (3584, 3584), (3584, 18944)))
    assert not pick(64, 37888, 3584).kperm
    assert all(pick(m, n, k).pairs and pick(m, n, k).block_m == 128
               for m, n, k in ((100, 37888, 3584), (200, 37888, 3584), (100, 3584, 18944)))
    assert wide.MASK_PARTIAL_ROWS and not triton_packed.DECODE_MASK_PARTIAL_ROWS
    assert not picks_wide(64, 200, 640)          # shapes not in the table keep the scratch path


def test_wide_decode_sends_2_to_16_rows_of_4bit_weights_to_the_16_row_pairs_tiles(monkeypatch):
    """WIDE_DECODE: 2..16 rows of 4-bit weights whose K tiles lie in one group (the 7B table's shapes and others)
    take the wide kernel's 16-row pairs config instead of the decode kernel; batch 1, 17+ rows, 8-bit, g32 and K not
    a multiple of the K tile keep their routes; off, the decode kernel. On a GPU the routed calls match the
    reference at 2, 9 and 16 rows."""
    def pick(m, n, k, bits=4, group=128):
        return triton_packed.get_config(m, n, k, bits, group)

    assert triton_packed.WIDE_DECODE             # on by default since session 31 (docs/perf.md)
    monkeypatch.setattr(triton_packed, "WIDE_DECODE", False)
    assert not isinstance(pick(8, 37888, 3584), wide.PackedWideConfig)
    routes = {(m, n, k, b, g): pick(m, n, k, b, g) for m in (1, 17, 64) for n, k in ((37888, 3584), (320, 512))
              for b, g in ((4, 128), (8, 128))}
    monkeypatch.setattr(triton_packed, "WIDE_DECODE", True)
    for n, k in ((37888, 3584), (3584, 18944), (320, 512)):
        for m in (2, 8, 16):
            cfg = pick(m, n, k)
            assert isinstance(cfg, wide.PackedWideConfig) and cfg.block_m == 16 and cfg.pairs, (m, n, k)
        assert isinstance(pick(16, n, k, group=k), wide.PackedWideConfig)          # per-channel
    for m in (2, 16):
        assert not isinstance(pick(m, 320, 512, bits=8), wide.PackedWideConfig)
        assert not isinstance(pick(m, 320, 512, group=32), wide.PackedWideConfig)
        assert not isinstance(pick(m, 320, 576), wide.PackedWideConfig)
    assert all(pick(*key) == cfg for key, cfg in routes.items())
    if not INTERPRET:     # the pairs asm runs on a GPU only
        w = random_packed(512, 320, 4, 128, seed=5, scale_dtype=DTYPES[0])
        _check_with_fresh_plans([(_x(m, 512, DTYPES[0], seed=m), w) for m in (2, 9, 16)])


def _check_with_fresh_plans(cases):
    """``_check`` each ``(x, w)`` through ``packed_matmul``'s routing as a test switched it: the launch plans that
    calls under other settings cached (per shape class, not per switch) are dropped before and after."""
    triton_packed._PLANS.clear()
    try:
        for x, w in cases:
            _check(x, w)
    finally:
        triton_packed._PLANS.clear()


def test_untabled_shapes_take_the_wide_pairs_configs_at_17_to_64_rows(monkeypatch):
    """UNTABLED_WIDE: a shape not in the 7B table (here 320 x 512, and a Llama-8B o_proj) takes the pairs configs at
    17..64 rows where its 4-bit K tiles lie in one group (g128, per-channel), and the scratch path otherwise (65+
    rows, 8-bit, g32, K not a multiple of 128, a tabled shape's own routes); off, the scratch path throughout. On a
    GPU the routed call matches the reference."""
    def pick(m, n, k, bits=4, group=128):
        return triton_packed.get_config(m, n, k, bits, group)

    def wide_at(m, n, k, bits=4, group=128):
        return isinstance(pick(m, n, k, bits, group), wide.PackedWideConfig)
    assert not triton_packed.UNTABLED_WIDE and not wide_at(32, 320, 512)
    monkeypatch.setattr(triton_packed, "UNTABLED_WIDE", True)
    for n, k in ((320, 512), (4096, 4096)):
        assert pick(17, n, k).pairs and pick(17, n, k).block_m == 32 and pick(64, n, k).block_m == 64
        assert wide_at(40, n, k, group=k) and not wide_at(65, n, k)
        assert pick(16, n, k) == triton_packed._WIDE_DECODE_CFG           # 2..16 rows: WIDE_DECODE's, not these
        assert not wide_at(32, n, k, bits=8) and not wide_at(32, n, k, group=32)
    assert not wide_at(32, 320, 576)                                  # K not a multiple of 128
    assert pick(64, 37888, 3584) == triton_packed._TABLE[(37888, 3584, 4)][64]
    monkeypatch.setitem(triton_packed._TABLE, (320, 512, 4), {16: triton_packed._DEFAULTS[(16, 4)]})
    assert not wide_at(32, 320, 512)             # a tabled shape without the bucket: the defaults, as before
    monkeypatch.delitem(triton_packed._TABLE, (320, 512, 4))
    if not INTERPRET:     # the pairs asm runs on a GPU only
        _check_with_fresh_plans([(_x(m, 512, DTYPES[0], seed=m), random_packed(512, 320, 4, 128, seed=m,
                                                                                scale_dtype=DTYPES[0]))
                                 for m in (24, 64)])


@pytest.mark.parametrize("m", [17, 100] if INTERPRET else [17, 64, 256])
def test_wide_gather_groups_and_8bit(m):
    """Groups smaller than the K tile (scales gathered per row) and 8-bit words."""
    dtype = DTYPES[-1]
    for bits, group in [(4, 32), (8, 64), (8, 128)]:
        w = random_packed(640, 200, bits, group, seed=bits + group, scale_dtype=dtype)
        x = _x(m, 640, dtype, seed=m)
        for cfg in wide.CANDIDATES[wide.row_bucket(m)]:
            _check(x, w, None, packed_matmul_with_config(x, w, None, cfg))


# The opt-in variants (prefetch, kperm, xgather) in combinations the candidate lists leave out: each with a partial
# last split or ragged N, at M within and past one row tile.
WIDE_VARIANTS = [
    wide.PackedWideConfig(32, 64, 128, 4, 2, kperm=True),                           # W the shared-memory B operand
    wide.PackedWideConfig(32, 64, 128, 4, 2, kperm=True, w_as_a=True, split_k=3),   # 5 K tiles: splits 2, 2, 1
    wide.PackedWideConfig(64, 64, 128, 4, 1, kperm=True, w_as_a=True, xgather=True, prefetch=True),
    wide.PackedWideConfig(64, 128, 64, 4, 1, compact=True, prefetch=True, split_k=3),
    wide.PackedWideConfig(32, 128, 64, 4, 1, prefetch=True, split_k=3),              # repeated-row words
    wide.PackedWideConfig(32, 64, 64, 4, 2, w_as_a=True, prefetch=True),             # [BLOCK_N, BLOCK_K] words
    wide.PackedWideConfig(32, 64, 128, 4, 2, kperm=True, w_as_a=True, pairs=True, split_k=3),
    wide.PackedWideConfig(64, 64, 128, 4, 1, kperm=True, pairs=True, xgather=True, prefetch=True),
]


@pytest.mark.parametrize("m", [17, 33, 100, 130])
def test_wide_variants_match_reference(m):
    """N = 200 (no tile divides it), K = 640; g128 with a bias, per-channel, g32 (scales gathered per K row),
    8-bit g64, and GPTQ's act-order permutation (kperm's column permutation composed with it)."""
    dtype = DTYPES[-1]
    n, k = 200, 640
    x = _x(m, k, dtype, seed=m)
    for bits, group, bias, perm in [(4, 128, True, False), (4, k, False, False), (4, 32, True, False),
                                    (8, 64, False, False), (4, 128, False, True)]:
        w = random_packed(k, n, bits, group, seed=m + bits + group, perm=perm, scale_dtype=dtype)
        b = _x(1, n, dtype, seed=n)[0] if bias else None
        for cfg in WIDE_VARIANTS:
            _check(x, w, b, packed_matmul_with_config(x, w, b, cfg))


@pytest.mark.parametrize("m", [17, 100] if INTERPRET else [17, 64, 200, 256])
@pytest.mark.parametrize("group", [128, None])
@pytest.mark.parametrize("dtype", DTYPES)
def test_wide_pairs_equal_the_fp32_unpack_bit_for_bit(m, group, dtype):
    """``pairs`` unpacks two values at a time straight into x's dtype (PRMT / LOP3 / SUB2 / FMA2 on the GPU); each
    weight is ``q s + o`` rounded once, as the fp32 unpack's fma then conversion, and the dots are the same, so
    the products are identical to the bit, not only close (a field or column pair taken from the wrong word half
    is off by whole weights)."""
    n, k = 200, 640
    w = random_packed(k, n, 4, group or k, seed=m + 3, scale_dtype=dtype)
    x = _x(m, k, dtype, seed=m)
    for base in [wide.PackedWideConfig(32, 64, 128, 4, 2, kperm=True, w_as_a=True),
                 wide.PackedWideConfig(64, 64, 128, 4, 2, kperm=True)]:
        paired = base._replace(pairs=True)
        assert wide.make_plan(m, n, k, 4, group or k, False, 8, paired).constexprs["PAIRS"]
        torch.testing.assert_close(packed_matmul_with_config(x, w, None, paired),
                                   packed_matmul_with_config(x, w, None, base), rtol=0, atol=0)


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("m", [17, 100])
def test_wide_rows_past_m_masked_match_reference(m, masked, monkeypatch):
    """``MASK_PARTIAL_ROWS`` (on since session 29): x's rows past M in a partial row tile are masked, or with it off
    re-read row M - 1; the plan masks only partial tiles, and every kind of x load (plain, compact, W as A, kperm
    with and without pairs, gathered x) gives the reference's result, with a ragged K split (K 640, split-K 3)."""
    monkeypatch.setattr(wide, "MASK_PARTIAL_ROWS", masked)
    wide.make_plan.cache_clear()
    try:
        dtype = DTYPES[-1]
        n, k = 200, 640
        w = random_packed(k, n, 4, 128, seed=m, scale_dtype=dtype)
        x = _x(m, k, dtype, seed=m)
        b = _x(1, n, dtype, seed=n)[0]
        for cfg in WIDE_VARIANTS + [wide.PackedWideConfig(32, 64, 128, 4, 2, kperm=True, w_as_a=True, pairs=True),
                                    wide.PackedWideConfig(64, 128, 64, 4, 3, compact=True)]:
            assert wide.make_plan(m, n, k, 4, 128, True, 8, cfg).constexprs["X_MASKED"] == (
                masked and m % cfg.block_m != 0)
            _check(x, w, b, packed_matmul_with_config(x, w, b, cfg))
        whole = wide.PackedWideConfig(32, 64, 128, 4, 2, kperm=True, w_as_a=True)
        assert not wide.make_plan(64, n, k, 4, 128, True, 8, whole).constexprs["X_MASKED"]
    finally:
        wide.make_plan.cache_clear()


@pytest.mark.parametrize("m", [2, 7])
def test_decode_rows_past_m_masked_match_reference(m, monkeypatch):
    """The 2..16-row decode kernel's own switch (``DECODE_MASK_PARTIAL_ROWS``, off by default): its 16-row tile's
    rows past M masked (planned only below 16 rows), 4-bit per tile and gathered groups, 8-bit, with a bias, against
    the reference."""
    monkeypatch.setattr(triton_packed, "DECODE_MASK_PARTIAL_ROWS", True)
    dtype = DTYPES[-1]
    n, k = 200, 640
    x = _x(m, k, dtype, seed=m)
    b = _x(1, n, dtype, seed=n)[0]
    cfg = PackedConfig(16, 64, 128, 4, 3)
    for bits, group in [(4, 128), (4, 32), (8, 64)]:
        w = random_packed(k, n, bits, group, seed=m + bits + group, scale_dtype=dtype)
        plan = triton_packed._make_plan(m, n, k, bits, group, True, x.device, cfg)
        assert plan.kind == "decode" and plan.constexprs["X_MASKED"]
        _check(x, w, b, packed_matmul_with_config(x, w, b, cfg))
    assert not triton_packed._make_plan(16, n, k, 4, 128, True, x.device, cfg).constexprs["X_MASKED"]


def test_wide_kperm_rejects_what_it_cannot_do():
    w = random_packed(640, 64, 4, 128, seed=1)
    x = _x(20, 640, torch.float16, seed=0)
    for cfg in [wide.PackedWideConfig(32, 64, 256, 4, 2, kperm=True),      # K 640 not a multiple of block_k
                wide.PackedWideConfig(32, 64, 64, 4, 2, kperm=True),       # 8 K a dot
                wide.PackedWideConfig(32, 64, 128, 4, 2, kperm=True, w_nk=True),
                wide.PackedWideConfig(32, 64, 128, 4, 2, xgather=True),
                wide.PackedWideConfig(32, 64, 128, 4, 2, pairs=True)]:
        with pytest.raises(ValueError, match="kperm"):
            packed_matmul_with_config(x, w, None, cfg)


def test_wide_split_k_is_deterministic_and_graph_replays():
    w = random_packed(1024, 584, 4, 128, seed=5, scale_dtype=DTYPES[0])
    cfg = wide.PackedWideConfig(64, 128, 64, 4, 3, split_k=4)
    x = _x(40, 1024, DTYPES[0], seed=2)
    first = packed_matmul_with_config(x, w, None, cfg)
    for _ in range(3):
        torch.testing.assert_close(packed_matmul_with_config(x, w, None, cfg), first, rtol=0, atol=0)
    if DEVICE == "cuda":
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = packed_matmul_with_config(x, w, None, cfg)
        for _ in range(2):
            g.replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(out, first, rtol=0, atol=0)


def test_wide_rejects_batch_1():
    """The wide kernel takes 2+ rows (2..16 with WIDE_DECODE); one row is the GEMV's."""
    w = random_packed(256, 64, 4, 128, seed=1)
    with pytest.raises(ValueError, match="2 or more rows"):
        packed_matmul_with_config(_x(1, 256, torch.float16, seed=0), w, None, wide.PackedWideConfig())
