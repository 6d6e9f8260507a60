"""The packed int4/int8 matmul for 17..256 rows (``y = x @ W (+ bias)``, W in packed.py's canonical form; 2..16 rows
too with ``triton_packed.WIDE_DECODE``) on the tensor cores, each weight unpacked once per row tile and never written
to global memory.

Why not the two earlier designs (docs/perf.md, sessions 7 and 11): ``_packed_gemm_kernel`` unpacked a
``[BLOCK_K / pack, pack, BLOCK_N]`` tensor and reshaped it to the dot's ``[BLOCK_K, BLOCK_N]`` (a register reshape
Triton lowers through a layout conversion), with an int->float conversion (quarter rate) and a scale and an offset
op per weight, and several row tiles at M = 256 repeating all of it; the decode kernel widened to 256 rows ran
``pack`` dots of K = ``BLOCK_KP`` per tile, each with its own strided x operand. Here:

* **The words load straight into the dot's shape** (GemLite's load): the ``[BLOCK_K, BLOCK_N]`` tile of int32 words
  is loaded with row index ``k // pack`` (each word repeated ``pack`` times along K; L1 serves the repeats), so the
  unpacked tile is already the ``[BLOCK_K, BLOCK_N]`` B operand: no reshape, no join, one dot of K = ``BLOCK_K``.
* **Three ops a weight, the offset included.** A rotate (one funnel shift, ``SHF.L.W``) by a per-row amount puts
  the value's field at bits ``23 - BITS .. 22``; ORed into ``2**23`` (``MAGIC``) that is the float
  ``2**23 + q 2**(23 - BITS)`` with no int->float conversion; one fma with the tile's ``s 2**(BITS - 23)`` and
  ``c = o - 2**BITS s`` gives ``q s + o``. The product is exact inside the fma, and ``c``'s own fp32 rounding is
  ~2**-19 s, far below the bf16/fp16 rounding of the operand, so W needs no offset pass (``o sum(x)``).
  ``s`` and ``c`` are one ``[BLOCK_N]`` row a tile when the tile lies inside one group (AWQ/GPTQ g128), one row
  for the whole matmul (per-channel), or gathered per K row otherwise (any ``group_size`` a multiple of ``pack``).
* **One row tile over all of M where possible** (``BLOCK_M`` 16..256 by M bucket, rows past M masked in a partial
  tile and never stored), ``x`` the dot's A operand from a pipelined load; split-K for the narrow layers, reduced in
  the same kernel by the last program of a tile to arrive (``triton_gemv``'s workspace and counters).

``W_AS_A`` (a candidate, chosen by measurement): the transposed product ``y^T = W^T x^T`` so the unpacked tile is
wgmma's register A operand and ``x`` the shared-memory B operand (no shared-memory store of W), the accumulator
``[BLOCK_N, BLOCK_M]``.

``KPERM`` (with ``W_AS_A``: routed for 17..32 rows, and 7B qkv up to 64, since session 20's H200 probe, e.g. gate_up
at 24 rows 65 µs against 97 for the earlier pick and bf16's 70): why the configs above ran at half
the speed their instruction counts predict (session 12: gate_up 85-96 µs at 24-64 rows). Per K step they spend
0.08-0.16 shared-memory / L1 cycles a weight (128 B a cycle an SM) on top of 0.04-0.06 issue cycles: the
repeated-row words are 4 B of L1 or shared memory a weight, the compact reshape stores W with scalar 2-byte STS,
and W as wgmma's B operand is stored and read again (2 + 2 B a weight). Summed, on the SM holding 3 of gate_up's
296 programs, that is 82-88 µs (measured 85-96). ``KPERM`` loads the compact ``[BLOCK_K / pack, BLOCK_N]`` words
(pipelined, 0.5 B a weight) and runs ``pack`` dots of K = ``BLOCK_K / pack`` a tile, dot ``j`` taking value ``j``
of every word: the unpacked operand keeps the words' own layout (no reshape), and the matching x columns
``k0 + kp * pack + j`` are made contiguous by one copy of x in ``launch`` (``XGATHER``: gathered in the kernel
instead, scalar loads). With ``W_AS_A`` W never touches shared memory: 5.0-6.1 instructions and 0.02-0.07
shared-memory cycles a weight.
``PREFETCH``: the next tile's words in registers during this tile's math, the first tile's before the PDL wait
(statically no better: x then goes through registers; an option for the probe).

Static figures (sm_90 SASS and TTGIR read offline with Triton 3.6's ptxas/nvdisasm, benchmarks/kernels/sass_count.py)
are in the commit history and the helper's report (benchmarks/kernels/wide_sass.py prints them per candidate);
GPU timings: benchmarks/kernels/awq_fused_probe.py.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from pagedllm import envs
from pagedllm.kernels.pdl import pdl_launch_args, pdl_wait
from pagedllm.kernels.quant.packed import SCALE_GATHER, PackedWeight, scale_mode
from pagedllm.kernels.triton_gemv import _workspace

_INTERPRET = envs.TRITON_INTERPRET
_FUSED = not _INTERPRET     # the single-rounding fma (the interpreter's fma rounds twice)
MAGIC = tl.constexpr(0x4B000000)     # 2**23 as float32 bits
TWO23 = tl.constexpr(8388608.0)
MAX_M = 256


class PackedWideConfig(NamedTuple):
    """A launch of ``_packed_wide_kernel``: ``block_m`` rows a tile (M > block_m takes several row tiles),
    ``block_k`` unpacked K a step, ``split_k`` 0: chosen from the shape (about ``_PROGRAMS_PER_SM`` programs an
    SM)."""
    block_m: int = 64
    block_n: int = 128
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 0
    w_as_a: bool = False    # y^T = W^T x^T: the unpacked tile is the register A operand (implies w_nk)
    w_nk: bool = False      # unpack the tile as [block_n, block_k] (K contiguous in a thread's registers)
    compact: bool = False   # load [block_k / pack, block_n] words and reshape in registers (else repeat rows)
    prefetch: bool = False  # registers double-buffered: the next tile's words load before this tile's math, the
    #                         first tile's before the PDL wait (weights are constants)
    kperm: bool = False     # compact words, ``pack`` dots of K = block_k / pack a tile (dot j: value j of every
    #                         word), x's columns permuted per tile to match (block_k / pack >= 16)
    xgather: bool = False   # kperm: x's columns gathered in the kernel (stride pack; no cp.async), not by a copy
    pairs: bool = False     # kperm: the values unpacked two at a time straight into bf16x2 / f16x2 (``_byte_pairs``)
    #                         where the weights are 4-bit and a K tile lies in one group; others as without it


_PROGRAMS_PER_SM = 2
# Rows of x past M in a partial row tile: masked (no load issued) or re-reading row M - 1 (unmasked loads).
# Re-reading sends every program's requests for those rows to the same addresses, so one L2 slice takes them all:
# session 11 measured that in the skinny GEMM (masked 10% faster at M = 2); session 28 saw AWQ pure decode at 160 rows
# 45% slower with 128-row pairs tiles (96 rows re-read). Masked since session 29 (H100, gpu_session28/pairs.sh
# PART=5 / 6): the probe at 160 rows gate_up 305 -> 190 µs, down 214 -> 136; with the 128 / 256-row pairs routes AWQ
# pure decode +27% at 40 rows, +29% at 96, +13% at 160, +6% at 256, ShareGPT +4%. Launches of whole tiles never
# mask. triton_packed's 2..16-row decode kernel has its own switch (DECODE_MASK_PARTIAL_ROWS there, off: masked
# lost 8% of AWQ latency_8x1024x1024).
MASK_PARTIAL_ROWS = True
_P = PackedWideConfig
# Candidates per row tile (the smallest of 32 / 64 / 128 / 256 holding M): the probe
# (benchmarks/kernels/awq_fused_probe.py) times them on an H200. Static sm_90 figures (K loop, instructions a weight,
# BLOCK_N 128, BLOCK_K 64, 4 warps, g128): words through L1 (num_stages 1) 5.3, words pipelined through shared
# memory 6.5 (repeated rows: 4 B of shared memory a weight each way), compact words + register reshape 6.6 (scalar
# 2-byte shared stores of W), W as the register A operand 7.5.
# kperm + w_as_a (the last ones of each bucket; timed on an H200 in session 20: they win at 17..32 rows on all four
# 7B shapes and qkv at 64, lose at 48-128 rows to compact): compact words pipelined, W never in shared memory,
# 5.0-6.1 instructions and 0.02-0.07 shared-memory cycles a weight against 5.3-6.6 and 0.08-0.16 for the configs
# above (benchmarks/kernels/wide_sass.py; its throughput model, which reproduces session 12's gate_up timings within
# ~10-15%, predicts gate_up ~45-55 µs at 24-64 rows and ~70-80 at 128 against the measured 85-96 and 140-161).
_KP = dict(kperm=True, w_as_a=True)
# pairs (session 28): kperm with the values unpacked two at a time into bf16x2 (~2 instructions a weight against
# kperm's 3.5 in the unpack alone), W as the register A operand or (``_KB``) the shared-memory B operand. On an
# H100 (awq_fused_probe.py) they beat kperm at the same tiles by 3-9% and won every 7B shape at 32 rows and three
# of four at 64 (routed there); at 128 / 256 rows they beat dequantize + cuBLAS in the probe (gate_up 136 / 214 µs
# against 231 / 244) but lost 4-6% of AWQ ShareGPT end to end while the rows past M of a partial tile re-read row
# M - 1 (-45% at 160 decode rows); with those rows masked (MASK_PARTIAL_ROWS) they win and gate_up 65..256 and down
# 65..128 are routed to them (session 29).
# Row tiles of 256 (each weight unpacked once at 256 rows) lost every shape and were dropped (one needed more shared
# memory than an SM has at 8 bits).
_KPP = dict(kperm=True, w_as_a=True, pairs=True)
_KB = dict(kperm=True, pairs=True)
# 16-row tiles (session 30; triton_packed.WIDE_DECODE, on since session 31's H100 A/B): 2..16 rows on the pairs
# configs instead of triton_packed's decode kernel (two LOP3s, an fma and a conversion a value there; about two
# instructions a value here). With W as wgmma's A operand x is the dot's N side, so a 16-row tile is a legal wgmma,
# and an 8-row step pays for 16 rows of MMA, cheap next to the unpack. xgather: x's columns gathered in the kernel, so
# no copy of x (a kernel less a call, the PDL overlap with the kernel before kept); yet it was the slowest candidate
# on every 7B shape at 8 rows (H100, session 31: gate_up 82 µs against the copy's 46). The 3-stage twins of the
# table's 2-stage pairs configs at 32 / 64 / 128 rows: 3 stages won every 7B shape at 2..16 rows (H100, session 32:
# down 43.7 -> 33.2 µs at 8 rows); not yet timed at these rows.
CANDIDATES: dict[int, list[PackedWideConfig]] = {
    16: [_P(16, 64, 128, 4, 2, **_KPP), _P(16, 128, 128, 4, 3, **_KPP), _P(16, 64, 128, 4, 2, xgather=True, **_KPP),
         _P(16, 64, 128, 4, 3, **_KPP), _P(16, 128, 128, 8, 2, **_KPP)],
    32: [_P(32, 128, 64, 4, 3), _P(32, 128, 64, 4, 1), _P(32, 128, 64, 4, 3, w_as_a=True),
         _P(32, 64, 128, 4, 3, w_as_a=True), _P(64, 128, 64, 4, 1),
         _P(32, 64, 128, 4, 2, **_KP), _P(32, 128, 128, 4, 3, **_KP), _P(32, 64, 128, 4, 2, xgather=True, **_KP),
         _P(32, 64, 128, 4, 2, **_KPP), _P(32, 128, 128, 4, 3, **_KPP), _P(32, 64, 128, 4, 3, **_KPP)],
    64: [_P(64, 128, 64, 4, 3), _P(64, 128, 64, 4, 1), _P(64, 128, 64, 4, 3, compact=True),
         _P(64, 128, 64, 4, 3, w_as_a=True), _P(64, 64, 128, 4, 2), _P(64, 256, 64, 8, 1),
         _P(64, 128, 128, 4, 3, **_KP), _P(64, 64, 128, 4, 2, **_KP),
         _P(64, 128, 128, 4, 3, **_KPP), _P(64, 64, 128, 4, 2, **_KPP), _P(64, 128, 128, 4, 3, **_KB),
         _P(64, 64, 128, 4, 3, **_KPP)],
    128: [_P(128, 128, 64, 8, 3), _P(128, 128, 64, 8, 1), _P(128, 128, 64, 8, 3, compact=True),
          _P(128, 128, 64, 4, 3, w_as_a=True), _P(64, 128, 64, 4, 1),
          _P(128, 64, 128, 4, 2, **_KP), _P(128, 128, 128, 8, 2, **_KP), _P(64, 128, 128, 4, 3, **_KP),
          _P(128, 64, 128, 4, 2, **_KPP), _P(128, 128, 128, 8, 2, **_KPP), _P(128, 128, 128, 8, 3, **_KB),
          _P(128, 64, 128, 4, 3, **_KPP)],
    256: [_P(256, 64, 64, 8, 3), _P(256, 64, 64, 8, 1), _P(128, 128, 64, 8, 3), _P(128, 128, 64, 8, 1),
          _P(256, 128, 64, 8, 1), _P(128, 128, 64, 4, 3, w_as_a=True),
          _P(128, 64, 128, 4, 2, **_KP), _P(128, 128, 128, 8, 2, **_KP),
          _P(128, 128, 128, 8, 2, **_KPP)],
}


def row_bucket(m: int) -> int:
    return 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128 if m <= 128 else 256


@triton.jit
def tile_cols(offs_n, N, EVEN_N: tl.constexpr):
    """A column tile's indices for unmasked loads. ``EVEN_N`` (N a multiple of the tile): the indices themselves,
    whose contiguity Triton proves, so words load 16 B a thread and the dequantize kernel's stores need no layout
    conversion through shared memory (sm_90 SASS, session 20: LDG.E.128 instead of 16 scalar LDG.E a thread, 2
    scalar shared stores instead of 130). Else clamped into the matrix (loads stay unmasked, stores are masked):
    a clamped index has no contiguity Triton can prove, so the ragged case loads one word at a time."""
    if EVEN_N:
        return offs_n
    return tl.where(offs_n < N, offs_n, 0)


@triton.jit
def _field_float(words, rot, BITS: tl.constexpr, ASM: tl.constexpr):
    """``words`` rotated left by ``rot`` (1..31, broadcast to ``words``' shape), the field at bits
    ``23 - BITS .. 22`` kept and ORed into ``2**23``: the float ``2**23 + q 2**(23 - BITS)``. ``ASM``: one funnel
    shift and one LOP3 (Triton's shifts compile to two shifts and an OR, and ``(v & field) | magic`` to two LOP3s
    because a LOP3 takes one immediate)."""
    FIELD: tl.constexpr = ((1 << BITS) - 1) << (23 - BITS)
    words, rot = tl.broadcast(words, rot)
    if ASM:
        if BITS == 4:
            return tl.inline_asm_elementwise(
                "{ .reg .b32 t; shf.l.wrap.b32 t, $1, $1, $2; lop3.b32 $0, t, 0x00780000, 0x4B000000, 0xEA; }",
                "=r,r,r", [words, rot], dtype=tl.float32, is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise(
                "{ .reg .b32 t; shf.l.wrap.b32 t, $1, $1, $2; lop3.b32 $0, t, 0x007F8000, 0x4B000000, 0xEA; }",
                "=r,r,r", [words, rot], dtype=tl.float32, is_pure=True, pack=1)
    else:
        u = words.to(tl.uint32, bitcast=True)
        v = ((u << rot) | (u >> (32 - rot))) & FIELD
        return (v | MAGIC).to(tl.float32, bitcast=True)


@triton.jit
def _byte_pairs(words, sp, op, I: tl.constexpr, ASM: tl.constexpr):
    """Values ``2 I`` and ``2 I + 1`` (byte ``I``'s two fields) of each 4-bit word as ``q s + o`` in the dtype of
    ``sp`` / ``op`` (the raw scale and offset, bf16 or fp16, broadcast to ``words``' shape).

    With ``ASM`` two words at a time (``pack=2``: the elements a thread holds side by side, the pairs its s and o
    halves match): one PRMT gathers byte ``I`` of both into bytes 0 and 2, one LOP3 ORs the low fields into the
    bf16 / fp16 of 128 / 1024 (``0x4300`` / ``0x6400``: the field lands in the mantissa's ulp-1 bits), a shift and
    a second LOP3 do the same for the high fields; one exact SUB2 takes the 128 / 1024 off and one FMA2 gives
    ``q s + o`` rounded once. About two instructions a weight, against the fp32 path's three and a half (funnel
    shift, LOP3, fma, half a conversion), and no int -> float conversion."""
    if ASM:
        SEL: tl.constexpr = ((4 + I) << 12) | ((4 + I) << 8) | (I << 4) | I
        if sp.dtype == tl.bfloat16:
            return tl.inline_asm_elementwise(
                "{ .reg .b32 t, u, q0, q1, m; mov.b32 m, 0x43004300;"
                f" prmt.b32 t, $2, $3, {SEL};"
                " lop3.b32 q0, t, 0x000F000F, 0x43004300, 0xEA; shr.u32 u, t, 4;"
                " lop3.b32 q1, u, 0x000F000F, 0x43004300, 0xEA;"
                " sub.rn.bf16x2 q0, q0, m; sub.rn.bf16x2 q1, q1, m;"
                " fma.rn.bf16x2 $0, q0, $4, $5; fma.rn.bf16x2 $1, q1, $4, $5; }",
                "=r,=r,r,r,r,r", [words, sp, op], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=2)
        else:
            return tl.inline_asm_elementwise(
                "{ .reg .b32 t, u, q0, q1, m; mov.b32 m, 0x64006400;"
                f" prmt.b32 t, $2, $3, {SEL};"
                " lop3.b32 q0, t, 0x000F000F, 0x64006400, 0xEA; shr.u32 u, t, 4;"
                " lop3.b32 q1, u, 0x000F000F, 0x64006400, 0xEA;"
                " sub.rn.f16x2 q0, q0, m; sub.rn.f16x2 q1, q1, m;"
                " fma.rn.f16x2 $0, q0, $4, $5; fma.rn.f16x2 $1, q1, $4, $5; }",
                "=r,=r,r,r,r,r", [words, sp, op], dtype=(tl.float16, tl.float16), is_pure=True, pack=2)
    # the interpreter: the same values (q s exact in fp32, + o exact here, one rounding to x's dtype)
    q_lo = ((words >> (8 * I)) & 15).to(tl.float32)
    q_hi = ((words >> (8 * I + 4)) & 15).to(tl.float32)
    s = sp.to(tl.float32)
    o = op.to(tl.float32)
    return (q_lo * s + o).to(sp.dtype), (q_hi * s + o).to(sp.dtype)


@triton.jit
def _packed_wide_kernel(X, QW, S, O, B, Y, WS, Locks, M, N, K, K_PER_SPLIT, stride_xm, stride_ym,
                        BITS: tl.constexpr, GROUP: tl.constexpr, SCALE_MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
                        EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, SPLIT_K: tl.constexpr, W_AS_A: tl.constexpr,
                        W_NK: tl.constexpr, COMPACT: tl.constexpr, PREFETCH: tl.constexpr,
                        KPERM: tl.constexpr, XGATHER: tl.constexpr, PAIRS: tl.constexpr, X_MASKED: tl.constexpr,
                        FUSED: tl.constexpr, ASM: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    PACK: tl.constexpr = 32 // BITS
    BLOCK_KP: tl.constexpr = BLOCK_K // PACK
    SCALE: tl.constexpr = 1.0 / (1 << (23 - BITS))
    BIAS2: tl.constexpr = 1 << BITS                               # 2**23 * SCALE
    XSTEP: tl.constexpr = 1 if XGATHER else BLOCK_KP                # KPERM: x's columns of dot j + 1 after dot j's
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = offs_m < M
    if X_MASKED:     # rows >= M not read (masked, zero-filled); never stored
        rows = offs_m
    else:            # rows >= M re-read row M - 1 (no mask); never stored
        rows = tl.minimum(offs_m, M - 1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tile_cols(offs_n, N, EVEN_N)
    if XGATHER:   # dot j's x: columns k0 + kp * PACK + j of x as it is
        offs_k = tl.arange(0, BLOCK_KP) * PACK
    elif KPERM:   # x is loaded BLOCK_KP columns (one dot) at a time, from launch()'s permuted copy
        offs_k = tl.arange(0, BLOCK_KP)
    else:
        offs_k = tl.arange(0, BLOCK_K)
    k_start = pid_k * K_PER_SPLIT
    # value j = k % PACK of a word sits at bits BITS*j..; rotating left by 23 - BITS - BITS*j (mod 32, never 0
    # since 23 - BITS is odd) moves it to 23 - BITS .. 22
    if COMPACT:
        rot = ((55 - BITS - BITS * tl.arange(0, PACK)) % 32).to(tl.uint32)
        offs_kw = k_start // PACK + tl.arange(0, BLOCK_KP)
    else:
        rot = ((55 - BITS - BITS * (offs_k % PACK)) % 32).to(tl.uint32)
        offs_kw = (k_start + offs_k) // PACK
    s_one = tl.zeros((BLOCK_N,), dtype=tl.float32)
    c_one = s_one
    if SCALE_MODE == 2:
        s_raw = tl.load(S + cols)
        s_one = s_raw.to(tl.float32)
        o_raw = tl.load(O + cols)
        c_one = o_raw.to(tl.float32) - BIAS2 * s_one
        s_one = s_one * SCALE
    if W_NK:
        if COMPACT:
            rot2 = rot[None, None, :]
        else:
            rot2 = rot[None, :]
        w_ptrs = QW + offs_kw.to(tl.int64)[None, :] * N + cols[:, None]          # [BN, BK or BKP]
    else:
        if COMPACT:
            rot2 = rot[None, :, None]
        else:
            rot2 = rot[:, None]
        w_ptrs = QW + offs_kw.to(tl.int64)[:, None] * N + cols[None, :]          # [BK or BKP, BN]
    if W_AS_A:
        x_ptrs = X + rows.to(tl.int64)[None, :] * stride_xm + (k_start + offs_k)[:, None]        # [BK, BM]
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        x_ptrs = X + rows.to(tl.int64)[:, None] * stride_xm + (k_start + offs_k)[None, :]        # [BM, BK]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PREFETCH:     # the first tile's words while the previous kernel still runs (PDL); K_PER_SPLIT >= BLOCK_K
        k_end = tl.minimum(K, k_start + K_PER_SPLIT)
        nxt = _load_words(w_ptrs, k_start, k_end, offs_k, EVEN_K, W_NK, COMPACT, PACK, BLOCK_KP)
    pdl_wait(PDL)
    for k_rel in range(0, K_PER_SPLIT, BLOCK_K):
        k0 = k_start + k_rel
        if PREFETCH:
            words = nxt
            # rows of the next tile past this split (or K) are masked: no read of another split's tile
            nxt = _load_words(w_ptrs + BLOCK_KP * N, k0 + BLOCK_K, k_end, offs_k, False, W_NK, COMPACT, PACK,
                              BLOCK_KP)
        else:
            words = _load_words(w_ptrs, k0, K, offs_k, EVEN_K, W_NK, COMPACT, PACK, BLOCK_KP)
        kmask = (k0 + offs_k) < K
        x = load_x_tile(x_ptrs, kmask, mmask, EVEN_K, X_MASKED, W_AS_A)
        if PAIRS:
            # As KPERM below, the values of a byte two dots at a time, each weight q s + o in x's dtype from the
            # raw scale and offset (one rounding, as the fp32 path's fma then conversion)
            if SCALE_MODE == 2:
                sp = s_raw
                op = o_raw
            else:
                sp, op = _group_row(S, O, k0, K, cols, N, GROUP, EVEN_K)
            if W_AS_A:
                sp = tl.broadcast_to(sp.to(X.dtype.element_ty)[:, None], words.shape)
                op = tl.broadcast_to(op.to(X.dtype.element_ty)[:, None], words.shape)
            else:
                sp = tl.broadcast_to(sp.to(X.dtype.element_ty)[None, :], words.shape)
                op = tl.broadcast_to(op.to(X.dtype.element_ty)[None, :], words.shape)
            for i in tl.static_range(PACK // 2):
                w_lo, w_hi = _byte_pairs(words, sp, op, i, ASM)
                if i > 0:
                    x = load_x_tile(x_ptrs + (2 * i) * XSTEP, kmask, mmask, EVEN_K, X_MASKED, W_AS_A)
                if W_AS_A:
                    acc = tl.dot(w_lo, x, acc)
                else:
                    acc = tl.dot(x, w_lo, acc)
                x = load_x_tile(x_ptrs + (2 * i + 1) * XSTEP, kmask, mmask, EVEN_K, X_MASKED, W_AS_A)
                if W_AS_A:
                    acc = tl.dot(w_hi, x, acc)
                else:
                    acc = tl.dot(x, w_hi, acc)
        else:
            # the tile's scale s * 2**(BITS - 23) and c = o - 2**BITS s, broadcast along K
            if SCALE_MODE == 2:
                s = s_one
                c = c_one
            elif SCALE_MODE == 1:
                s, o = _group_row(S, O, k0, K, cols, N, GROUP, EVEN_K)
                s = s.to(tl.float32)
                c = o.to(tl.float32) - BIAS2 * s
                s = s * SCALE
            if SCALE_MODE == 0:
                if KPERM:     # gathered per dot below
                    s = s_one
                    c = c_one
                else:
                    s, c = _gathered_scales(S, O, k0 + offs_k, cols, N, K, GROUP, BIAS2, SCALE, W_NK)
            elif W_NK:
                s = s[:, None]
                c = c[:, None]
            else:
                s = s[None, :]
                c = c[None, :]
            if KPERM:
                # Dot j multiplies value j of every word ([BKP, BN] in the words' own layout: no reshape, and the W
                # tile's shared-memory store keeps the words' vector width along N) by x's columns
                # k0 + kp * PACK + j, which launch() placed at k0 + j * BKP + kp.
                for j in tl.static_range(PACK):
                    if SCALE_MODE == 0:
                        sj, cj = _gathered_scales(S, O, k0 + tl.arange(0, BLOCK_KP) * PACK + j, cols, N, K, GROUP,
                                                  BIAS2, SCALE, W_AS_A)
                    else:
                        sj = s
                        cj = c
                    if j > 0:
                        x = load_x_tile(x_ptrs + j * XSTEP, kmask, mmask, EVEN_K, X_MASKED, W_AS_A)
                    wf = _field_float(words, tl.full((1, 1), (55 - BITS - BITS * j) % 32, tl.uint32), BITS, ASM)
                    wj = _scaled(wf, sj, cj, BIAS2, SCALE, FUSED)
                    if W_AS_A:     # wj [BN, BKP]: the register A operand
                        acc = tl.dot(wj.to(X.dtype.element_ty), x, acc)
                    else:
                        acc = tl.dot(x, wj.to(X.dtype.element_ty), acc)
            else:
                if COMPACT:      # [BKP, PACK, BN] (or [BN, BKP, PACK]) reshaped: k = kp * PACK + j
                    if W_NK:
                        wf = tl.reshape(_field_float(words[:, :, None], rot2, BITS, ASM), (BLOCK_N, BLOCK_K))
                    else:
                        wf = tl.reshape(_field_float(words[:, None, :], rot2, BITS, ASM), (BLOCK_K, BLOCK_N))
                else:
                    wf = _field_float(words, rot2, BITS, ASM)
                w = _scaled(wf, s, c, BIAS2, SCALE, FUSED).to(X.dtype.element_ty)
                if W_AS_A:      # W_NK too
                    acc = tl.dot(w, x, acc)
                elif W_NK:
                    acc = tl.dot(x, tl.trans(w), acc)
                else:
                    acc = tl.dot(x, w, acc)
        w_ptrs += BLOCK_KP * N
        x_ptrs += BLOCK_K
    if W_AS_A:
        tile_offs = tl.arange(0, BLOCK_N)[:, None] * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]
    else:
        tile_offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    TILE: tl.constexpr = BLOCK_M * BLOCK_N
    if SPLIT_K > 1:
        # As triton_gemv: partial tiles to the workspace, the last program of an output tile to arrive sums them in
        # split order, writes y and resets the tile's counter for the next launch (or graph replay).
        tile = pid_m * tl.num_programs(0) + pid_n
        n_tiles = tl.num_programs(0) * tl.num_programs(2)
        tl.store(WS + (pid_k * n_tiles + tile).to(tl.int64) * TILE + tile_offs, acc)
        tl.debug_barrier()
        count = tl.atomic_add(Locks + tile, 1, sem="acq_rel", scope="gpu")
        if count == SPLIT_K - 1:
            acc = tl.load(WS + tile.to(tl.int64) * TILE + tile_offs, cache_modifier=".cg")
            for sk in tl.static_range(1, SPLIT_K):
                acc += tl.load(WS + (sk * n_tiles + tile).to(tl.int64) * TILE + tile_offs, cache_modifier=".cg")
            _epilogue(acc, B, Y, cols, offs_m, offs_n, M, N, stride_ym, HAS_BIAS, W_AS_A)
            tl.atomic_xchg(Locks + tile, 0, sem="relaxed", scope="gpu")
    else:
        _epilogue(acc, B, Y, cols, offs_m, offs_n, M, N, stride_ym, HAS_BIAS, W_AS_A)


@triton.jit
def _load_words(w_ptrs, k0, k_end, offs_k, EVEN: tl.constexpr, W_NK: tl.constexpr, COMPACT: tl.constexpr,
                PACK: tl.constexpr, BLOCK_KP: tl.constexpr):
    """The word tile of unpacked rows ``k0 ..`` (``w_ptrs`` already there); rows at or past ``k_end`` read 0 unless
    ``EVEN`` (the whole tile inside)."""
    if EVEN:
        words = tl.load(w_ptrs)
    else:
        if COMPACT:
            wmask = (k0 // PACK + tl.arange(0, BLOCK_KP)) < k_end // PACK
        else:
            wmask = (k0 + offs_k) < k_end
        if W_NK:
            words = tl.load(w_ptrs, mask=wmask[None, :], other=0)
        else:
            words = tl.load(w_ptrs, mask=wmask[:, None], other=0)
    return words


@triton.jit
def load_x_tile(x_ptrs, kmask, mmask, EVEN_K: tl.constexpr, X_MASKED: tl.constexpr, W_AS_A: tl.constexpr):
    """An x tile ([BK, BM] for W_AS_A, else [BM, BK]); K columns past ``kmask`` read 0 unless ``EVEN_K``, and rows
    past ``mmask`` too with ``X_MASKED``."""
    if W_AS_A:
        km = kmask[:, None]
        mm = mmask[None, :]
    else:
        km = kmask[None, :]
        mm = mmask[:, None]
    if EVEN_K:
        if X_MASKED:
            x = tl.load(x_ptrs, mask=mm, other=0.0)
        else:
            x = tl.load(x_ptrs)
    elif X_MASKED:
        x = tl.load(x_ptrs, mask=km & mm, other=0.0)
    else:
        x = tl.load(x_ptrs, mask=km, other=0.0)
    return x


@triton.jit
def _group_row(S, O, k0, K, cols, N, GROUP: tl.constexpr, EVEN_K: tl.constexpr):
    """The scale and offset rows (as stored) of the group holding unpacked row ``k0``; unless ``EVEN_K``, a tile
    wholly past K (the last split's) reads 0: there is no group there, and 0 times garbage may be NaN."""
    g = k0 // GROUP
    if EVEN_K:
        s = tl.load(S + g * N + cols)
        o = tl.load(O + g * N + cols)
    else:
        s = tl.load(S + g * N + cols, mask=k0 < K, other=0.0)
        o = tl.load(O + g * N + cols, mask=k0 < K, other=0.0)
    return s, o


@triton.jit
def _gathered_scales(S, O, kidx, cols, N, K, GROUP: tl.constexpr, BIAS2: tl.constexpr, SCALE: tl.constexpr,
                     NK: tl.constexpr):
    """The scale ``s 2**(BITS - 23)`` and addend ``c = o - 2**BITS s`` of each unpacked row ``kidx`` (groups smaller
    than a K tile), as ``[BN, len(kidx)]`` (``NK``) or ``[len(kidx), BN]``."""
    g = tl.minimum(kidx, K - 1) // GROUP
    if NK:
        ptrs = g[None, :] * N + cols[:, None]
    else:
        ptrs = g[:, None] * N + cols[None, :]
    s = tl.load(S + ptrs).to(tl.float32)
    c = tl.load(O + ptrs).to(tl.float32) - BIAS2 * s
    return s * SCALE, c


@triton.jit
def _scaled(wf, s, c, BIAS2: tl.constexpr, SCALE: tl.constexpr, FUSED: tl.constexpr):
    """``q s + o`` from ``_field_float``'s ``2**23 + q 2**(23 - BITS)``: one fma (one rounding), or the same in two
    steps where fma rounds twice (the interpreter)."""
    if FUSED:
        w = tl.fma(wf, s, c)
    else:
        w = (wf - TWO23) * s + (c + BIAS2 * (s / SCALE))
    return w


@triton.jit
def _epilogue(acc, B, Y, cols, offs_m, offs_n, M, N, stride_ym, HAS_BIAS: tl.constexpr, W_AS_A: tl.constexpr):
    if W_AS_A:
        if HAS_BIAS:
            acc += tl.load(B + cols).to(tl.float32)[:, None]
        y_ptrs = Y + offs_m.to(tl.int64)[None, :] * stride_ym + offs_n[:, None]
        tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=(offs_n[:, None] < N) & (offs_m[None, :] < M))
    else:
        if HAS_BIAS:
            acc += tl.load(B + cols).to(tl.float32)[None, :]
        y_ptrs = Y + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
        tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


class WidePlan(NamedTuple):
    grid: tuple[int, int, int]
    k_per_split: int
    ws_elems: int
    n_tiles: int
    constexprs: dict


def pairs_apply(cfg: PackedWideConfig, k: int, bits: int, group_size: int) -> bool:
    """Whether a kperm config's pairs unpack applies to this weight: 4-bit, K in whole K tiles (kperm's own rule)
    and each K tile inside one group (one scale row a tile; gathered scales take the per-value path)."""
    return bits == 4 and k % cfg.block_k == 0 and scale_mode(group_size, k, cfg.block_k, 8) != SCALE_GATHER


@functools.lru_cache(maxsize=1024)
def make_plan(m: int, n: int, k: int, bits: int, group_size: int, has_bias: bool, num_sms: int,
              cfg: PackedWideConfig) -> WidePlan:
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if cfg.block_m < 16 or cfg.block_n < 16 or cfg.block_k < 16:
        raise ValueError(f"config {cfg}: block_m, block_n and block_k must be at least 16 (tensor-core tiles)")
    pack = 32 // bits
    block_k = cfg.block_k
    if (cfg.xgather or cfg.pairs) and not cfg.kperm:
        raise ValueError(f"config {cfg}: xgather and pairs are options of kperm")
    if cfg.kperm and ((cfg.w_nk and not cfg.w_as_a) or k % block_k or block_k // pack < 16):
        raise ValueError(f"config {cfg}: kperm needs K ({k}) a multiple of block_k, block_k / {pack} >= 16 (a "
                         f"tensor-core dot's K) and no w_nk without w_as_a")
    grid_m = triton.cdiv(m, cfg.block_m)
    grid_n = triton.cdiv(n, cfg.block_n)
    k_tiles = triton.cdiv(k, block_k)
    split_k = cfg.split_k
    if split_k == 0:   # about _PROGRAMS_PER_SM programs an SM, each split at least four K tiles
        split_k = max(1, min(triton.cdiv(_PROGRAMS_PER_SM * num_sms, grid_m * grid_n), k_tiles // 4, 16))
    tiles_per_split = triton.cdiv(k_tiles, max(1, min(split_k, k_tiles)))
    split_k = triton.cdiv(k_tiles, tiles_per_split)            # no empty split
    n_tiles = grid_m * grid_n
    constexprs = dict(BITS=bits, GROUP=group_size, SCALE_MODE=scale_mode(group_size, k, block_k, pack),
                      HAS_BIAS=has_bias, EVEN_K=k % block_k == 0 and k_tiles % tiles_per_split == 0,
                      EVEN_N=n % cfg.block_n == 0,
                      SPLIT_K=split_k, W_AS_A=cfg.w_as_a, W_NK=cfg.w_nk or cfg.w_as_a,
                      COMPACT=cfg.compact or cfg.kperm,
                      PREFETCH=cfg.prefetch, KPERM=cfg.kperm, XGATHER=cfg.kperm and cfg.xgather,
                      PAIRS=cfg.kperm and cfg.pairs and pairs_apply(cfg, k, bits, group_size),
                      X_MASKED=MASK_PARTIAL_ROWS and m % cfg.block_m != 0,
                      FUSED=_FUSED, ASM=_FUSED, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                      BLOCK_K=block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    ws_elems = split_k * n_tiles * cfg.block_m * cfg.block_n if split_k > 1 else 0
    return WidePlan((grid_n, split_k, grid_m), tiles_per_split * block_k, ws_elems, n_tiles, constexprs)


def launch(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None, plan: WidePlan) -> torch.Tensor:
    """``x`` contiguous along K (``perm`` already applied); the result ``[M, N]`` in ``x.dtype``."""
    m, k = x.shape
    n = w.qweight.shape[1]
    constexprs = plan.constexprs
    if constexprs["KPERM"] and not constexprs["XGATHER"]:     # each K tile's columns in the kernel's order (a copy)
        pack = 32 // constexprs["BITS"]
        x = x.unflatten(1, (k // constexprs["BLOCK_K"], constexprs["BLOCK_K"] // pack, pack)).transpose(2, 3)
        x = x.reshape(m, k)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    b = bias if bias is not None else y
    ws = locks = y
    if constexprs["SPLIT_K"] > 1:
        buffers = _workspace(x.device, plan.ws_elems, plan.n_tiles)
        if buffers is None:         # inside a CUDA-graph capture that would need a bigger workspace: one split
            grid = (plan.grid[0], 1, plan.grid[2])
            constexprs = dict(constexprs, SPLIT_K=1, EVEN_K=k % constexprs["BLOCK_K"] == 0)
            _packed_wide_kernel[grid](x, w.qweight, w.scales, w.offsets, b, y, y, y, m, n, k, k, x.stride(0),
                                      y.stride(0), **constexprs, **pdl_launch_args(x.device))
            return y
        ws, locks = buffers
    _packed_wide_kernel[plan.grid](x, w.qweight, w.scales, w.offsets, b, y, ws, locks, m, n, k, plan.k_per_split,
                                   x.stride(0), y.stride(0), **constexprs, **pdl_launch_args(x.device))
    return y
