"""The int4 weight-only matmul at ``M == 1`` (decode at batch 1): ``y = x @ W (+ bias)``, W in packed.py's canonical
form, streamed at close to HBM speed.

At batch 1 every weight is read once and used once, so the kernel is a race between the HBM read (0.5 B a weight)
and the instructions issued per weight (an H200 issues ~33 T thread-instructions/s: at 4 TB/s of int4 that is ~4
instructions a weight). ``triton_packed``'s ``_packed_decode_kernel`` compiles to ~7 instructions a weight on sm_90
(SASS read offline with Triton's ptxas/nvdisasm: two LOP3s per value, because ``(w & field) | magic`` needs two
immediates; scalar 4-byte word loads once the column index is clamped; x moved through shared memory every tile).
This kernel is built for the count:

* **Words as 16-byte vectors.** A ``[BLOCK_KP, BLOCK_N]`` tile of ``qweight`` (N contiguous) is loaded with column
  masks only on a ragged last column tile (``EVEN_N``), never clamped, so each thread reads 4 consecutive columns
  of a packed row in one LDG.128. ``NSUB = 2`` loads a second sub-tile ``BLOCK_N`` columns further on: the same
  threads hold the same packed rows twice, so each ``x`` value loaded and converted serves 8 columns instead of 4.
* **One LOP3 per value** (``ASM``): ``lop3.b32 v, word, field, 0x4B000000, (a & b) | c`` puts the 4-bit field
  into the mantissa of ``2**23`` (``2**23 + q 2**p``); one exact FFMA (``* 2**-p - 2**(23 - p)``) makes it ``q``
  and one FFMA multiplies by ``x`` into the tile's partial sum: 3 instructions a weight. Fields above bit 19 come
  from one shift of the word by 12. Without ``ASM`` (the Triton interpreter, or as a fallback) the same field is
  taken with Triton's ``&`` and ``|`` (two LOP3s).
* **The group scale once a tile, the offset never per weight.** A tile never straddles a group (``BLOCK_KP * 8``
  divides ``group_size``; the launcher halves ``BLOCK_KP`` until it does), so the partial ``sum_j q_j x_j`` of a
  packed row is scaled once: ``acc += part * s + o * sum_j x_j`` (2 FFMAs per word, 1/4 an instruction a weight).
  The math is ``reference_matmul``'s: products and sums in fp32, ``q`` exact.
* **Registers double-buffered** (``PREFETCH``): the next tile's words and scales are loaded before this tile's
  math, the first tile before the PDL wait (weights are constants).
* **L2 prefetch ahead** (``L2_AHEAD`` tiles, session 16, not yet measured): one ``prefetch.global.L2`` per 128-byte
  line of the tile ``L2_AHEAD`` tiles ahead (the first ``L2_AHEAD`` before the PDL wait), so more bytes are in
  flight per SM than the register double-buffer holds (the 7B configs run at 1.5-2.0 TB/s, session 7, with
  ``prefetch`` off where its 255 registers did not pay) and the demand loads find their lines in L2.
* **f16x2 products** (``HALF``, session 19): ``w & 0x000F000F`` *is* two fp16 subnormals, ``q 2**-24`` exactly
  (``w & 0x00F000F0``: ``16 q 2**-24``, against x halves pre-divided by 16), so one LOP3 and one HFMA2 take two
  weights and the sums of four are fp16; each word's two halves go to fp32 (two HADD2.F32 and an FADD) before the
  group scale. x is scaled by a power of two per program (its split's largest ``|x|`` to [2**14, 2**15): exact, no
  overflow, products normal down to 2**-5 of the largest) and the result scaled back. 2.5-3.4 instructions a weight
  (SASS, sm_90) against 4.3-5.0; error ~6e-4 of the output's norm against the fp32 path's output rounding
  (tests: ``HALF_TOL``). The scale pass costs a dependent x load after the PDL wait, which the short-K-per-program
  shapes (qkv, o) could not hide (docs/perf.md, session 19); ``half=2`` scales each packed row by its own 8 values
  instead (no pass; ~8 more instructions a row, one FMUL a word folding ``2**24 / scale`` into the group scale),
  with rows whose largest ``|x|`` exceeds 2**117 out of range (inf).
* **Scales tile-shaped** (``SO_TILE``): the group's scale / offset row loaded as ``[BLOCK_KP, BLOCK_N]`` (the same
  row per packed row, from L1) in the words' layout, instead of a ``[BLOCK_N]`` vector that Triton converts
  through shared memory (two barriers each) every tile.
* **Pipelined through shared memory** (``stages`` > 1, session 19; in session 20's H200 sweep no such candidate won
  a shape, every pick has ``stages=1``): the K loop is a
  ``tl.range`` whose ``num_stages`` lets Triton's pipeliner copy the words (and scale rows) ``stages - 1`` tiles
  ahead with cp.async (LDGSTS), so more bytes are in flight per SM without the register prefetch's copies; with
  ``stages == 1`` the kernel compiles to the same SASS as the plain ``range`` loop (checked offline).
* **Split-K** sized for a few programs per SM; partials reduced in the same kernel by the last program of a column
  tile to arrive (``triton_gemv``'s workspace and counters: no memset, no second kernel, deterministic).

SASS for sm_90 counted offline (Triton 3.6's ptxas + nvdisasm, no GPU; the K loop of the 7B configs, instructions
per weight): ``BLOCK_N=128, BLOCK_KP=16``, 4 warps: 5.0 with ``NSUB = 1`` (4.8 without the prefetch's register
copies), 4.5 with ``NSUB = 2`` (255 registers, no spills; 4.3 and 128 registers without the prefetch), 5.5 with
``NSUB = 2`` and ``ASM`` off; the old decode kernel's M = 1 config: 7.25 (2 LOP3s and an FMUL of the scale per
value). Counted with benchmarks/kernels/sass_count.py. GPU timings: docs/perf.md.

Configs (``PackedGemvConfig``) are chosen per shape in ``triton_packed.M1_TABLE``; a ``PackedConfig`` there keeps
the old kernel. ``benchmarks/quant_kernels.py --gemv`` sweeps ``GEMV_CANDIDATES``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from pagedllm import envs
from pagedllm.kernels.pdl import pdl_launch_args, pdl_wait
from pagedllm.kernels.quant.packed import PackedWeight
from pagedllm.kernels.triton_gemv import _workspace, prefetch_l2

_INTERPRET = envs.TRITON_INTERPRET
MAGIC = tl.constexpr(0x4B000000)     # 2**23 as float32 bits


class PackedGemvConfig(NamedTuple):
    block_n: int = 128       # columns of a sub-tile (4 per thread, 32 threads along N)
    block_kp: int = 16       # packed rows (8 values each) of a tile; halved until 8 * block_kp divides group_size
    nsub: int = 1            # 1 or 2 column sub-tiles sharing the x values of a thread
    num_warps: int = 4
    prefetch: bool = True    # load the next tile before this tile's math
    asm: bool = True         # one lop3 per value (inline PTX); False: Triton's & and | (the interpreter's path)
    xvec: bool = False       # x as one [BLOCK_KP, 8] load split in registers instead of 8 strided loads
    split_k: int = 0         # 0: from the shape (about PROGRAMS_PER_SM programs an SM)
    l2_ahead: int = 0        # > 0: L2 prefetch of the tile that many tiles ahead (no registers held; docstring)
    half: int = 0            # f16x2 products (HFMA2), x scaled by a power of 2: 1 per program, 2 per packed row
    so_tile: bool = False    # scales / offsets loaded tile-shaped (no per-tile layout conversion through smem)
    stages: int = 1          # > 1: Triton's pipeliner streams the words (and scales) stages - 1 tiles ahead through
                             # shared memory (cp.async): more bytes in flight, no registers held (use prefetch=False)


PROGRAMS_PER_SM = 4
X_SCALE_BLOCK = 4096     # most x values the half path's scale pass loads at once (32 a thread at 4 warps)
DEFAULT = PackedGemvConfig()
# What benchmarks/quant_kernels.py --gemv sweeps (and tests/gpu checks): few, so that compiling them all fits a
# 5-minute GPU call.
GEMV_CANDIDATES: list[PackedGemvConfig] = [
    PackedGemvConfig(128, 16, 1, 4),
    PackedGemvConfig(128, 16, 2, 4),
    PackedGemvConfig(128, 16, 2, 4, prefetch=False),
    PackedGemvConfig(128, 8, 2, 4),
    PackedGemvConfig(128, 16, 2, 8),
    PackedGemvConfig(128, 16, 1, 4, prefetch=False),
    PackedGemvConfig(128, 16, 2, 4, xvec=True),
    PackedGemvConfig(128, 16, 2, 4, asm=False),
    # the L2 prefetch ahead (session 16; no gain on an H100 in session 19, kept as one candidate)
    PackedGemvConfig(128, 16, 2, 4, xvec=True, l2_ahead=4),
    # f16x2 products (session 19), scales loaded tile-shaped (so_tile), one scale a program (half=1) or a packed row
    # (half=2); the first three are the H100 sweep's picks (docs/perf.md, session 19)
    PackedGemvConfig(128, 16, 1, 4, xvec=True, half=1, so_tile=True),
    PackedGemvConfig(128, 16, 1, 4, xvec=True, half=2, so_tile=True),
    PackedGemvConfig(128, 16, 1, 4, half=2, so_tile=True),
    PackedGemvConfig(128, 16, 1, 4, half=1, so_tile=True),
    PackedGemvConfig(128, 16, 2, 4, prefetch=False, half=1),
    PackedGemvConfig(128, 16, 2, 4, prefetch=False, half=2),
    PackedGemvConfig(128, 16, 2, 4, prefetch=False, half=1, xvec=True, split_k=32),
    # the words streamed through shared memory by Triton's pipeliner (session 19; no shape's pick on the H200, session 20)
    PackedGemvConfig(128, 16, 1, 4, prefetch=False, xvec=True, half=1, stages=3),
    PackedGemvConfig(128, 16, 1, 4, prefetch=False, half=2, so_tile=True, stages=3),
    PackedGemvConfig(128, 16, 1, 4, prefetch=False, xvec=True, half=1, stages=4),
    PackedGemvConfig(128, 16, 2, 4, prefetch=False, half=1, stages=3),
    PackedGemvConfig(128, 16, 1, 4, prefetch=False, xvec=True, half=1, so_tile=True, stages=3),
]


def supports(w: PackedWeight) -> bool:
    """Weights this kernel takes: 4-bit, groups a whole number of packed rows (``perm`` is the caller's)."""
    return w.bits == 4 and w.group_size % 8 == 0


@triton.jit
def _field_as_float(words, FIELD: tl.constexpr, ASM: tl.constexpr):
    """``2**23 + (words & FIELD)`` as float32 (FIELD below bit 23): the field ORed into 2**23's mantissa."""
    if ASM:
        v = tl.inline_asm_elementwise(
            "lop3.b32 $0, $1, $2, $3, 0xea;", "=r,r,r,r",      # 0xea: (a & b) | c
            [words, tl.full(words.shape, FIELD, tl.int32), tl.full(words.shape, MAGIC, tl.int32)],
            dtype=tl.int32, is_pure=True, pack=1)
    else:
        v = (words & FIELD) | MAGIC
    return v.to(tl.float32, bitcast=True)


@triton.jit
def _value(words, words_hi, j: tl.constexpr, ASM: tl.constexpr):
    """Value ``j`` (bits 4j..4j+3) of each word as an exact float32."""
    if 4 * j + 4 <= 23:
        P: tl.constexpr = 4 * j
        wf = _field_as_float(words, 15 << P, ASM)
    else:
        P: tl.constexpr = 4 * j - 12
        wf = _field_as_float(words_hi, 15 << P, ASM)
    UNSCALE: tl.constexpr = 1.0 / (1 << P)
    UNBIAS: tl.constexpr = -8388608.0 / (1 << P)
    return tl.fma(wf, UNSCALE, UNBIAS)         # (2**23 + q 2**p) 2**-p - 2**(23-p): exact


@triton.jit
def _row_partial(words, x0, x1, x2, x3, x4, x5, x6, x7, ASM: tl.constexpr):
    """``sum_j q_j x_j`` per word (packed row, column), fp32."""
    words_hi = words >> 12
    part = _value(words, words_hi, 0, ASM) * x0[:, None]
    part = tl.fma(_value(words, words_hi, 1, ASM), x1[:, None], part)
    part = tl.fma(_value(words, words_hi, 2, ASM), x2[:, None], part)
    part = tl.fma(_value(words, words_hi, 3, ASM), x3[:, None], part)
    part = tl.fma(_value(words, words_hi, 4, ASM), x4[:, None], part)
    part = tl.fma(_value(words, words_hi, 5, ASM), x5[:, None], part)
    part = tl.fma(_value(words, words_hi, 6, ASM), x6[:, None], part)
    part = tl.fma(_value(words, words_hi, 7, ASM), x7[:, None], part)
    return part


@triton.jit
def _half_pairs(x0, x1, x2, x3, x4, x5, x6, x7, xscale, ASM: tl.constexpr):
    """The 8 x values of each packed row, times ``xscale``, as the four f16x2 pairs the half partial multiplies:
    ``(x0, x4)``, ``(x1 / 16, x5 / 16)``, ``(x2, x6)``, ``(x3 / 16, x7 / 16)`` (the odd fields come out of the word
    as ``16 q``), each an int32 holding two fp16 (low half first); and the fp32 sum of the scaled values.
    Scaling by a power of two is exact and bf16 / fp16 values fit fp16's mantissa, so the pairs hold exactly the
    values the sum adds (except x below ~2**-24 of the scale's largest |x|, which become fp16 subnormals)."""
    xs16 = xscale * 0.0625
    e0 = x0 * xscale
    e2 = x2 * xscale
    e4 = x4 * xscale
    e6 = x6 * xscale
    o1 = x1 * xs16
    o3 = x3 * xs16
    o5 = x5 * xs16
    o7 = x7 * xs16
    # In the partials' units (2**-24: the fields are fp16 subnormals).
    xsum = (((e0 + e4) + (e2 + e6)) + ((o1 + o5) + (o3 + o7)) * 16.0) * 5.960464477539063e-08
    return (_pack_f16x2(e0, e4, ASM), _pack_f16x2(o1, o5, ASM), _pack_f16x2(e2, e6, ASM),
            _pack_f16x2(o3, o7, ASM), xsum)


@triton.jit
def _pack_f16x2(lo, hi, ASM: tl.constexpr):
    """fp32 ``lo`` and ``hi`` rounded to fp16 and packed in one int32 (``lo`` in bits 0-15): one F2FP with ASM."""
    if ASM:
        return tl.inline_asm_elementwise("cvt.rn.f16x2.f32 $0, $1, $2;", "=r,f,f", [hi, lo], dtype=tl.int32,
                                         is_pure=True, pack=1)
    lo_bits = lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hi_bits = hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) << 16
    return lo_bits | hi_bits


