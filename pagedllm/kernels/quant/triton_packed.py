"""Triton matmuls over the canonical packed integer form (packed.py): ``y = x @ W (+ bias)``, W int4/int8 packed.

One launcher (``packed_matmul``), three paths chosen by the number of rows ``M`` of ``x`` and a per-shape table:

* **Batch 1, 4-bit** (``M == 1``, a ``PackedGemvConfig`` in ``M1_TABLE`` or the default): ``triton_packed_gemv``'s
  kernel (16-byte word loads, one LOP3 a value, the group scale once a tile).
* **Decode** (``M <= 16``, ``_packed_decode_kernel``; ``M == 1`` too where the config is a ``PackedConfig``):
  bound by the weight read, so each program streams a column slice of ``qweight`` (``[BLOCK_KP, BLOCK_N]`` int32
  words a tile, ``N`` contiguous) over a range of K (split-K gives a few programs per SM even for narrow layers),
  and the per-weight work is kept to three instructions:
  a value becomes a float with one LOP3 (``_unpack_scaled``: the field ORed into the mantissa of ``2**23``, no
  int->float conversion, which is a quarter-rate instruction) and one fma applies the group scale exactly; the
  group offset never touches a weight: ``sum_k x_k o[g(k), n]`` is ``o`` times a sum of ``x`` per packed row (or
  per tile).
  - ``M == 1``: fp32 FMAs with ``x`` into a ``[BLOCK_KP, BLOCK_N]`` accumulator, reduced over K once at the end;
    with ``prefetch`` the next tile's words and scales are loaded before this tile's math (registers
    double-buffered), the first tile before the PDL wait.
  - ``2 <= M <= 16``: the tensor cores, ``pack`` dots per tile, one per position ``j`` of a value in its word:
    ``W[kp * pack + j, :]`` for all ``kp`` of the tile against ``x[:, kp * pack + j]`` (a dot over the tile in a
    permuted K order is the same dot), so the words never need a register reshape.
  Split-K partials are reduced inside the same kernel by the last program of each tile to arrive (the scheme and
  the workspace of ``triton_gemv``: no memset, no second kernel, deterministic).
* **Prefill, dequantize + cuBLAS** (``cublas`` configs; most shapes from ``M > 16``): ``_dequantize_kernel`` writes
  the dense ``W`` into a persistent per-device scratch sized by the largest layer (reads 0.5 B and writes 2 B per
  int4 weight at HBM speed), then ``torch.mm``. From ~128 rows (sooner on narrow layers) this beats the fused
  kernels here (what vLLM does for AWQ at >= 256 tokens). The scratch grows only outside CUDA-graph capture; a
  captured call that would need more takes the fused GEMM. ``SCRATCH_SLAB_BYTES`` (off) runs it a column slab at a
  time into one small buffer meant to stay in L2.
* **17..256 rows, fused** (``triton_packed_wide``, a ``PackedWideConfig`` in ``_TABLE``): a tensor-core GEMM whose
  word tile loads straight into the dot's ``[BLOCK_K, BLOCK_N]`` shape, a rotate, a LOP3 and one fma a weight
  (offset included), one row tile over all of M where possible, split-K; x's rows past M in a partial row tile
  masked (``MASK_PARTIAL_ROWS``). Selected per shape and row bucket (32, 64, 128, 256) where a probe timed it faster
  than the scratch path below (7B: all four shapes at 17..64 rows, gate_up to 256, down to 128); the scratch path
  stays elsewhere. ``WIDE_DECODE`` (on) sends 2..16 rows of 4-bit weights to its 16-row tiles instead of the
  decode kernel.
* **Prefill, fused** (``_packed_gemm_kernel``): a tiled GEMM; each K step loads an ``x`` tile and a
  ``[BLOCK_K // pack, BLOCK_N]`` tile of words, dequantizes it to ``[BLOCK_K, BLOCK_N]`` in ``x``'s dtype and runs
  ``tl.dot`` with fp32 accumulation; program ids swizzled in groups of ``GROUP_M`` row tiles for L2 reuse of W.
  Kept for mid-size M on wide layers (7B gate_up at M = 64) and as the in-capture fallback.

Scales and offsets are read three ways (constexpr ``SCALE_MODE``): one ``[BLOCK_N]`` row per K tile when the tile
lies inside one group (``group_size % BLOCK_K == 0``: AWQ/GPTQ g128 with ``BLOCK_K <= 128``), one row for the whole
matmul when there is one group (per-channel), otherwise gathered per packed row (``group_size`` a multiple of
``pack``: GGUF's 32 and Q6_K's 16).

Launch configs are constants looked up per ``(M bucket, N, K, bits, group_size)`` on the first call of a shape and
kept in a dict (no run-time autotuning: the engine's warm-up compiles every variant). ``benchmarks/quant_kernels.py
--sweep`` times the candidate configs on a GPU to fill ``_TABLE``; docs/perf.md has the measurements.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from pagedllm import envs
from pagedllm.kernels.pdl import pdl_launch_args, pdl_wait
from pagedllm.kernels.quant import triton_packed_gemv as gemv
from pagedllm.kernels.quant import triton_packed_wide as wide
from pagedllm.kernels.quant.packed import PackedWeight, scale_mode
from pagedllm.kernels.quant.triton_packed_gemv import PackedGemvConfig
from pagedllm.kernels.quant.triton_packed_wide import PackedWideConfig, load_x_tile, tile_cols
from pagedllm.kernels.triton_gemv import _workspace

MAX_DECODE_M = 16
_INTERPRET = envs.TRITON_INTERPRET
_FUSED = not _INTERPRET     # _unpack_scaled's single-rounding fma (the interpreter's fma rounds twice)
# Unclamped column indices (EVEN_N) where N is a multiple of the tile, in the decode, dequantize and fused-GEMM
# kernels: off. Session 20 predicted +4-6% on AWQ ShareGPT from their vector loads (offline SASS); measured on an H100
# in session 24 (route_ab.py base vs awq-clamped, alternating): latency_8x1024x1024 6.20 s against 5.61 s clamped
# (-10%, two pairs), ShareGPT 8,465 / 8,557 against 8,581 / 8,601 tok/s. The even path stays tested (the kernels
# compile both); triton_packed_gemv and triton_packed_wide keep their own EVEN_N.
_EVEN_N_TILES = False


@triton.jit
def _scales_for_tile(S, O, kp0, offs_kp, cols, N, KP, s_one, o_one, kmask,
                     PACK: tl.constexpr, GROUP: tl.constexpr, SCALE_MODE: tl.constexpr, EVEN_K: tl.constexpr,
                     COLS_FIRST: tl.constexpr):
    """The scale and offset of each packed row of a tile, as ``[BLOCK_N, 1 or BLOCK_KP]`` (``COLS_FIRST``) or
    ``[1 or BLOCK_KP, BLOCK_N]``, in fp32."""
    if SCALE_MODE == 2:
        s = s_one
        o = o_one
    elif SCALE_MODE == 1:
        g = (kp0 * PACK) // GROUP
        if EVEN_K:
            s = tl.load(S + g * N + cols).to(tl.float32)
            o = tl.load(O + g * N + cols).to(tl.float32)
        else:   # the last split's tiles may lie wholly past K: no group there
            in_k = (cols < N) & (kp0 < KP)
            s = tl.load(S + g * N + cols, mask=in_k, other=0.0).to(tl.float32)
            o = tl.load(O + g * N + cols, mask=in_k, other=0.0).to(tl.float32)
    if SCALE_MODE == 0:
        gidx = ((kp0 + offs_kp) * PACK) // GROUP
        if COLS_FIRST:
            ptrs = gidx[None, :] * N + cols[:, None]
        else:
            ptrs = gidx[:, None] * N + cols[None, :]
        if EVEN_K:
            s = tl.load(S + ptrs).to(tl.float32)
            o = tl.load(O + ptrs).to(tl.float32)
        else:
            s = tl.load(S + ptrs, mask=kmask, other=0.0).to(tl.float32)
            o = tl.load(O + ptrs, mask=kmask, other=0.0).to(tl.float32)
    else:
        if COLS_FIRST:
            s = s[:, None]
            o = o[:, None]
        else:
            s = s[None, :]
            o = o[None, :]
    return s, o


# 2**23 as float32 bits: (MAGIC | v) read as float32 is exactly 2**23 + v for any v < 2**23, so a bit-field of a
# word becomes a float with one integer op and no int->float conversion (a quarter-rate instruction on the GPU).
MAGIC = tl.constexpr(0x4B000000)
TWO23 = tl.constexpr(8388608.0)


@triton.jit
def _unpack_scaled(words, words_hi, s, c, j: tl.constexpr, BITS: tl.constexpr, FUSED: tl.constexpr):
    """``q_j * s`` in fp32 for value ``j`` of each word (``s`` broadcast to the words' shape, ``c = -2**23 * s``).

    The field is masked in place where it lies below bit 23 (``q * 2**p`` is then an exact float), otherwise taken
    from ``words_hi = words >> HI_SHIFT``: one LOP3 per value and one shift per word. The scale carries the
    ``2**-p``: ``fma(2**23 + q 2**p, s 2**-p, -2**23 s)`` is ``q s`` with a single rounding. ``FUSED`` off (the
    Triton interpreter, whose fma is a multiply then an add) subtracts ``2**23`` first: exact as well."""
    MASK: tl.constexpr = (1 << BITS) - 1
    HI_SHIFT: tl.constexpr = 12 if BITS == 4 else 16
    if BITS * (j + 1) <= 23:
        P: tl.constexpr = BITS * j
        v = words & (MASK << P)
    else:
        P: tl.constexpr = BITS * j - HI_SHIFT
        v = words_hi & (MASK << P)
    wf = (v | MAGIC).to(tl.float32, bitcast=True)
    SCALE: tl.constexpr = 1.0 / (1 << P)
    if FUSED:
        return tl.fma(wf, tl.broadcast_to(s * SCALE, wf.shape), tl.broadcast_to(c * SCALE, wf.shape))
    else:
        return (wf - TWO23) * (s * SCALE)


@triton.jit
def _packed_decode_kernel(X, QW, S, O, B, Y, WS, Locks, M, N, KP, KP_PER_SPLIT, stride_xm, stride_ym,
                          BITS: tl.constexpr, GROUP: tl.constexpr, SCALE_MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
                          USE_DOT: tl.constexpr, EVEN_K: tl.constexpr, SPLIT_K: tl.constexpr, FUSED: tl.constexpr,
                          PREFETCH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_KP: tl.constexpr, PDL: tl.constexpr, EVEN_N: tl.constexpr, X_MASKED: tl.constexpr):
    PACK: tl.constexpr = 32 // BITS
    HI_SHIFT: tl.constexpr = 12 if BITS == 4 else 16
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tile_cols(offs_n, N, EVEN_N)
    offs_kp = tl.arange(0, BLOCK_KP)
    kp_start = pid_k * KP_PER_SPLIT
    s_one = tl.zeros((BLOCK_N,), dtype=tl.float32)
    o_one = s_one
    if SCALE_MODE == 2:
        s_one = tl.load(S + cols).to(tl.float32)
        o_one = tl.load(O + cols).to(tl.float32)
    # A trip count that does not depend on the program id (uniform; the interpreter needs host ints here too).
    # Where K or the splits are uneven the tiles past K are masked (EVEN_K covers both).
    if USE_DOT:
        # W is the tensor cores' A operand ([BLOCK_N, BLOCK_KP] words, N contiguous), x the B operand padded to 16
        # columns; one dot per position j of a value in its word (a dot over the tile in a permuted K order).
        w_ptrs = QW + (kp_start + offs_kp).to(tl.int64)[None, :] * N + cols[:, None]
        pdl_wait(PDL)
        offs_m = tl.arange(0, BLOCK_M)
        mmask = offs_m < M
        if X_MASKED:     # rows >= M not read (masked, zero-filled; DECODE_MASK_PARTIAL_ROWS); never stored
            xrows = offs_m
        else:            # rows >= M re-read row M - 1; never stored
            xrows = tl.minimum(offs_m, M - 1)
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for kp_rel in range(0, KP_PER_SPLIT, BLOCK_KP):
            kp0 = kp_start + kp_rel
            kmask = (kp0 + offs_kp) < KP
            if EVEN_K:
                words = tl.load(w_ptrs)
            else:
                words = tl.load(w_ptrs, mask=kmask[None, :], other=0)
            words_hi = words >> HI_SHIFT
            s, o = _scales_for_tile(S, O, kp0, offs_kp, cols, N, KP, s_one, o_one, kmask[None, :],
                                    PACK, GROUP, SCALE_MODE, EVEN_K, True)            # [BN, 1 or BKP]
            c = s * -TWO23
            xacc = tl.zeros((BLOCK_KP, BLOCK_M), dtype=tl.float32)
            for j in tl.static_range(PACK):
                w = _unpack_scaled(words, words_hi, s, c, j, BITS, FUSED)             # [BN, BKP]
                if SCALE_MODE == 0:
                    w += o
                x_ptrs = X + xrows[None, :] * stride_xm + ((kp0 + offs_kp) * PACK + j)[:, None]
                xj = load_x_tile(x_ptrs, kmask, mmask, EVEN_K, X_MASKED, True)       # [BKP, BM]
                acc = tl.dot(w.to(X.dtype.element_ty), xj, acc)
                if SCALE_MODE != 0:
                    xacc += xj.to(tl.float32)
            if SCALE_MODE != 0:      # one offset row per tile: o times the tile's sum of x, per row of x
                acc += o * tl.sum(xacc, axis=0)[None, :]
            w_ptrs += BLOCK_KP * N
        tile_offs = tl.arange(0, BLOCK_N)[:, None] * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]
        TILE: tl.constexpr = BLOCK_N * BLOCK_M
    else:
        # M == 1: fp32 FMAs into a [BLOCK_KP, BLOCK_N] tile, reduced over K once at the end; the offset term
        # sum_k x_k o[g(k), n] is applied per packed row, o times the sum of that row's x values.
        w_ptrs = QW + (kp_start + offs_kp).to(tl.int64)[:, None] * N + cols[None, :]
        acc2 = tl.zeros((BLOCK_KP, BLOCK_N), dtype=tl.float32)
        if PREFETCH:
            # Registers double-buffered: the next tile's words (and group scales) are loaded before this tile's
            # math. Rows clamped into the matrix, so the load past a split's last tile needs no mask. The first
            # tile is read before pdl_wait (weights are constants).
            g_last = (KP * PACK) // GROUP - 1
            nxt = tl.load(QW + tl.minimum(kp_start + offs_kp, KP - 1).to(tl.int64)[:, None] * N + cols[None, :])
            if SCALE_MODE == 1:
                g0 = tl.minimum((kp_start * PACK) // GROUP, g_last)
                s_nxt = tl.load(S + g0 * N + cols)
                o_nxt = tl.load(O + g0 * N + cols)
        pdl_wait(PDL)
        for kp_rel in range(0, KP_PER_SPLIT, BLOCK_KP):
            kp0 = kp_start + kp_rel
            kmask = (kp0 + offs_kp) < KP
            if PREFETCH:
                words = nxt
                if not EVEN_K:
                    words = tl.where(kmask[:, None], words, 0)
                nxt = tl.load(QW + tl.minimum(kp0 + BLOCK_KP + offs_kp, KP - 1).to(tl.int64)[:, None] * N
                              + cols[None, :])
                if SCALE_MODE == 1:
                    s = s_nxt.to(tl.float32)[None, :]
                    o = o_nxt.to(tl.float32)[None, :]
                    if not EVEN_K:
                        s = tl.where(kp0 < KP, s, 0.0)
                        o = tl.where(kp0 < KP, o, 0.0)
                    g1 = tl.minimum(((kp0 + BLOCK_KP) * PACK) // GROUP, g_last)
                    s_nxt = tl.load(S + g1 * N + cols)
                    o_nxt = tl.load(O + g1 * N + cols)
                else:
                    s, o = _scales_for_tile(S, O, kp0, offs_kp, cols, N, KP, s_one, o_one, kmask[:, None],
                                            PACK, GROUP, SCALE_MODE, EVEN_K, False)
            else:
                if EVEN_K:
                    words = tl.load(w_ptrs)
                else:
                    words = tl.load(w_ptrs, mask=kmask[:, None], other=0)
                s, o = _scales_for_tile(S, O, kp0, offs_kp, cols, N, KP, s_one, o_one, kmask[:, None],
                                        PACK, GROUP, SCALE_MODE, EVEN_K, False)        # [1 or BKP, BN]
            words_hi = words >> HI_SHIFT
            c = s * -TWO23
            xsum = tl.zeros((BLOCK_KP,), dtype=tl.float32)
            for j in tl.static_range(PACK):
                w = _unpack_scaled(words, words_hi, s, c, j, BITS, FUSED)
                x_ptrs = X + (kp0 + offs_kp) * PACK + j
                if EVEN_K:
                    xj = tl.load(x_ptrs).to(tl.float32)
                else:
                    xj = tl.load(x_ptrs, mask=kmask, other=0.0).to(tl.float32)
                acc2 += w * xj[:, None]
                xsum += xj
            acc2 += o * xsum[:, None]
            w_ptrs += BLOCK_KP * N
        acc = tl.sum(acc2, axis=0)
        tile_offs = tl.arange(0, BLOCK_N)
        TILE: tl.constexpr = BLOCK_N
    if SPLIT_K > 1:
        # As triton_gemv: partial tiles to the workspace, the last program of a column tile to arrive sums them in
        # split order, writes y and resets the tile's counter for the next launch (or graph replay).
        tl.store(WS + (pid_k * tl.num_programs(0) + pid_n) * TILE + tile_offs, acc)
        tl.debug_barrier()
        count = tl.atomic_add(Locks + pid_n, 1, sem="acq_rel", scope="gpu")
        if count == SPLIT_K - 1:
            acc = tl.load(WS + pid_n * TILE + tile_offs, cache_modifier=".cg")
            for sk in tl.static_range(1, SPLIT_K):
                acc += tl.load(WS + (sk * tl.num_programs(0) + pid_n) * TILE + tile_offs, cache_modifier=".cg")
            _decode_epilogue(acc, B, Y, cols, offs_n, M, N, stride_ym, HAS_BIAS, USE_DOT, BLOCK_M)
            tl.atomic_xchg(Locks + pid_n, 0, sem="relaxed", scope="gpu")
    else:
        _decode_epilogue(acc, B, Y, cols, offs_n, M, N, stride_ym, HAS_BIAS, USE_DOT, BLOCK_M)


@triton.jit
def _decode_epilogue(acc, B, Y, cols, offs_n, M, N, stride_ym, HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr,
                     BLOCK_M: tl.constexpr):
    if USE_DOT:
        if HAS_BIAS:
            acc += tl.load(B + cols).to(tl.float32)[:, None]
        offs_m = tl.arange(0, BLOCK_M)
        y_ptrs = Y + offs_m[None, :] * stride_ym + offs_n[:, None]
        tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=(offs_n[:, None] < N) & (offs_m[None, :] < M))
    else:
        if HAS_BIAS:
            acc += tl.load(B + cols).to(tl.float32)
        tl.store(Y + offs_n, acc.to(Y.dtype.element_ty), mask=offs_n < N)


@triton.jit
def _dequantize_kernel(QW, S, O, W, N, KP, LDQ, GROUP: tl.constexpr, BITS: tl.constexpr, SCALE_MODE: tl.constexpr,
                       EVEN_K: tl.constexpr, FUSED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KP: tl.constexpr,
                       EVEN_N: tl.constexpr):
    """The dense ``W`` ``[K, N]`` in ``W``'s dtype, one ``[BLOCK_KP * pack, BLOCK_N]`` tile a program (prefill
    feeds it to cuBLAS). ``QW``, ``S`` and ``O`` have rows ``LDQ`` apart: ``N`` itself, or for a slab of ``N``
    columns the packed weight's full width (the pointers then start at the slab's first column)."""
    PACK: tl.constexpr = 32 // BITS
    HI_SHIFT: tl.constexpr = 12 if BITS == 4 else 16
    kp0 = tl.program_id(0) * BLOCK_KP
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tile_cols(offs_n, N, EVEN_N)
    offs_kp = tl.arange(0, BLOCK_KP)
    kmask = (kp0 + offs_kp) < KP
    if EVEN_K:
        words = tl.load(QW + (kp0 + offs_kp).to(tl.int64)[:, None] * LDQ + cols[None, :])
    else:
        words = tl.load(QW + (kp0 + offs_kp).to(tl.int64)[:, None] * LDQ + cols[None, :], mask=kmask[:, None],
                        other=0)
    words_hi = words >> HI_SHIFT
    s_one = tl.zeros((BLOCK_N,), dtype=tl.float32)
    o_one = s_one
    if SCALE_MODE == 2:
        s_one = tl.load(S + cols).to(tl.float32)
        o_one = tl.load(O + cols).to(tl.float32)
    s, o = _scales_for_tile(S, O, kp0, offs_kp, cols, LDQ, KP, s_one, o_one, kmask[:, None],
                            PACK, GROUP, SCALE_MODE, EVEN_K, False)
    c = s * -TWO23
    rows = (kp0 + offs_kp).to(tl.int64) * PACK
    smask = kmask[:, None] & (offs_n < N)[None, :]
    for j in tl.static_range(PACK):
        w = _unpack_scaled(words, words_hi, s, c, j, BITS, FUSED) + o
        if EVEN_N and EVEN_K:
            tl.store(W + (rows + j)[:, None] * N + cols[None, :], w.to(W.dtype.element_ty))
        else:
            tl.store(W + (rows + j)[:, None] * N + offs_n[None, :], w.to(W.dtype.element_ty), mask=smask)


@triton.jit
def _packed_gemm_kernel(X, QW, S, O, B, Y, M, N, K, KP, stride_xm, stride_ym,
                        BITS: tl.constexpr, GROUP: tl.constexpr, SCALE_MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
                        EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        GROUP_M: tl.constexpr, PDL: tl.constexpr, EVEN_N: tl.constexpr):
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    BLOCK_KP: tl.constexpr = BLOCK_K // PACK
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    # Swizzle: GROUP_M row tiles walk the column tiles together, so a W tile is read from L2 by GROUP_M programs.
    per_group = GROUP_M * grid_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_m, M - 1)           # clamped: x loads unmasked along M; stores masked
    cols = tile_cols(offs_n, N, EVEN_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_kp = tl.arange(0, BLOCK_KP)
    shifts = tl.arange(0, PACK) * BITS
    s_one = tl.zeros((BLOCK_N,), dtype=tl.float32)
    o_one = s_one
    if SCALE_MODE == 2:
        s_one = tl.load(S + cols).to(tl.float32)
        o_one = tl.load(O + cols).to(tl.float32)
    x_ptrs = X + rows.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
    w_ptrs = QW + offs_kp.to(tl.int64)[:, None] * N + cols[None, :]
    pdl_wait(PDL)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kp0 in range(0, KP, BLOCK_KP):
        kmask = (kp0 + offs_kp) < KP
        if EVEN_K:
            x = tl.load(x_ptrs)
            words = tl.load(w_ptrs)
        else:
            x = tl.load(x_ptrs, mask=(kp0 * PACK + offs_k)[None, :] < K, other=0.0)
            words = tl.load(w_ptrs, mask=kmask[:, None], other=0)
        s, o = _scales_for_tile(S, O, kp0, offs_kp, cols, N, KP, s_one, o_one, kmask[:, None],
                                PACK, GROUP, SCALE_MODE, EVEN_K, False)
        q = (words[:, None, :] >> shifts[None, :, None]) & MASK                              # [BKP, PACK, BN]
        w = q.to(tl.float32) * s[:, None, :] + o[:, None, :]
        w = tl.reshape(w, (BLOCK_K, BLOCK_N)).to(X.dtype.element_ty)                        # k = kp * PACK + j
        acc = tl.dot(x, w, acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_KP * N
    if HAS_BIAS:
        acc += tl.load(B + cols).to(tl.float32)[None, :]
    y_ptrs = Y + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


class PackedConfig(NamedTuple):
    """``block_k`` in unpacked elements (a multiple of 16 * pack for the decode dot path)."""
    block_m: int            # 1 (decode FMA path), 16 (decode dot path) or the prefill row tile
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    split_k: int = 0        # decode only; 0: chosen from the shape (about _DECODE_PROGRAMS_PER_SM programs an SM)
    group_m: int = 8        # prefill only
    cublas: bool = False    # prefill only: dequantize W into a scratch buffer (block_n x block_k tiles), then cuBLAS
    prefetch: bool = False  # decode M == 1 only: load the next tile's words before this tile's math


def _m_bucket(m: int) -> int:
    if m == 1:
        return 1
    if m <= MAX_DECODE_M:
        return 16
    if m <= 32:
        return 32
    if m <= 64:
        return 64
    if m <= 128:
        return 128
    if m <= 256:
        return 256
    return 4096


_DECODE_PROGRAMS_PER_SM = 4
# The 2..16-row decode kernel's rows past M (its tile is 16 rows): re-read row M - 1 (off) or masked (on), as
# triton_packed_wide.MASK_PARTIAL_ROWS does for 17..256 rows. Off: masked lost 8% of AWQ latency_8x1024x1024 (6.08 s
# against 5.60, H100, session 29, gpu_session28/pairs.sh PART=6), where the wide kernel gained.
DECODE_MASK_PARTIAL_ROWS = False
_DQ = PackedConfig(0, 128, 128, 4, 1, cublas=True)      # the dequantize kernel's tile for the cuBLAS prefill path
# The cuBLAS path's dense W a slab at a time, each at most this many bytes (0: the whole W at once, as measured so
# far). Off until measured (benchmarks/kernels/slab_probe.py): the whole 7B gate_up is 271 MB of bf16 written to and
# read back from HBM a call; slabs that stay in L2 would leave the int4 read alone.
SCRATCH_SLAB_BYTES = 0
# Defaults per M bucket and bits (H200 measurements where noted in _TABLE; these are the fallbacks for other shapes).
_DEFAULTS: dict[tuple[int, int], PackedConfig] = {
    (1, 4): PackedConfig(1, 128, 64, 4, 1, prefetch=True), (1, 8): PackedConfig(1, 128, 64, 4, 1, prefetch=True),
    (16, 4): PackedConfig(16, 64, 128, 4, 3), (16, 8): PackedConfig(16, 64, 64, 4, 3),
    (32, 4): _DQ, (32, 8): _DQ, (64, 4): _DQ, (64, 8): _DQ, (128, 4): _DQ, (128, 8): _DQ,
    (256, 4): _DQ, (256, 8): _DQ, (4096, 4): _DQ, (4096, 8): _DQ,
}
# The fused GEMM for a call of more than 16 rows inside a CUDA-graph capture that would need a bigger scratch than
# exists (the scratch cannot grow there). Its own constant: the M-bucket defaults are the scratch path itself (since
# c5e11f3 that fallback had taken _DEFAULTS[64], a cuBLAS config, and would have failed with a KeyError).
_IN_CAPTURE_GEMM = PackedConfig(64, 64, 128, 4, 3)
# Measured per-shape choices: (N, K, bits) -> {M bucket: config}, from `benchmarks/quant_kernels.py --sweep` on an
# H200 (Qwen2.5-7B shapes, int4 g128, bf16).
_P = PackedConfig
_W = PackedWideConfig
# the wide kernel's compact words, W as wgmma's register A operand, the values unpacked two at a time into bf16x2
_KPP = dict(kperm=True, w_as_a=True, pairs=True)
_TABLE: dict[tuple[int, int, int], dict[int, PackedConfig | PackedWideConfig]] = {
    # Qwen2.5-7B: qkv, o, gate_up, down. 17..256 rows: the wide kernel where benchmarks/kernels/awq_fused_probe.py
    # timed it faster than dequantize + cuBLAS (H200, sessions 12 and 20; 32 / 64 rows on an H100 in session 28,
    # the pairs configs; gate_up 65..256 and down 65..128 in session 29, H100, once the rows past M of a partial tile
    # were masked: benchmarks/gpu_session28/pairs_table.json; docs/perf.md), else that scratch path.
    (4608, 3584, 4): {1: _P(1, 128, 64, 4, 1, prefetch=True), 16: _P(16, 128, 128, 8, 2),
                      32: _W(32, 64, 128, 4, 2, **_KPP), 64: _W(64, 64, 128, 4, 2, **_KPP),
                      128: _DQ, 256: _DQ, 4096: _DQ},
    (3584, 3584, 4): {1: _P(1, 128, 64, 4, 1, prefetch=True), 16: _P(16, 128, 128, 8, 2),
                      32: _W(32, 64, 128, 4, 2, **_KPP), 64: _W(64, 64, 128, 4, 2, **_KPP), 128: _DQ, 256: _DQ,
                      4096: _DQ},
    (37888, 3584, 4): {1: _P(1, 128, 64, 4, 1, 4, prefetch=True), 16: _P(16, 64, 128, 4, 3),
                       32: _W(32, 64, 128, 4, 2, **_KPP), 64: _W(64, 128, 64, 4, 3, compact=True),
                       128: _W(128, 128, 128, 8, 2, **_KPP), 256: _W(128, 128, 128, 8, 2, **_KPP), 4096: _DQ},
    (3584, 18944, 4): {1: _P(1, 128, 128, 4, 1), 16: _P(16, 64, 128, 4, 3),
                       32: _W(32, 128, 128, 4, 3, **_KPP), 64: _W(64, 64, 128, 4, 2, **_KPP),
                       128: _W(128, 64, 128, 4, 2, **_KPP), 256: _DQ, 4096: _DQ},
}

# Shapes not in _TABLE (other models; tensor-parallel shards of these) take dequantize + cuBLAS from 17 rows, which
# writes and reads back the dense bf16 W (4.6x the int4 read) where every step up to 64 rows is bound by the weight
# read. With UNTABLED_WIDE, 17..64 rows of 4-bit weights whose K tiles lie in one group take the pairs configs that
# won three of the four 7B shapes at 32 and 64 rows (1.6-3.7x faster than the scratch path there, H100, session 28).
# Off until timed on other shapes (awq_fused_probe.py --shapes llama8b,... --untabled-only).
UNTABLED_WIDE = False
_UNTABLED: dict[int, PackedWideConfig] = {32: _W(32, 64, 128, 4, 2, **_KPP), 64: _W(64, 64, 128, 4, 2, **_KPP)}
# 2..16 rows (decode steps of 2..16 requests: most of a ShareGPT-like run's steps, all of latency_8x1024x1024's) on
# the wide kernel's 16-row pairs tiles instead of the decode kernel, for every 4-bit shape whose K tiles lie in one
# group. At these rows the step is bound by the weight read (0.5 B a weight), yet the decode kernel ran at 0.7-1.1x
# of bf16's time (H200, session 6: 7B gate_up 82 µs at 16 rows against 65) and AWQ 7B latency_8x1024x1024 (8 rows)
# at about bf16's speed (5.6 s, H100, session 29); it unpacks a value with two LOP3s, an fma and a conversion, the
# pairs configs two values with about four instructions, and they ran 7B gate_up at 24 rows in 57 µs against bf16's
# 100 (H100, session 29). Measured (H100, session 31, docs/perf.md): at 8 rows gate_up 78.6 -> 46.1 µs, down 53.7 ->
# 44.0; AWQ 7B latency_8x1024x1024 5.65 -> 4.37 s, sharegpt_like_1000 9,010 -> 9,457 tok/s (+5%), pure decode at
# 4 / 16 requests +33% / +31%. Off (benchmarks/kernels/route_ab.py decode-kernel, for A/B runs): the decode kernel.
# Three pipeline stages, not two (H100, session 32: the probe's best on every 7B shape at 2 / 4 / 8 / 16 rows, down
# 43.7 -> 33.2 µs at 8 rows; AWQ latency_8x1024x1024 4.348 -> 3.828 s, sharegpt_like_1000 9,467 -> 9,647 tok/s).
# o_proj (3584 x 3584) alone ran faster on the decode kernel (10.5-11.0 µs against 11.9-12.1), ~1% of a step: kept.
WIDE_DECODE = True
_WIDE_DECODE_CFG = _W(16, 64, 128, 4, 3, **_KPP)

# M == 1: the kernel per shape (N, K, bits). A PackedGemvConfig takes triton_packed_gemv's kernel, a PackedConfig the
# decode kernel above; shapes not listed take _M1_DEFAULT (4-bit weights whose groups are whole packed rows) or
# _TABLE / _DEFAULTS. `benchmarks/quant_kernels.py --gemv` prints this block from its sweep (--save-m1-table FILE
# writes it; --apply-m1-table FILE puts it here).
# BEGIN M1_TABLE
M1_TABLE: dict[tuple[int, int, int], PackedGemvConfig | PackedConfig] = {
    # Qwen2.5-7B: qkv, o, gate_up, down (benchmarks/quant_kernels.py --gemv, NVIDIA H200)
    (37888, 3584, 4): PackedGemvConfig(128, 16, 1, 4, True, True, True, 0, 0, 2, True, 1),  # 28.61 us
    (3584, 18944, 4): PackedGemvConfig(128, 16, 1, 4, True, True, True, 0, 0, 1, True, 1),  # 16.62 us
    (4608, 3584, 4): PackedGemvConfig(128, 16, 1, 4, True, True, True, 0, 0, 1, True, 1),  # 7.12 us
    (3584, 3584, 4): PackedGemvConfig(128, 16, 1, 4, True, True, True, 0, 0, 2, True, 1),  # 6.12 us
}
# END M1_TABLE
# The f16x2 path with x as vectors and tile-shaped scales beat the fp32 path on all four 7B shapes on the H100
# (session 19: gate_up 37.6 / 42.0 us, down 17.5 / 25.3, qkv 7.69 / 7.84, o 7.22 / 7.48), so shapes not in the table
# (other models) take it.
_M1_DEFAULT: PackedGemvConfig | PackedConfig = PackedGemvConfig(half=1, so_tile=True, xvec=True)

# Candidates the benchmark sweeps per M bucket.
CANDIDATES: dict[int, list[PackedConfig]] = {
    1: [PackedConfig(1, bn, bk, w, st, sk, prefetch=pf)
        for bn, bk, w, st, sk, pf in [(128, 64, 4, 1, 4, True), (64, 128, 4, 1, 0, True), (64, 128, 4, 1, 0, False),
                                      (128, 64, 4, 1, 4, False), (128, 128, 4, 1, 0, False), (128, 64, 4, 1, 0, True),
                                      (128, 128, 4, 1, 0, True), (64, 64, 4, 1, 0, True), (128, 64, 8, 1, 0, True),
                                      (64, 128, 4, 3, 0, False), (128, 64, 4, 3, 4, False)]],
    16: [PackedConfig(16, bn, bk, w, st, sk) for bn, bk, w, st, sk in [(128, 128, 4, 3, 0), (128, 128, 8, 2, 0),
                                                                       (64, 128, 4, 3, 0), (128, 128, 4, 3, 1),
                                                                       (64, 128, 4, 3, 2)]],
    32: [PackedConfig(64, 64, 128, 4, 3), _DQ],
    64: [PackedConfig(64, 64, 128, 4, 3), PackedConfig(64, 128, 64, 4, 4), _DQ,
         PackedConfig(0, 64, 256, 4, 1, cublas=True)],
    128: [PackedConfig(128, 128, 64, 8, 3), _DQ],
    256: [PackedConfig(128, 128, 64, 8, 3), _DQ, PackedConfig(0, 64, 256, 4, 1, cublas=True),
          PackedConfig(0, 256, 128, 8, 1, cublas=True)],
    4096: [PackedConfig(128, 128, 64, 8, 4), _DQ, PackedConfig(0, 64, 256, 4, 1, cublas=True)],
}


class _Plan(NamedTuple):
    """Everything about a launch that depends only on the shape class: built once, then a dict lookup per call."""
    kind: str                   # "gemv" (batch 1), "decode", "gemm" (fused tiled GEMM), "cublas" (dequantize + cuBLAS),
                                # "wide" (triton_packed_wide, 17..256 rows)
    grid: tuple[int, int]       # decode and dequantize grids; the GEMM's depends on M and is computed per call
    kp_per_split: int
    ws_elems: int
    constexprs: dict


_PLANS: dict[tuple, _Plan] = {}
_NUM_SMS: dict[int, int] = {}


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _NUM_SMS:
        _NUM_SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _NUM_SMS[index]



def get_config(m: int, n: int, k: int, bits: int, group_size: int = 128,
               half_x: bool = True) -> PackedConfig | PackedGemvConfig | PackedWideConfig:
    """The kernel and config for M rows of x times this (N, K, bits) weight. ``half_x``: x is bf16 / fp16. The
    wide kernel's pairs configs unpack two weights at a time into bf16x2 / f16x2 (x's dtype), so an fp32 x (an
    fp32 model on the GPU) takes the bucket's default instead: before session 32 it met WIDE_DECODE's pairs config
    at 2..16 rows and failed to compile."""
    bucket = _m_bucket(m)
    if bucket == 1:
        cfg = M1_TABLE.get((n, k, bits), _M1_DEFAULT)
        if isinstance(cfg, PackedConfig) or (bits == 4 and group_size % 8 == 0):
            return cfg
    per_m = _TABLE.get((n, k, bits))
    if WIDE_DECODE and bucket == MAX_DECODE_M and wide.pairs_apply(_WIDE_DECODE_CFG, k, bits, group_size):
        cfg = _WIDE_DECODE_CFG
    elif per_m is not None and bucket in per_m:
        cfg = per_m[bucket]
    elif UNTABLED_WIDE and per_m is None and bucket in _UNTABLED and wide.pairs_apply(_UNTABLED[bucket], k, bits,
                                                                                      group_size):
        cfg = _UNTABLED[bucket]
    else:
        return _DEFAULTS[(bucket, bits)]
    if isinstance(cfg, PackedWideConfig) and cfg.pairs and not half_x:
        return _DEFAULTS[(bucket, bits)]
    return cfg


def _make_plan(m: int, n: int, k: int, bits: int, group_size: int, has_bias: bool, device: torch.device,
               cfg: PackedConfig | PackedGemvConfig | PackedWideConfig) -> _Plan:
    if isinstance(cfg, PackedWideConfig):
        if m < 2:
            raise ValueError(f"config {cfg} is for 2 or more rows; got M = {m}")
        # the grid and split depend on M itself (row tiles): triton_packed_wide.make_plan per call (cached)
        return _Plan("wide", (0, 0), 0, 0, dict(cfg=cfg, num_sms=_num_sms(device)))
    if isinstance(cfg, PackedGemvConfig):
        if m != 1 or bits != 4:
            raise ValueError(f"config {cfg} is for 4-bit weights at M == 1; got M = {m}, {bits}-bit")
        p = gemv.make_plan(n, k, group_size, has_bias, _num_sms(device), cfg)
        return _Plan("gemv", p.grid, p.kp_per_split, p.ws_elems, p.constexprs)
    pack = 32 // bits
    decode = m <= MAX_DECODE_M
    block_k = cfg.block_k
    use_dot = decode and (cfg.block_m > 1 or m > 1)
    if use_dot:
        block_k = max(block_k, 16 * pack)          # each of the pack dots needs K >= 16
    block_k = max(block_k, pack)
    block_kp = block_k // pack
    common = dict(BITS=bits, GROUP=group_size, SCALE_MODE=scale_mode(group_size, k, block_k, pack),
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    even_k = k % block_k == 0
    if not decode and cfg.cublas:
        grid = (triton.cdiv(k // pack, block_kp), triton.cdiv(n, cfg.block_n))
        return _Plan("cublas", grid, 0, 0, dict(common, EVEN_K=even_k, EVEN_N=_EVEN_N_TILES and n % cfg.block_n == 0,
                                                 FUSED=_FUSED,
                                                 BLOCK_N=cfg.block_n, BLOCK_KP=block_kp))
    common["HAS_BIAS"] = has_bias
    if not decode:
        return _Plan("gemm", (0, 0), 0, 0, dict(common, EVEN_K=even_k, EVEN_N=_EVEN_N_TILES and n % cfg.block_n == 0,
                                                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                                                BLOCK_K=block_k, GROUP_M=cfg.group_m))
    block_n = max(cfg.block_n, 16) if use_dot else cfg.block_n
    grid_n = triton.cdiv(n, block_n)
    k_tiles = triton.cdiv(k // pack, block_kp)
    split_k = cfg.split_k
    if split_k == 0:   # enough programs to keep every SM streaming, each split at least two K tiles
        split_k = max(1, min(triton.cdiv(_DECODE_PROGRAMS_PER_SM * _num_sms(device), grid_n), k_tiles // 2, 16))
    tiles_per_split = triton.cdiv(k_tiles, max(1, min(split_k, k_tiles)))
    split_k = triton.cdiv(k_tiles, tiles_per_split)            # no empty split
    block_m = MAX_DECODE_M if use_dot else 1
    return _Plan("decode", (grid_n, split_k), tiles_per_split * block_kp, split_k * grid_n * block_n * block_m,
                 dict(common, EVEN_K=even_k and k_tiles % tiles_per_split == 0, USE_DOT=use_dot, SPLIT_K=split_k,
                      FUSED=_FUSED, PREFETCH=cfg.prefetch and not use_dot, BLOCK_M=block_m, BLOCK_N=block_n,
                      BLOCK_KP=block_kp, EVEN_N=_EVEN_N_TILES and n % block_n == 0,
                      X_MASKED=DECODE_MASK_PARTIAL_ROWS and use_dot and m < block_m))


# Dense scratch for the cuBLAS prefill path, per (device, dtype): one buffer sized by the largest layer, reused by
# every layer (calls on a stream are serialised). Grown outside CUDA-graph capture only; a captured call that would
# need more falls back to the fused GEMM kernel. Replaced buffers are kept: a captured graph may still point at them.
_SCRATCH: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
_RETIRED_SCRATCH: list[torch.Tensor] = []


def _scratch(device: torch.device, dtype: torch.dtype, elems: int) -> torch.Tensor | None:
    cur = _SCRATCH.get((device, dtype))
    if cur is not None and cur.numel() >= elems:
        return cur
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    if cur is not None:
        _RETIRED_SCRATCH.append(cur)
    _SCRATCH[(device, dtype)] = buf = torch.empty(elems, dtype=dtype, device=device)
    return buf


def _launch(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None, plan: _Plan) -> torch.Tensor:
    m, k = x.shape
    n = w.qweight.shape[1]
    kp = w.qweight.shape[0]
    if plan.kind == "gemv":
        return gemv.launch(x, w, bias, gemv.GemvPlan(plan.grid, plan.kp_per_split, plan.ws_elems, plan.constexprs))
    if plan.kind == "wide":
        c = plan.constexprs
        return wide.launch(x, w, bias, wide.make_plan(m, n, k, w.bits, w.group_size, bias is not None, c["num_sms"],
                                                      c["cfg"]))
    if plan.kind == "cublas":
        y = _dequant_mm(x, w, bias, plan, slab_cols(k, n, plan.constexprs["BLOCK_N"]))
        if y is not None:
            return y
        # inside a CUDA-graph capture that would need a bigger scratch: the fused GEMM
        plan = _make_plan(m, n, k, w.bits, w.group_size, bias is not None, x.device, _IN_CAPTURE_GEMM)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    b = bias if bias is not None else y
    if plan.kind == "decode":
        constexprs = plan.constexprs
        ws = locks = y
        if constexprs["SPLIT_K"] > 1:
            buffers = _workspace(x.device, plan.ws_elems, plan.grid[0])
            if buffers is None:         # inside a CUDA-graph capture that would need a bigger workspace
                cfg = PackedConfig(constexprs["BLOCK_M"], constexprs["BLOCK_N"],
                                   constexprs["BLOCK_KP"] * (32 // w.bits), constexprs["num_warps"],
                                   constexprs["num_stages"], split_k=1, prefetch=constexprs["PREFETCH"])
                return _launch(x, w, bias, _make_plan(m, n, k, w.bits, w.group_size, bias is not None, x.device,
                                                      cfg))
            ws, locks = buffers
        _packed_decode_kernel[plan.grid](x, w.qweight, w.scales, w.offsets, b, y, ws, locks, m, n, kp,
                                         plan.kp_per_split, x.stride(0), y.stride(0), **constexprs,
                                         **pdl_launch_args(x.device))
    else:
        c = plan.constexprs
        grid = (triton.cdiv(m, c["BLOCK_M"]) * triton.cdiv(n, c["BLOCK_N"]),)
        _packed_gemm_kernel[grid](x, w.qweight, w.scales, w.offsets, b, y, m, n, k, kp, x.stride(0), y.stride(0),
                                  **c, **pdl_launch_args(x.device))
    return y


def slab_cols(k: int, n: int, block_n: int) -> int:
    """The columns of W a scratch slab holds under SCRATCH_SLAB_BYTES (a multiple of the dequantize tile), or ``n``
    (the whole dense W at once) when off or when it would fit anyway."""
    if SCRATCH_SLAB_BYTES <= 0:
        return n
    cols = max(block_n, SCRATCH_SLAB_BYTES // (2 * k) // block_n * block_n)
    return min(cols, n)


def _dequant_mm(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None, plan: _Plan,
                cols: int) -> torch.Tensor | None:
    """Dequantize + cuBLAS, ``cols`` columns of W at a time (all ``n`` of them unless SCRATCH_SLAB_BYTES): each slab
    dequantized into the same scratch (a small slab's lines stay in L2, overwritten there by the next slab rather
    than written back) and multiplied straight into its columns of ``y``; every output element is one cuBLAS dot over
    the whole K either way. None inside a CUDA-graph capture that would need a bigger scratch than exists."""
    m, k = x.shape
    n = w.qweight.shape[1]
    kp = w.qweight.shape[0]
    buf = _scratch(x.device, x.dtype, k * cols)
    if buf is None:
        return None
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_n = plan.constexprs["BLOCK_N"]
    for n0 in range(0, n, cols):
        width = min(cols, n - n0)
        dense = buf[:k * width].view(k, width)
        c = plan.constexprs if width == n else dict(plan.constexprs,
                                                    EVEN_N=_EVEN_N_TILES and width % block_n == 0)
        _dequantize_kernel[(plan.grid[0], triton.cdiv(width, block_n))](
            w.qweight[:, n0:], w.scales[:, n0:], w.offsets[:, n0:], dense, width, kp, n, **c)
        out = y[:, n0:n0 + width]
        if bias is None:
            torch.mm(x, dense, out=out)
        else:
            torch.addmm(bias[n0:n0 + width], x, dense, out=out)
    return y


def _prepare_x(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    if w.perm is not None:       # GPTQ desc_act: the packed rows were sorted by group at load
        x = x.index_select(1, w.perm)
    return x if x.stride(1) == 1 else x.contiguous()


def packed_matmul_with_config(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None,
                              cfg: PackedConfig | PackedGemvConfig | PackedWideConfig) -> torch.Tensor:
    """``packed_matmul`` with an explicit config (benchmarks, tests); builds the plan on every call."""
    m, k = x.shape
    if isinstance(cfg, PackedConfig) and not cfg.cublas and cfg.block_m <= MAX_DECODE_M and m > MAX_DECODE_M:
        raise ValueError(f"config {cfg} is a decode config; x has {m} rows (decode takes at most {MAX_DECODE_M})")
    plan = _make_plan(m, w.qweight.shape[1], k, w.bits, w.group_size, bias is not None, x.device, cfg)
    return _launch(_prepare_x(x, w), w, bias, plan)


def packed_matmul(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W (+ bias)`` for ``x`` ``[M, K]`` fp16/bf16 (or fp32: no pairs configs) on CUDA and the packed ``W``
    (``reference_matmul``'s definition); the result ``[M, N]`` in ``x.dtype``. Scales/offsets may be fp16, bf16 or
    fp32; ``bias`` ``[N]`` contiguous. The only allocation per call is the output (and ``x[:, perm]`` for a weight
    with ``perm``)."""
    m, k = x.shape
    n = w.qweight.shape[1]
    if m == 0 or n == 0:
        return torch.empty((m, n), dtype=x.dtype, device=x.device)
    key = (_m_bucket(m) if m > 1 else 1, n, k, w.bits, w.group_size, bias is not None, x.device, x.dtype)
    plan = _PLANS.get(key)
    if plan is None:
        if k != w.in_features:
            raise ValueError(f"x has {k} features; the packed weight takes {w.in_features}")
        half_x = x.dtype in (torch.bfloat16, torch.float16)
        plan = _PLANS[key] = _make_plan(m, n, k, w.bits, w.group_size, bias is not None, x.device,
                                        get_config(m, n, k, w.bits, w.group_size, half_x))
    return _launch(_prepare_x(x, w), w, bias, plan)
