"""Skinny GEMM (decode-time linear layers): ``y = x @ W^T (+ bias)`` for ``x [M, K]`` with ``M <= 16`` (bf16/fp16),
and up to 128 rows for FP8 weights with per-token fp8 activations (W8A8, the FP8 linear method's decode steps).

At decode batch sizes 1..16 every linear layer is bound by the weight read (``N * K * 2`` bytes) and cuBLAS leaves
bandwidth on the table for these shapes (split-K plus a separate reduce kernel, tiles sized for big M). Here each
program owns ``BLOCK_N`` rows of ``W`` (and, with ``SPLIT_K > 1``, a slice of K) and streams ``[BLOCK_N, BLOCK_K]``
tiles of it; ``x`` is tiny and stays in L1/L2. Two inner loops:

* ``USE_DOT`` (any M): the tile goes through shared memory (software-pipelined, ``num_stages`` deep, so enough bytes
  are in flight per SM to cover HBM latency) into ``W_tile @ x_tile^T`` on the tensor cores, ``x`` zero-padded to
  a row tile of 16 (32, 64, 128 for W8A8), fp32 accumulation (fp8 dots promoted to fp32 once per K tile);
* FMA (``M == 1`` only): fp32 FMAs into a ``[BLOCK_N, BLOCK_K]`` register tile, reduced over K once at the end.

Split-K (for shapes with too few row tiles to fill the GPU) stays one kernel: every program writes its fp32 partial
tile to a persistent workspace and bumps a per-tile counter; the last to arrive sums the partials, adds the bias,
writes the output and resets the counter. No memset, no reduce kernel; deterministic (the sum is always taken in
split order by one program).

CUDA-graph safe: no host syncs, the only allocation per call is the output (the split-K workspace is allocated once,
outside capture; a capture that would need a bigger one falls back to ``SPLIT_K = 1``), and the launch config is a
pure function of ``(M, N, K)`` (a table measured on an H200 plus a heuristic), no run-time autotuning.

Measured on an H200 (bf16, per call inside a CUDA graph of 28 calls, µs, cuBLAS -> this kernel): at M = 1 faster on
every Qwen2.5-1.5B/7B shape (qkv/o/gate_up/down/LM head: 1.5B 5.9->4.6, 6.5->3.9, 17.2->15.4, 11.8->9.9,
113->106; 7B 11.3->10.1, 11.3->8.7, 71.5->63.2, 38.1->34.3, 258->241); at M = 16 faster or equal on all (7B o
11.8->9.1, down 40.7->35.4, gate_up 72.8->65.1); at M = 4 the dot path is slower than cuBLAS on most shapes (see
benchmarks/kernels/bench_gemv.py), so route 2 <= M < 16 only after measuring.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from pagedllm import envs
from pagedllm.kernels.pdl import pdl_launch_args, pdl_wait

MAX_M = 16
# FP8 weights with x quantized per token (W8A8): fp8 x fp8 dots need no per-weight conversion and beat
# per-token quantization + torch._scaled_mm up to 64 rows on every 7B shape (H200, session 11, µs with the
# quantization at M = 64: qkv 14.8 vs 18.8, o 12.4 vs 16.3, gate_up 45.5 vs 58.7, down 31.0 vs 54.7) and at 65..128
# rows on the shapes _W8A8_TABLE lists for that bucket (7B gate_up was even there). skinny_linear routes fp8 x up to
# W8A8_MAX_M rows, row tiles of 16, 32, 64 or 128 (the dot path's largest tile: skinny_linear_with_config takes
# up to W8A8_MAX_M rows of any x).
W8A8_MAX_M = 128
_W8A8_ANY_SHAPE_MAX_M = 64
_INTERPRET = envs.TRITON_INTERPRET


@triton.jit
def _skinny_gemm_kernel(X, W, B, Y, WS, Locks, WScale, XScale, M, N, K, K_PER_SPLIT, stride_xm, stride_wn,
                        stride_ym, HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, EVEN_K: tl.constexpr,
                        SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        PDL: tl.constexpr, W_SCALE: tl.constexpr, X_FP8: tl.constexpr, X_MASKED: tl.constexpr,
                        PREFETCH: tl.constexpr = False, LINE: tl.constexpr = 64, GATED: tl.constexpr = False):
    # GATED (skinny_linear_silu): W is a fused [gate; up] projection of 2N rows and the output is
    # silu(x W_gate^T) * (x W_up^T), N wide: each program's tile interleaves gate row j and up row j (j in its
    # BLOCK_N / 2 outputs), so the epilogue pairs them in registers. The SiLU-and-mul kernel (and its launch, its
    # [M, 2N] round trip) after the gate_up projection goes; no program computes more than before.
    # PREFETCH (with PDL only): before waiting for its predecessor, each program asks L2 for the rest of its slice
    # of W (_l2_prefetch_rows), so the weight read overlaps a predecessor that leaves HBM idle (the decode
    # attention before o_proj) and the K loop then reads from L2. LINE: elements of W per 128-byte line.
    # W_SCALE: 0 = W is in x's dtype; 1 = W is fp8 with one fp32 scale; 2 = fp8 with one scale per output row
    # (weight-only FP8: half the bytes of bf16 streamed, converted in registers, scaled once in the epilogue).
    # X_FP8 (dot path, fp8 W): x is fp8 too, with one fp32 scale per row (XScale): fp8 x fp8 tensor-core dots,
    # no per-weight conversion, both scales applied in the epilogue (W8A8, as torch._scaled_mm computes it).
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    if GATED:
        # Tile row 2i: gate row j, 2i + 1: up row j (= N + j), j = pid_n * BLOCK_N / 2 + i.
        offs_n = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N) // 2
        rows = tl.where(offs_n < N, offs_n, 0) + (tl.arange(0, BLOCK_N) % 2) * N
    else:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        # Clamp out-of-range rows to row 0 instead of masking: W loads stay unmasked (vectorised); stores masked.
        rows = tl.where(offs_n < N, offs_n, 0)
    offs_k = tl.arange(0, BLOCK_K)
    if SPLIT_K == 1:
        k_start = 0
        k_end = K
    else:
        k_start = pid_k * K_PER_SPLIT
        k_end = tl.minimum(K, k_start + K_PER_SPLIT)
    w_ptrs = W + rows.to(tl.int64)[:, None] * stride_wn + (k_start + offs_k)[None, :]
    if USE_DOT:
        if PDL and PREFETCH:
            _l2_prefetch_rows(W, rows, stride_wn, k_start, k_end, BLOCK_N, LINE)
        pdl_wait(PDL)
        offs_m = tl.arange(0, BLOCK_M)
        if X_MASKED:
            # M < BLOCK_M: rows m >= M are not read (masked loads, zero-filled). Re-reading row M - 1 for them
            # instead was up to 10% slower at M = 2..8 (H200, session 11: 7B qkv 15.2 vs 13.5 µs at M = 2).
            xrows = offs_m
        else:
            # M == BLOCK_M: no mask (the masked loads cost up to 8% there: 7B down 34.8 vs 37.6 µs at M = 16).
            xrows = tl.minimum(offs_m, M - 1)
        mmask = offs_m[:, None] < M
        x_ptrs = X + xrows[:, None] * stride_xm + (k_start + offs_k)[None, :]
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            if EVEN_K:
                w = tl.load(w_ptrs)
                if X_MASKED:
                    x = tl.load(x_ptrs, mask=mmask, other=0.0)
                else:
                    x = tl.load(x_ptrs)
            else:
                kmask = offs_k[None, :] < k_end - k0
                w = tl.load(w_ptrs, mask=kmask, other=0.0)
                if X_MASKED:
                    x = tl.load(x_ptrs, mask=kmask & mmask, other=0.0)
                else:
                    x = tl.load(x_ptrs, mask=kmask, other=0.0)
            if X_FP8:
                # sm_90's fp8 MMA accumulates with fewer bits than fp32 (Triton's default there lets it run the
                # whole K): promote the partial sum into the fp32 accumulator once per tile, as cuBLASLt does
                # without fast accumulation. Without it the 7B down projection (K = 18944) was several 1e-3 off.
                acc = tl.dot(w, tl.trans(x), acc, max_num_imprecise_acc=BLOCK_K)
            else:
                if W_SCALE != 0:
                    w = w.to(x.dtype)
                acc = tl.dot(w, tl.trans(x), acc)
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        tile_offs = tl.arange(0, BLOCK_N)[:, None] * BLOCK_M + offs_m[None, :]
        TILE: tl.constexpr = BLOCK_N * BLOCK_M
    else:
        # M == 1: elementwise FMAs into a [BLOCK_N, BLOCK_K] fp32 tile, one reduction over K at the end.
        x_ptrs = X + k_start + offs_k
        acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        k_first = k_start
        if PDL:
            # Launched early (pdl.py): W is constant, so the first tile is read while the previous kernel, which
            # writes x, is still running. Masked: a split may hold less than one tile (or none).
            kmask = offs_k < k_end - k_start
            w = tl.load(w_ptrs, mask=kmask[None, :], other=0.0)
            if PREFETCH:
                _l2_prefetch_rows(W, rows, stride_wn, k_start + BLOCK_K, k_end, BLOCK_N, LINE)
            pdl_wait(PDL)
            x = tl.load(x_ptrs, mask=kmask, other=0.0)
            acc2 += w.to(tl.float32) * x.to(tl.float32)[None, :]
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
            k_first = k_start + BLOCK_K
        for k0 in range(k_first, k_end, BLOCK_K):
            if EVEN_K:
                w = tl.load(w_ptrs)
                x = tl.load(x_ptrs)
            else:
                kmask = offs_k < k_end - k0
                w = tl.load(w_ptrs, mask=kmask[None, :], other=0.0)
                x = tl.load(x_ptrs, mask=kmask, other=0.0)
            acc2 += w.to(tl.float32) * x.to(tl.float32)[None, :]
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        acc = tl.sum(acc2, axis=1)
        tile_offs = tl.arange(0, BLOCK_N)
        TILE: tl.constexpr = BLOCK_N

    if SPLIT_K > 1:
        # Split K over SPLIT_K programs per row tile: each writes its fp32 partial tile to the workspace; the last
        # to arrive (a per-tile counter, reset by that program, so it is back to 0 for the next launch or graph
        # replay) sums the partials and writes the output. One kernel, no memset, no reduce kernel.
        tl.store(WS + (pid_k * tl.num_programs(0) + pid_n) * TILE + tile_offs, acc)
        tl.debug_barrier()          # all threads' partial stores precede the (single-thread, release) atomic
        count = tl.atomic_add(Locks + pid_n, 1, sem="acq_rel", scope="gpu")
        if count == SPLIT_K - 1:
            acc = tl.load(WS + pid_n * TILE + tile_offs, cache_modifier=".cg")
            for s in tl.static_range(1, SPLIT_K):
                acc += tl.load(WS + (s * tl.num_programs(0) + pid_n) * TILE + tile_offs, cache_modifier=".cg")
            _epilogue(acc, B, Y, WScale, XScale, rows, offs_n, M, N, stride_ym, HAS_BIAS, USE_DOT, BLOCK_M, W_SCALE,
                      X_FP8, GATED, BLOCK_N)
            tl.atomic_xchg(Locks + pid_n, 0, sem="relaxed", scope="gpu")
    else:
        _epilogue(acc, B, Y, WScale, XScale, rows, offs_n, M, N, stride_ym, HAS_BIAS, USE_DOT, BLOCK_M, W_SCALE,
                  X_FP8, GATED, BLOCK_N)


@triton.jit
def _l2_prefetch_rows(W, rows, stride_wn, k_start, k_end, BLOCK_N: tl.constexpr, LINE: tl.constexpr):
    """``prefetch.global.L2`` of every 128-byte line of W's ``rows`` over columns ``[k_start, k_end)``: one
    instruction per line, nothing returned. 1,024 lines at a time (8 addresses a thread at 4 warps): a [64, 64]
    tile of addresses took the dot path from 96 to 160 registers (sm_90 SASS, compiled offline). Columns past
    ``k_end`` are clamped to ``k_start`` (a repeated prefetch costs only its issue slot)."""
    LINES: tl.constexpr = 1024 // BLOCK_N
    offs = tl.arange(0, LINES) * LINE
    base = W + rows.to(tl.int64)[:, None] * stride_wn
    for k0 in range(k_start, k_end, LINES * LINE):
        cols = k0 + offs
        prefetch_l2(base + tl.where(cols < k_end, cols, k_start)[None, :])


@triton.jit
def prefetch_l2(ptrs):
    """``prefetch.global.L2`` of each address (one 128-byte line each; SASS ``CCTL.E.PF2``): nothing is returned
    and no register holds the data. Inline PTX: not under the Triton interpreter (callers switch it off there)."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def _silu_mul_pairs(acc, Y, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, USE_DOT: tl.constexpr):
    """GATED: ``acc`` rows 2i / 2i + 1 hold gate / up of output i (trailing dims: the rows of x). Each is rounded
    to the output dtype first, as the unfused gate_up projection stores them, then silu(gate) * up in fp32 as
    triton_ops.silu_and_mul computes it: the same bits as the two kernels."""
    y = acc.to(Y.dtype.element_ty).to(tl.float32)
    if USE_DOT:
        gate, up = tl.split(tl.permute(tl.reshape(y, (BLOCK_N // 2, 2, BLOCK_M)), (0, 2, 1)))
    else:
        gate, up = tl.split(tl.reshape(y, (BLOCK_N // 2, 2)))
    return gate / (1.0 + tl.exp(-gate)) * up


@triton.jit
def _epilogue(acc, B, Y, WScale, XScale, rows, offs_n, M, N, stride_ym, HAS_BIAS: tl.constexpr,
              USE_DOT: tl.constexpr, BLOCK_M: tl.constexpr, W_SCALE: tl.constexpr, X_FP8: tl.constexpr,
              GATED: tl.constexpr = False, BLOCK_N: tl.constexpr = 1):
    if X_FP8:
        offs_xm = tl.arange(0, BLOCK_M)
        acc = acc * tl.load(XScale + offs_xm, mask=offs_xm < M, other=0.0)[None, :]
    if W_SCALE == 1:
        acc = acc * tl.load(WScale)
    elif W_SCALE == 2:
        if USE_DOT:
            acc = acc * tl.load(WScale + rows)[:, None]
        else:
            acc = acc * tl.load(WScale + rows)
    if USE_DOT:
        if HAS_BIAS:
            acc += tl.load(B + rows).to(tl.float32)[:, None]
        offs_m = tl.arange(0, BLOCK_M)
        if GATED:
            acc = _silu_mul_pairs(acc, Y, BLOCK_N, BLOCK_M, USE_DOT)
            offs_n = tl.program_id(0) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        y_ptrs = Y + offs_m[None, :] * stride_ym + offs_n[:, None]
        tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=(offs_n[:, None] < N) & (offs_m[None, :] < M))
    else:
        if HAS_BIAS:
            acc += tl.load(B + rows).to(tl.float32)
        if GATED:
            acc = _silu_mul_pairs(acc, Y, BLOCK_N, BLOCK_M, USE_DOT)
            offs_n = tl.program_id(0) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        tl.store(Y + offs_n, acc.to(Y.dtype.element_ty), mask=offs_n < N)


class GemvConfig(NamedTuple):
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    use_dot: bool = True     # False: the FMA path (used for M == 1 only; M > 1 always uses the dot path)
    split_k: int = 1
    # False: launched without programmatic dependent launch even where it is on. Measured per config (H200, session
    # 10, benchmarks/kernels/skinny_m_probe.py): the dot path waits for its predecessor before its first load, and
    # for some shapes the next launch's early programs then cost more than the overlap gains.
    pdl: bool = True
    # True: with PDL, prefetch the program's slice of W into L2 before waiting for the predecessor (the kernel's
    # PREFETCH). Off in every table entry: measured slower end to end on an H200 (docs/perf.md, session 17: o_proj
    # 7B bs1 -1.2%, every projection -21%; the prefetch traffic slows the decode attention it overlaps).
    prefetch: bool = False


# Measured per-shape choices, keyed by (N, K) then by M bucket (1: M == 1, 4: 2..4, 8: 5..8, 16: 9..16; a shape
# without a 4 or 8 entry uses its 16 one), from the H200 sweeps (benchmarks/kernels/bench_gemv.py --sweep at M = 1
# and 16; skinny_m_probe.py at M = 2, 4, 8 for the 7B shapes; each call timed in a CUDA graph of 28 calls on
# distinct weights). Shapes not listed fall back to _heuristic_config.
_G = GemvConfig
_TABLE: dict[tuple[int, int], dict[int, GemvConfig]] = {
    # Qwen2.5-1.5B: qkv (bias), o, gate_up, down, LM head
    (2048, 1536): {1: _G(16, 512, 8, 1, False), 16: _G(16, 512, 4, 3)},
    (1536, 1536): {1: _G(8, 1024, 8, 1, False), 16: _G(16, 512, 4, 3)},
    (17920, 1536): {1: _G(8, 512, 4, 1, False), 16: _G(64, 128, 4, 3)},
    (1536, 8960): {1: _G(8, 1024, 8, 1, False), 16: _G(64, 256, 4, 5, True, 2)},
    (151936, 1536): {1: _G(8, 512, 4, 1, False), 16: _G(64, 128, 4, 3)},
    # Qwen2.5-7B
    (4608, 3584): {1: _G(8, 512, 4, 1, False), 16: _G(64, 256, 4, 5)},
    (3584, 3584): {1: _G(8, 512, 4, 1, False), 4: _G(64, 256, 4, 5), 8: _G(64, 256, 4, 5), 16: _G(32, 256, 4, 5)},
    (37888, 3584): {1: _G(8, 512, 4, 1, False), 4: _G(64, 256, 4, 5), 8: _G(64, 256, 4, 5), 16: _G(64, 128, 4, 3)},
    (3584, 18944): {1: _G(8, 512, 4, 1, False, 2), 4: _G(64, 256, 4, 5, True, 2, False),
                    8: _G(64, 256, 4, 5, True, 2, False), 16: _G(32, 256, 4, 5)},
    (152064, 3584): {1: _G(8, 512, 4, 1, False), 16: _G(64, 128, 4, 3)},
}

# W8A8 (fp8 x with its per-token scales, fp8 W): configs by M bucket (4: 2..4, 8: 5..8, 16: 9..16, 32: 17..32,
# 64: 33..64, 128: 65..128; a shape without a 128 entry goes to torch._scaled_mm there), H200, session 11
# (benchmarks/kernels/skinny_fp8_probe.py; µs per call with the quantization kernel, best / the bf16 table's
# config): 7B gate_up 38.9 / 41.1 at M = 8, down 28.7 / 34.5 at M = 16, 31.0 / 48.2 at M = 64 (split-K 2).
# Shapes not listed: _heuristic_config.
_W8A8_SPLIT2 = _G(64, 256, 4, 5, True, 2)
_W8A8_TABLE: dict[tuple[int, int], dict[int, GemvConfig]] = {
    (4608, 3584): {4: _G(64, 256, 4, 5), 8: _G(64, 256, 4, 5), 16: _G(64, 256, 4, 5), 32: _G(64, 256, 4, 3),
                   64: _G(64, 256, 4, 3), 128: _G(64, 256, 4, 3)},
    (3584, 3584): {4: _G(64, 256, 4, 5), 8: _G(64, 256, 4, 5), 16: _G(64, 256, 4, 5), 32: _W8A8_SPLIT2,
                   64: _W8A8_SPLIT2, 128: _G(64, 256, 4, 4, True, 2)},
    (37888, 3584): {4: _G(64, 128, 4, 3), 8: _G(64, 128, 4, 3), 16: _G(64, 128, 4, 3), 32: _G(64, 128, 4, 3),
                    64: _G(64, 128, 4, 4)},
    (3584, 18944): {4: _W8A8_SPLIT2, 8: _W8A8_SPLIT2, 16: _W8A8_SPLIT2, 32: _W8A8_SPLIT2, 64: _W8A8_SPLIT2,
                    128: _G(64, 256, 4, 4, True, 2)},
}

# Where the kernel beat cuBLAS at 2 <= M <= 16: (N, K, M bucket). Only there does a layer send M > 1 to it (M == 1
# always goes to it). H200, session 10, µs per call, cuBLAS vs this table's config at M = 2 / 8 (16): 7B o 11.3 /
# 10.7 vs 10.5 / 9.2 (11.8 vs 8.4); gate_up 69.1 / 69.5 vs 68.3 / 64.9 (70.7 vs 63.4); down 38.1 / 39.2 vs 35.5 /
# 35.0 (38.3 vs 33.9); LM head 259.0 / 261.3 vs 256.9 / 252.0 (263.3 vs 248.8). 7B qkv (cuBLAS 11.2-11.4 vs
# 11.1-15.3 alone) is here since session 15: after it the fused decode kernel (PAGEDLLM_DECODE_ROPE_FUSED=2) starts
# early, which cuBLAS does not allow; end to end, 7B latency 8x1024x1024 4.571 -> 4.497 s (benchmarks/kernels/
# route_ab.py, two pairs). The 1.5B shapes were never compared above M = 1.
_BEATS_CUBLAS: frozenset[tuple[int, int, int]] = frozenset(
    (n, k, bucket) for n, k in [(4608, 3584), (3584, 3584), (37888, 3584), (3584, 18944), (152064, 3584)]
    for bucket in (4, 8, 16))

# The configs the benchmark sweeps (and the tests check): M == 1 (FMA path) and M in 2..16 (dot path).
CANDIDATES_M1 = ([GemvConfig(bn, bk, w, 1, False, sk)
                  for bn, bk, w in [(16, 512, 8), (8, 512, 4), (8, 1024, 8), (16, 256, 4)] for sk in (1, 2, 3)]
                 + [GemvConfig(32, 256, 8, 1, False), GemvConfig(64, 128, 8, 1, False)])
CANDIDATES_M16 = ([GemvConfig(16, 512, 4, 5, True, sk) for sk in (1, 2, 3)]
                  + [GemvConfig(bn, bk, w, st, True, sk)
                     for bn, bk, w, st in [(32, 256, 4, 5), (64, 256, 4, 5), (16, 256, 4, 7)] for sk in (1, 2)]
                  + [GemvConfig(16, 512, 4, 3), GemvConfig(64, 128, 4, 3), GemvConfig(32, 128, 4, 7)])

_NUM_SMS_DEFAULT = 132


def _m_bucket(m: int) -> int:
    return 1 if m == 1 else 4 if m <= 4 else 8 if m <= 8 else 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 \
        else 128


def preferred(m: int, n: int, k: int) -> bool:
    """Whether the kernel is the faster choice for ``x [m, k] @ w[n, k]^T``: always at M == 1; at 2 <= M <= MAX_M
    only where it was measured faster than cuBLAS."""
    return m == 1 or (1 < m <= MAX_M and (n, k, _m_bucket(m)) in _BEATS_CUBLAS)


def w8a8_preferred(m: int, n: int, k: int) -> bool:
    """Whether fp8 ``x [m, k]`` (per-token scales) times fp8 ``w [n, k]`` should take this kernel rather than
    torch._scaled_mm: up to 64 rows on any shape, 65..128 rows where the table has that bucket (measured faster)."""
    return 0 < m <= _W8A8_ANY_SHAPE_MAX_M or (m <= W8A8_MAX_M and 128 in _W8A8_TABLE.get((n, k), {}))


def _heuristic_config(m: int, n: int, k: int, num_sms: int = _NUM_SMS_DEFAULT) -> GemvConfig:
    """Untabled shapes, by analogy with the table: enough programs to cover every SM, split-K (2) only where the
    row tiles are few and K long."""
    few_tiles = n < 32 * num_sms
    if m > MAX_M:           # W8A8 row tiles of 32..128: fewer pipeline stages (shared memory), as the 7B table
        if n >= 128 * num_sms:
            return GemvConfig(64, 128, 4, 3)
        return GemvConfig(64, 256, 4, 4, True, 2) if few_tiles and k >= 4096 else GemvConfig(64, 256, 4, 3)
    if m == 1:
        return GemvConfig(8, 512, 4, 1, False, 2 if few_tiles and k >= 4096 else 1)
    if n >= 128 * num_sms:
        return GemvConfig(64, 128, 4, 3)
    if not few_tiles:
        return GemvConfig(64, 256, 4, 5)
    if k >= 4096:
        return GemvConfig(64, 256, 4, 5, True, 2)
    return GemvConfig(32, 256, 4, 5)


def get_config(m: int, n: int, k: int, w8a8: bool = False) -> GemvConfig:
    per_m = (_W8A8_TABLE if w8a8 and m > 1 else _TABLE).get((n, k))
    if per_m is not None:
        bucket = _m_bucket(m)
        # A 2..16-row bucket without its own entry takes the shape's 16-row config (same row tile); the W8A8
        # buckets above 16 have larger row tiles and never borrow a smaller one's config.
        cfg = per_m.get(bucket) or (per_m.get(16) if 1 < bucket <= MAX_M else None)
        if cfg is not None:
            return cfg
    return _heuristic_config(m, n, k)


# Split-K workspace (fp32 partial tiles) and per-tile arrival counters, per device. Allocated outside graph capture
# and never freed (a captured graph keeps pointing at them); the counters are reset by the kernel itself. Calls on
# one stream are serialised, so one workspace per device suffices (not for concurrent calls on several streams).
_WORKSPACES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
_RETIRED: list[tuple[torch.Tensor, torch.Tensor]] = []


def _workspace(device: torch.device, ws_elems: int, n_locks: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    cur = _WORKSPACES.get(device)
    if cur is not None and cur[0].numel() >= ws_elems and cur[1].numel() >= n_locks:
        return cur
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None                 # no allocation during capture: caller falls back to split_k = 1
    if cur is not None:
        _RETIRED.append(cur)        # a captured graph may still use it
    ws = torch.empty(max(ws_elems, 1 << 20), dtype=torch.float32, device=device)
    locks = torch.zeros(max(n_locks, 1 << 14), dtype=torch.int32, device=device)
    _WORKSPACES[device] = (ws, locks)
    return ws, locks


def skinny_linear_with_config(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              cfg: GemvConfig, weight_scale: torch.Tensor | None = None,
                              x_scale: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
                              x_masked: bool | None = None, gated: bool = False) -> torch.Tensor:
    """Launch with an explicit config (benchmarks / tests). ``x [M, K]``, ``weight [N, K]`` contiguous;
    ``weight_scale`` (fp32, one value or one per row of ``weight``) when ``weight`` is fp8; ``x_scale`` (fp32, one
    per row of ``x``) when ``x`` is fp8 too (W8A8 on the tensor cores, the dot path at any M; the output is
    ``out_dtype``). The dot path takes up to ``W8A8_MAX_M`` rows here (benchmarks); ``skinny_linear`` routes at
    most ``MAX_M`` of bf16/fp16 ``x``. ``x_masked`` (benchmarks) overrides how rows past M are treated (default:
    masked below the row tile's size). ``gated``: ``weight`` is a fused [gate; up] projection (2N rows) and the
    result is ``silu(x W_gate^T + b_gate) * (x W_up^T + b_up)`` ``[M, N]``."""
    m, k = x.shape
    if m > W8A8_MAX_M:
        raise ValueError(f"the skinny GEMM takes at most {W8A8_MAX_M} rows, got {m}")
    n = weight.shape[0]
    x_fp8 = x_scale is not None
    if gated:
        if n % 2 or weight_scale is not None or x_fp8:
            raise ValueError("gated: a bf16/fp16 [gate; up] weight with an even number of rows")
        n //= 2
    y = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y
    if k == 0:
        if gated:
            b = torch.zeros(2 * n, dtype=y.dtype, device=y.device) if bias is None else bias
            return y.copy_((torch.nn.functional.silu(b[:n].float()) * b[n:].float()).to(y.dtype).expand(m, n))
        return y.zero_() if bias is None else y.copy_(bias.expand(m, n))
    use_dot = cfg.use_dot or m > 1 or x_fp8
    block_n = max(cfg.block_n, 16) if use_dot else max(cfg.block_n, 2)     # tl.dot needs >= 16 rows
    block_m = max(MAX_M, triton.next_power_of_2(m))
    block_k = cfg.block_k
    grid_n = triton.cdiv(n, block_n // 2 if gated else block_n)
    split_k = max(1, min(cfg.split_k, triton.cdiv(k, block_k)))
    ws = locks = weight                                  # unused unless split_k > 1
    if split_k > 1:
        buffers = _workspace(x.device, split_k * grid_n * block_n * (block_m if use_dot else 1), grid_n)
        if buffers is None:
            split_k = 1
        else:
            ws, locks = buffers
    k_per_split = triton.cdiv(triton.cdiv(k, block_k), split_k) * block_k
    w_scale_mode = 0 if weight_scale is None else (1 if weight_scale.numel() == 1 else 2)
    _skinny_gemm_kernel[(grid_n, split_k)](
        x, weight, bias if bias is not None else weight, y, ws, locks,
        weight_scale if weight_scale is not None else weight, x_scale if x_fp8 else weight, m, n, k, k_per_split,
        x.stride(0), weight.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, USE_DOT=use_dot, EVEN_K=(k % block_k == 0), SPLIT_K=split_k,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, W_SCALE=w_scale_mode, X_FP8=x_fp8,
        X_MASKED=(m < block_m) if x_masked is None else x_masked,
        PREFETCH=cfg.prefetch and not _INTERPRET, LINE=128 // weight.element_size(), GATED=gated,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **(pdl_launch_args(x.device) if cfg.pdl else {"PDL": False}))
    return y


def _operands_fit(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y_dtype: torch.dtype) -> bool:
    """The layout checks every entry point shares: 2-D ``x [M, K]`` and ``weight [N, K]`` on one device, both
    contiguous, and a contiguous ``[N]`` bias of the output's dtype (dtypes of x / weight: the caller's)."""
    return (x.dim() == 2 and weight.dim() == 2 and weight.shape[1] == x.shape[1] and x.device == weight.device
            and x.is_contiguous() and weight.is_contiguous()
            and (bias is None or (bias.dtype == y_dtype and bias.is_contiguous()
                                  and bias.shape == (weight.shape[0],))))


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  weight_scale: torch.Tensor | None = None, x_scale: torch.Tensor | None = None,
                  out_dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """``F.linear(x, weight, bias)`` for 2-D ``x`` with at most 16 rows, or None where this kernel does not apply
    (not CUDA, not bf16/fp16, more rows, non-contiguous operands, dtype mismatch). An fp8 ``weight`` comes
    with its fp32 ``weight_scale`` (a single value or one per row): ``x @ (weight * scale)^T``. An fp8 ``x`` comes
    with its fp32 ``x_scale`` (one per row) and the bf16/fp16 ``out_dtype``: ``(x * x_scale) @ (weight * scale)^T``
    on fp8 tensor cores (``weight`` must be fp8 too), for the row counts ``w8a8_preferred`` accepts (up to 128)."""
    if not (x.is_cuda or _INTERPRET) or x.dim() != 2 or weight.dim() != 2:
        return None
    if x_scale is not None:
        if x.dtype != torch.float8_e4m3fn or weight_scale is None or out_dtype not in (torch.bfloat16, torch.float16) \
                or x_scale.dtype != torch.float32 or x_scale.numel() != x.shape[0] or not x_scale.is_contiguous():
            return None
    elif x.dtype not in (torch.bfloat16, torch.float16):
        return None
    if weight_scale is None:
        if weight.dtype != x.dtype:
            return None
    elif weight.dtype != torch.float8_e4m3fn or weight_scale.dtype != torch.float32 \
            or weight_scale.numel() not in (1, weight.shape[0]) or not weight_scale.is_contiguous():
        return None
    m, k = x.shape
    if not _operands_fit(x, weight, bias, x.dtype if x_scale is None else out_dtype):
        return None
    too_many = m > MAX_M if x_scale is None else not w8a8_preferred(m, weight.shape[0], k)
    if too_many:
        return None
    return skinny_linear_with_config(x, weight, bias, get_config(m, weight.shape[0], k, x_scale is not None),
                                     weight_scale, x_scale, out_dtype)


def skinny_linear_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                       ) -> torch.Tensor | None:
    """``silu_and_mul(F.linear(x, weight, bias))`` in one kernel for a fused [gate; up] ``weight`` ``[2N, K]``
    (bf16/fp16, as ``x``): the same bits as the GEMM followed by ``triton_ops.silu_and_mul``. None where the skinny
    GEMM would not take ``F.linear(x, weight, bias)`` (same routing and config: the table's entry of ``weight``'s
    shape), or ``weight`` has an odd number of rows."""
    if not (x.is_cuda or _INTERPRET) or x.dtype not in (torch.bfloat16, torch.float16) or weight.dtype != x.dtype \
            or not _operands_fit(x, weight, bias, x.dtype):
        return None
    m, k = x.shape
    n = weight.shape[0]
    if n % 2 or not preferred(m, n, k):
        return None
    return skinny_linear_with_config(x, weight, bias, get_config(m, n, k), gated=True)