@triton.jit
def _half_lane(words, pair, FIELD: tl.constexpr, SHIFT: tl.constexpr):
    """The plain-Triton twin of one f16x2 step of ``_row_partial_half``'s PTX (the interpreter's path): the two
    fields ``FIELD`` of ``words >> SHIFT`` as fp16 subnormals (``q 2**-24``, ``16 q 2**-24`` for the upper nibble of
    a byte) times their x halves."""
    w = words >> SHIFT
    lo_q = (w & FIELD).to(tl.float16) * 5.960464477539063e-08
    hi_q = ((w >> 16) & FIELD).to(tl.float16) * 5.960464477539063e-08
    lo_x = (pair & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
    hi_x = ((pair >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
    return lo_q * lo_x, hi_q * hi_x


@triton.jit
def _row_partial_half(words, p0, p1, p2, p3, ASM: tl.constexpr):
    """``2**-24 sum_j q_j x_j`` per word with the products and the sums of four in f16x2, returned in fp32.

    ``w & 0x000F000F`` is two fp16 subnormals, ``q0 2**-24`` and ``q4 2**-24``, exactly (``w & 0x00F000F0``: 16 times
    ``q1``, ``q5``, whose x halves are pre-divided by 16), so one LOP3 and one HFMA2 take two weights: fields 2, 3,
    6, 7 after one shift of the word by 8. About 1.5 instructions a weight against the fp32 path's 4.5. x is scaled
    so that its largest value is in [2**14, 2**15): the products stay normal fp16 down to x 2**-5 of the largest
    (below that their error is at most 2**-25, 2**-20 of the largest product), and sums of four stay below 0.25."""
    if ASM:
        return tl.inline_asm_elementwise(
            """{
            .reg .b32 t, a, w8;
            .reg .b16 l, h;
            .reg .f32 fl, fh;
            and.b32 t, $1, 0x000F000F;
            mul.rn.f16x2 a, t, $2;
            and.b32 t, $1, 0x00F000F0;
            fma.rn.f16x2 a, t, $3, a;
            shr.u32 w8, $1, 8;
            and.b32 t, w8, 0x000F000F;
            fma.rn.f16x2 a, t, $4, a;
            and.b32 t, w8, 0x00F000F0;
            fma.rn.f16x2 a, t, $5, a;
            mov.b32 {l, h}, a;
            cvt.f32.f16 fl, l;
            cvt.f32.f16 fh, h;
            add.f32 $0, fl, fh;
            }""",
            "=f,r,r,r,r,r", [words, p0, p1, p2, p3], dtype=tl.float32, is_pure=True, pack=1)
    lo0, hi0 = _half_lane(words, p0, 0x000F, 0)
    lo1, hi1 = _half_lane(words, p1, 0x00F0, 0)
    lo2, hi2 = _half_lane(words, p2, 0x000F, 8)
    lo3, hi3 = _half_lane(words, p3, 0x00F0, 8)
    lo = ((lo0 + lo1) + lo2) + lo3
    hi = ((hi0 + hi1) + hi2) + hi3
    return lo.to(tl.float32) + hi.to(tl.float32)


@triton.jit
def _pow2_scale(m, MIN_E: tl.constexpr):
    """``(s, 1 / s)``: powers of two with ``m * s`` in [2**14, 2**15) for ``m >= 0`` (fp32), from ``m``'s exponent
    bits (``m = 0``: the largest). ``s``'s biased exponent is kept in [MIN_E, 253], so that ``1 / s`` (and, with
    MIN_E = 25, ``2**24 / s``) is a normal fp32."""
    e = (m.to(tl.int32, bitcast=True) >> 23) & 0xFF
    se = tl.minimum(tl.maximum(127 + 14 - (e - 127), MIN_E), 253)
    return (se << 23).to(tl.float32, bitcast=True), ((254 - se) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _x_scale(X, kp_start, kp_end, XBLOCK: tl.constexpr):
    """``_pow2_scale`` of the largest ``|x|`` of the split's K range (``HALF == 1``): exact (x's fp16 copies keep
    their bits), below fp16's 65504 even before the odd fields' division by 16. One load of ``XBLOCK`` values for
    the usual splits; a longer range (one split over a long K) in ``XBLOCK`` chunks."""
    offs = kp_start * 8 + tl.arange(0, XBLOCK)
    m = tl.max(tl.abs(tl.load(X + offs, mask=offs < kp_end * 8, other=0.0).to(tl.float32)), axis=0)
    for start in range(kp_start * 8 + XBLOCK, kp_end * 8, XBLOCK):
        offs = start + tl.arange(0, XBLOCK)
        m = tl.maximum(m, tl.max(tl.abs(tl.load(X + offs, mask=offs < kp_end * 8, other=0.0).to(tl.float32)),
                                 axis=0))
    return _pow2_scale(m, 1)


@triton.jit
def _row_max(x0, x1, x2, x3, x4, x5, x6, x7):
    return tl.maximum(tl.maximum(tl.maximum(tl.abs(x0), tl.abs(x1)), tl.maximum(tl.abs(x2), tl.abs(x3))),
                      tl.maximum(tl.maximum(tl.abs(x4), tl.abs(x5)), tl.maximum(tl.abs(x6), tl.abs(x7))))


@triton.jit
def _x_values(X, rows, XVEC: tl.constexpr, BLOCK_KP: tl.constexpr):
    """The 8 x values of each packed row ``rows`` ([BLOCK_KP]) as 8 fp32 vectors."""
    if XVEC:
        xv = tl.load(X + rows[:, None] * 8 + tl.arange(0, 8)[None, :]).to(tl.float32)
        even, odd = tl.split(tl.reshape(xv, (BLOCK_KP, 4, 2)))
        e0, e1 = tl.split(tl.reshape(even, (BLOCK_KP, 2, 2)))       # j = 0, 4 / 2, 6
        o0, o1 = tl.split(tl.reshape(odd, (BLOCK_KP, 2, 2)))        # j = 1, 5 / 3, 7
        x0, x4 = tl.split(e0)
        x2, x6 = tl.split(e1)
        x1, x5 = tl.split(o0)
        x3, x7 = tl.split(o1)
    else:
        xb = X + rows * 8
        x0 = tl.load(xb).to(tl.float32)
        x1 = tl.load(xb + 1).to(tl.float32)
        x2 = tl.load(xb + 2).to(tl.float32)
        x3 = tl.load(xb + 3).to(tl.float32)
        x4 = tl.load(xb + 4).to(tl.float32)
        x5 = tl.load(xb + 5).to(tl.float32)
        x6 = tl.load(xb + 6).to(tl.float32)
        x7 = tl.load(xb + 7).to(tl.float32)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _load_tile(QW, S, O, rows, g, cols, rmask, nmask, N, EVEN_N: tl.constexpr, MASK_ROWS: tl.constexpr,
               SO_TILE: tl.constexpr = False):
    """Words ``[BLOCK_KP, BLOCK_N]`` of packed rows ``rows`` and the scale/offset row of group ``g`` (fp32).
    Masked rows (``MASK_ROWS``) read as 0 words with 0 scale and offset: they add nothing. With ``SO_TILE`` the
    scale and offset come as ``[BLOCK_KP, BLOCK_N]`` (each row the group's row again, from L1): loaded in the words'
    layout, they need no shared-memory layout conversion (two barriers each) every tile."""
    if SO_TILE:
        cols = cols[None, :] + 0 * rows[:, None]
        nmask = nmask[None, :] & (rows[:, None] >= 0)
    ptrs = QW + rows.to(tl.int64)[:, None] * N + (cols if SO_TILE else cols[None, :])
    if MASK_ROWS:
        if EVEN_N:
            words = tl.load(ptrs, mask=rmask[:, None], other=0)
        else:
            words = tl.load(ptrs, mask=rmask[:, None] & (nmask if SO_TILE else nmask[None, :]), other=0)
    else:
        if EVEN_N:
            words = tl.load(ptrs)
        else:
            words = tl.load(ptrs, mask=nmask if SO_TILE else nmask[None, :], other=0)
    if EVEN_N:
        s = tl.load(S + g * N + cols)
        o = tl.load(O + g * N + cols)
    else:
        s = tl.load(S + g * N + cols, mask=nmask, other=0.0)
        o = tl.load(O + g * N + cols, mask=nmask, other=0.0)
    return words, s, o


@triton.jit
def _finish(acc, B, Y, cols, nmask, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(B + cols, mask=nmask, other=0.0).to(tl.float32)
    tl.store(Y + cols, acc.to(Y.dtype.element_ty), mask=nmask)


@triton.jit
def _l2_prefetch_tile(QW, kp0, kp_start, kp_end, pid_n, N, NSUB: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_KP: tl.constexpr):
    """``prefetch.global.L2`` of the program's word tile at packed rows ``kp0..kp0 + BLOCK_KP``: one address per
    128-byte line (32 words; ``BLOCK_N * NSUB`` columns from ``pid_n``'s first), rows past the split clamped to its
    first row (a repeated prefetch costs only its issue slot). Nothing is returned."""
    LINES: tl.constexpr = BLOCK_N * NSUB // 32
    rows = kp0 + tl.arange(0, BLOCK_KP)
    rows = tl.where(rows < kp_end, rows, kp_start)
    cols = pid_n * (BLOCK_N * NSUB) + tl.arange(0, LINES) * 32
    cols = tl.where(cols < N, cols, 0)
    prefetch_l2(QW + rows.to(tl.int64)[:, None] * N + cols[None, :])


@triton.jit
def _packed_gemv_kernel(X, QW, S, O, B, Y, WS, Locks, N, KP, KP_PER_SPLIT,
                        GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
                        SPLIT_K: tl.constexpr, ASM: tl.constexpr, PREFETCH: tl.constexpr, XVEC: tl.constexpr,
                        NSUB: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KP: tl.constexpr, PDL: tl.constexpr,
                        L2_AHEAD: tl.constexpr = 0, HALF: tl.constexpr = 0, XBLOCK: tl.constexpr = 1,
                        SO_TILE: tl.constexpr = False, STAGES: tl.constexpr = 1):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    cols_a = pid_n * (BLOCK_N * NSUB) + tl.arange(0, BLOCK_N)
    cols_b = cols_a + BLOCK_N
    nmask_a = cols_a < N
    nmask_b = cols_b < N
    offs_kp = tl.arange(0, BLOCK_KP)
    kp_start = pid_k * KP_PER_SPLIT
    kp_end = tl.minimum(kp_start + KP_PER_SPLIT, KP)
    # A tile lies inside one group: tiles are BLOCK_KP packed rows, GROUP a multiple of 8 * BLOCK_KP.
    GROUP_KP: tl.constexpr = GROUP // 8
    acc_a = tl.zeros((BLOCK_KP, BLOCK_N), dtype=tl.float32)
    acc_b = acc_a
    if PREFETCH:
        rows = kp_start + offs_kp
        nxt_a, ns_a, no_a = _load_tile(QW, S, O, rows, kp_start // GROUP_KP, cols_a, rows < kp_end, nmask_a, N,
                                       EVEN_N, not EVEN_K, SO_TILE)
        if NSUB == 2:
            nxt_b, ns_b, no_b = _load_tile(QW, S, O, rows, kp_start // GROUP_KP, cols_b, rows < kp_end, nmask_b,
                                           N, EVEN_N, not EVEN_K, SO_TILE)
    if L2_AHEAD > 0:
        for t in tl.static_range(L2_AHEAD):
            _l2_prefetch_tile(QW, kp_start + t * BLOCK_KP, kp_start, kp_end, pid_n, N, NSUB, BLOCK_N, BLOCK_KP)
    pdl_wait(PDL)
    if HALF == 1:
        xscale, xinv = _x_scale(X, kp_start, kp_end, XBLOCK)
    # Uniform trip count; a split that ends at KP (uneven splits, EVEN_K off) masks the tiles past it.
    for kp_rel in tl.range(0, KP_PER_SPLIT, BLOCK_KP, num_stages=STAGES):
        kp0 = kp_start + kp_rel
        rows = kp0 + offs_kp
        if L2_AHEAD > 0:
            _l2_prefetch_tile(QW, kp0 + L2_AHEAD * BLOCK_KP, kp_start, kp_end, pid_n, N, NSUB, BLOCK_N, BLOCK_KP)
        if PREFETCH:
            words_a, s_a, o_a = nxt_a, ns_a, no_a
            if NSUB == 2:
                words_b, s_b, o_b = nxt_b, ns_b, no_b
            # Rows of the next tile past this split (or K) are masked: no read of another split's tile.
            nrows = rows + BLOCK_KP
            g_next = tl.minimum(kp0 + BLOCK_KP, KP - 1) // GROUP_KP
            nxt_a, ns_a, no_a = _load_tile(QW, S, O, nrows, g_next, cols_a, nrows < kp_end, nmask_a, N, EVEN_N,
                                           True, SO_TILE)
            if NSUB == 2:
                nxt_b, ns_b, no_b = _load_tile(QW, S, O, nrows, g_next, cols_b, nrows < kp_end, nmask_b, N,
                                               EVEN_N, True, SO_TILE)
        else:
            g = tl.minimum(kp0, KP - 1) // GROUP_KP
            words_a, s_a, o_a = _load_tile(QW, S, O, rows, g, cols_a, rows < kp_end, nmask_a, N, EVEN_N,
                                           not EVEN_K, SO_TILE)
            if NSUB == 2:
                words_b, s_b, o_b = _load_tile(QW, S, O, rows, g, cols_b, rows < kp_end, nmask_b, N, EVEN_N,
                                               not EVEN_K, SO_TILE)
        s_a = s_a.to(tl.float32)
        o_a = o_a.to(tl.float32)
        if not EVEN_K:    # a tile wholly past K (the last split of uneven splits) adds nothing
            s_a = tl.where(kp0 < kp_end, s_a, 0.0)
            o_a = tl.where(kp0 < kp_end, o_a, 0.0)
            xrows = tl.minimum(rows, KP - 1)     # x stays in bounds; its words are 0 and scales 0 there
        else:
            xrows = rows
        x0, x1, x2, x3, x4, x5, x6, x7 = _x_values(X, xrows, XVEC, BLOCK_KP)
        if HALF == 2:     # a scale per packed row, from its own 8 values: no pass over x before the loop
            xscale, xinv = _pow2_scale(_row_max(x0, x1, x2, x3, x4, x5, x6, x7), 25)
        if HALF:
            p0, p1, p2, p3, xsum = _half_pairs(x0, x1, x2, x3, x4, x5, x6, x7, xscale, ASM)
            p0, p1, p2, p3, xsum = p0[:, None], p1[:, None], p2[:, None], p3[:, None], xsum[:, None]
            part_a = _row_partial_half(words_a, p0, p1, p2, p3, ASM)
        else:
            xsum = (((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)))[:, None]
            part_a = _row_partial(words_a, x0, x1, x2, x3, x4, x5, x6, x7, ASM)
        if not SO_TILE:
            s_a = s_a[None, :]
            o_a = o_a[None, :]
        if HALF == 2:     # back to x's units per row (powers of two: exact)
            unscale = (xinv * 16777216.0)[:, None]
            xsum = xsum * unscale
            s_a = s_a * unscale
        acc_a = tl.fma(xsum, o_a, tl.fma(part_a, s_a, acc_a))
        if NSUB == 2:
            s_b = s_b.to(tl.float32)
            o_b = o_b.to(tl.float32)
            if not EVEN_K:
                s_b = tl.where(kp0 < kp_end, s_b, 0.0)
                o_b = tl.where(kp0 < kp_end, o_b, 0.0)
            if HALF:
                part_b = _row_partial_half(words_b, p0, p1, p2, p3, ASM)
            else:
                part_b = _row_partial(words_b, x0, x1, x2, x3, x4, x5, x6, x7, ASM)
            if not SO_TILE:
                s_b = s_b[None, :]
                o_b = o_b[None, :]
            if HALF == 2:
                s_b = s_b * unscale
            acc_b = tl.fma(xsum, o_b, tl.fma(part_b, s_b, acc_b))
    y_a = tl.sum(acc_a, axis=0)
    y_b = tl.sum(acc_b, axis=0)
    if HALF == 1:    # back from x's scale and the fields' 2**-24 (powers of two: exact), before the splits are summed
        y_a = (y_a * 16777216.0) * xinv
        y_b = (y_b * 16777216.0) * xinv
    if SPLIT_K > 1:
        # As triton_gemv: partial tiles to the workspace, the last program of a column tile to arrive sums them in
        # split order, writes y and resets the tile's counter for the next launch (or graph replay).
        TILE: tl.constexpr = BLOCK_N * NSUB
        offs = tl.arange(0, BLOCK_N)
        base = WS + (pid_k * tl.num_programs(0) + pid_n) * TILE
        tl.store(base + offs, y_a)
        if NSUB == 2:
            tl.store(base + BLOCK_N + offs, y_b)
        tl.debug_barrier()
        count = tl.atomic_add(Locks + pid_n, 1, sem="acq_rel", scope="gpu")
        if count == SPLIT_K - 1:
            first = WS + pid_n * TILE
            y_a = tl.load(first + offs, cache_modifier=".cg")
            for sk in tl.static_range(1, SPLIT_K):
                y_a += tl.load(first + sk * tl.num_programs(0) * TILE + offs, cache_modifier=".cg")
            _finish(y_a, B, Y, cols_a, nmask_a, HAS_BIAS)
            if NSUB == 2:
                y_b = tl.load(first + BLOCK_N + offs, cache_modifier=".cg")
                for sk in tl.static_range(1, SPLIT_K):
                    y_b += tl.load(first + sk * tl.num_programs(0) * TILE + BLOCK_N + offs, cache_modifier=".cg")
                _finish(y_b, B, Y, cols_b, nmask_b, HAS_BIAS)
            tl.atomic_xchg(Locks + pid_n, 0, sem="relaxed", scope="gpu")
    else:
        _finish(y_a, B, Y, cols_a, nmask_a, HAS_BIAS)
        if NSUB == 2:
            _finish(y_b, B, Y, cols_b, nmask_b, HAS_BIAS)


class GemvPlan(NamedTuple):
    grid: tuple[int, int]
    kp_per_split: int
    ws_elems: int
    constexprs: dict


def make_plan(n: int, k: int, group_size: int, has_bias: bool, num_sms: int, cfg: PackedGemvConfig) -> GemvPlan:
    """Launch parameters for ``x [1, k]`` against a 4-bit packed ``[k // 8, n]`` weight with ``group_size``."""
    if group_size % 8 or k % group_size:
        raise ValueError(f"group_size ({group_size}) must be a multiple of 8 that divides K ({k})")
    if cfg.half not in (0, 1, 2):
        raise ValueError(f"half must be 0, 1 (a scale per program) or 2 (per packed row), got {cfg.half}")
    if cfg.nsub not in (1, 2):
        raise ValueError(f"nsub must be 1 or 2, got {cfg.nsub}")
    if cfg.stages < 1 or (cfg.stages > 1 and cfg.prefetch):
        raise ValueError(f"stages must be >= 1, and 1 with the register prefetch (got {cfg.stages})")
    kp = k // 8
    block_kp = cfg.block_kp
    while (group_size // 8) % block_kp:          # a tile must not straddle two groups
        block_kp //= 2
    tile_n = cfg.block_n * cfg.nsub
    grid_n = triton.cdiv(n, tile_n)
    k_tiles = kp // block_kp                    # exact: block_kp divides group_size / 8, which divides kp
    split_k = cfg.split_k
    if split_k == 0:    # enough programs to keep every SM streaming, each split at least two K tiles
        split_k = max(1, min(triton.cdiv(PROGRAMS_PER_SM * num_sms, grid_n), k_tiles // 2, 16))
    tiles_per_split = triton.cdiv(k_tiles, max(1, min(split_k, k_tiles)))
    split_k = triton.cdiv(k_tiles, tiles_per_split)            # no empty split
    constexprs = dict(GROUP=group_size, HAS_BIAS=has_bias, EVEN_N=n % tile_n == 0,
                      EVEN_K=k_tiles % tiles_per_split == 0, SPLIT_K=split_k, ASM=cfg.asm and not _INTERPRET,
                      PREFETCH=cfg.prefetch, XVEC=cfg.xvec, NSUB=cfg.nsub, BLOCK_N=cfg.block_n,
                      BLOCK_KP=block_kp, L2_AHEAD=0 if _INTERPRET else cfg.l2_ahead, HALF=int(cfg.half),
                      SO_TILE=cfg.so_tile, STAGES=cfg.stages,
                      XBLOCK=min(triton.next_power_of_2(tiles_per_split * block_kp * 8), X_SCALE_BLOCK)
                      if cfg.half == 1 else 1,
                      num_warps=cfg.num_warps, num_stages=cfg.stages)
    return GemvPlan((grid_n, split_k), tiles_per_split * block_kp, split_k * grid_n * tile_n, constexprs)


def launch(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None, plan: GemvPlan) -> torch.Tensor:
    """``x`` ``[1, K]`` contiguous (any ``perm`` already applied by the caller)."""
    n = w.qweight.shape[1]
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    ws = locks = y
    constexprs = plan.constexprs
    if constexprs["SPLIT_K"] > 1:
        buffers = _workspace(x.device, plan.ws_elems, plan.grid[0])
        if buffers is None:         # inside a CUDA-graph capture that would need a bigger workspace: no split
            cfg = PackedGemvConfig(constexprs["BLOCK_N"], constexprs["BLOCK_KP"], constexprs["NSUB"],
                             constexprs["num_warps"], constexprs["PREFETCH"], constexprs["ASM"], constexprs["XVEC"],
                             split_k=1, l2_ahead=constexprs["L2_AHEAD"], half=constexprs["HALF"],
                             so_tile=constexprs["SO_TILE"], stages=constexprs["STAGES"])
            return launch(x, w, bias, make_plan(n, x.shape[1], w.group_size, bias is not None, 1, cfg))
        ws, locks = buffers
    _packed_gemv_kernel[plan.grid](x, w.qweight, w.scales, w.offsets, bias if bias is not None else y, y, ws, locks,
                                   n, w.qweight.shape[0], plan.kp_per_split, **constexprs,
                                   **pdl_launch_args(x.device))
    return y
