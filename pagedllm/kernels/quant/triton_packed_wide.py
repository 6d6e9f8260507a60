"""The packed int4/int8 matmul for 17..256 rows (``y = x @ W (+ bias)``, W in packed.py's canonical form) on the
tensor cores, each weight unpacked once per row tile and never written to global memory.

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
* **One row tile over all of M where possible** (``BLOCK_M`` 32..256 by M bucket, rows past M clamped to row M - 1
  and never stored), ``x`` the dot's A operand from a pipelined load; split-K for the narrow layers, reduced in
  the same kernel by the last program of a tile to arrive (``triton_gemv``'s workspace and counters).

``W_AS_A`` (a candidate, chosen by measurement): the transposed product ``y^T = W^T x^T`` so the unpacked tile is
wgmma's register A operand and ``x`` the shared-memory B operand (no shared-memory store of W), the accumulator
``[BLOCK_N, BLOCK_M]``.

Static figures (sm_90 SASS and TTGIR read offline with Triton 3.6's ptxas/nvdisasm, benchmarks/kernels/sass_count.py)
are in the commit history and the helper's report; GPU timings: benchmarks/kernels/awq_fused_probe.py.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from pagedllm import envs
from pagedllm.kernels.pdl import pdl_launch_args, pdl_wait
from pagedllm.kernels.quant.packed import PackedWeight
from pagedllm.kernels.triton_gemv import _workspace

_INTERPRET = envs.TRITON_INTERPRET
_FUSED = not _INTERPRET     # the single-rounding fma (the interpreter's fma rounds twice)
MAGIC = tl.constexpr(0x4B000000)     # 2**23 as float32 bits
TWO23 = tl.constexpr(8388608.0)
SCALE_GATHER, SCALE_PER_TILE, SCALE_ONE_GROUP = 0, 1, 2
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
    w_as_a: bool = False


_PROGRAMS_PER_SM = 2


@triton.jit
def _rot_field(words, rot):
    """``words`` rotated left by ``rot`` (1..31): one funnel shift."""
    u = words.to(tl.uint32, bitcast=True)
    return (u << rot) | (u >> (32 - rot))


@triton.jit
def _packed_wide_kernel(X, QW, S, O, B, Y, WS, Locks, M, N, K, K_PER_SPLIT, stride_xm, stride_ym,
                        BITS: tl.constexpr, GROUP: tl.constexpr, SCALE_MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
                        EVEN_K: tl.constexpr, SPLIT_K: tl.constexpr, W_AS_A: tl.constexpr, FUSED: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    PACK: tl.constexpr = 32 // BITS
    FIELD: tl.constexpr = ((1 << BITS) - 1) << (23 - BITS)       # the value's bits after the rotate
    SCALE: tl.constexpr = 1.0 / (1 << (23 - BITS))
    BIAS2: tl.constexpr = 1 << BITS                               # 2**23 * SCALE
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = tl.minimum(offs_m, M - 1)               # rows >= M re-read row M - 1 (cached); never stored
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.where(offs_n < N, offs_n, 0)         # clamped, not masked: loads stay unmasked; stores are masked
    offs_k = tl.arange(0, BLOCK_K)
    k_start = pid_k * K_PER_SPLIT
    # value j = k % PACK of a word sits at bits BITS*j..; rotating left by 23 - BITS - BITS*j (mod 32, never 0
    # since 23 - BITS is odd) moves it to 23 - BITS .. 22
    rot = ((55 - BITS - BITS * (offs_k % PACK)) % 32).to(tl.uint32)
    s_one = tl.zeros((BLOCK_N,), dtype=tl.float32)
    c_one = s_one
    if SCALE_MODE == 2:
        s_one = tl.load(S + cols).to(tl.float32)
        c_one = tl.load(O + cols).to(tl.float32) - BIAS2 * s_one
        s_one = s_one * SCALE
    if W_AS_A:
        w_ptrs = QW + ((k_start + offs_k) // PACK).to(tl.int64)[None, :] * N + cols[:, None]     # [BN, BK]
        x_ptrs = X + rows.to(tl.int64)[None, :] * stride_xm + (k_start + offs_k)[:, None]        # [BK, BM]
        rot2 = rot[None, :]
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        w_ptrs = QW + ((k_start + offs_k) // PACK).to(tl.int64)[:, None] * N + cols[None, :]     # [BK, BN]
        x_ptrs = X + rows.to(tl.int64)[:, None] * stride_xm + (k_start + offs_k)[None, :]        # [BM, BK]
        rot2 = rot[:, None]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    pdl_wait(PDL)
    for k_rel in range(0, K_PER_SPLIT, BLOCK_K):
        k0 = k_start + k_rel
        if EVEN_K:
            words = tl.load(w_ptrs)
            x = tl.load(x_ptrs)
        else:
            kmask = (k0 + offs_k) < K
            if W_AS_A:
                words = tl.load(w_ptrs, mask=kmask[None, :], other=0)
                x = tl.load(x_ptrs, mask=kmask[:, None], other=0.0)
            else:
                words = tl.load(w_ptrs, mask=kmask[:, None], other=0)
                x = tl.load(x_ptrs, mask=kmask[None, :], other=0.0)
        # the tile's scale s * 2**(BITS - 23) and c = o - 2**BITS s, broadcast along K
        if SCALE_MODE == 2:
            s = s_one
            c = c_one
        elif SCALE_MODE == 1:
            g = k0 // GROUP
            if EVEN_K:
                s = tl.load(S + g * N + cols).to(tl.float32)
                o = tl.load(O + g * N + cols).to(tl.float32)
            else:      # the last split's tiles may lie wholly past K: no group there
                s = tl.load(S + g * N + cols, mask=k0 < K, other=0.0).to(tl.float32)
                o = tl.load(O + g * N + cols, mask=k0 < K, other=0.0).to(tl.float32)
            c = o - BIAS2 * s
            s = s * SCALE
        if SCALE_MODE == 0:
            gidx = tl.minimum(k0 + offs_k, K - 1) // GROUP
            if W_AS_A:
                ptrs = gidx[None, :] * N + cols[:, None]
            else:
                ptrs = gidx[:, None] * N + cols[None, :]
            s = tl.load(S + ptrs).to(tl.float32)
            c = tl.load(O + ptrs).to(tl.float32) - BIAS2 * s
            s = s * SCALE
        elif W_AS_A:
            s = s[:, None]
            c = c[:, None]
        else:
            s = s[None, :]
            c = c[None, :]
        v = _rot_field(words, rot2) & FIELD
        wf = (v | MAGIC).to(tl.float32, bitcast=True)
        if FUSED:
            w = tl.fma(wf, s, c)
        else:
            w = (wf - TWO23) * s + (c + BIAS2 * (s / SCALE))
        w = w.to(X.dtype.element_ty)
        if W_AS_A:
            acc = tl.dot(w, x, acc)
        else:
            acc = tl.dot(x, w, acc)
        w_ptrs += (BLOCK_K // PACK) * N
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


def _scale_mode(group_size: int, k: int, block_k: int, pack: int) -> int:
    if group_size >= k:
        return SCALE_ONE_GROUP
    if group_size % block_k == 0:
        return SCALE_PER_TILE
    if group_size % pack:
        raise ValueError(f"group_size ({group_size}) must be a multiple of {pack} for {32 // pack}-bit packed "
                         f"weights")
    return SCALE_GATHER


def make_plan(m: int, n: int, k: int, bits: int, group_size: int, has_bias: bool, num_sms: int,
              cfg: PackedWideConfig) -> WidePlan:
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if cfg.block_m < 16 or cfg.block_n < 16 or cfg.block_k < 16:
        raise ValueError(f"config {cfg}: block_m, block_n and block_k must be at least 16 (tensor-core tiles)")
    pack = 32 // bits
    block_k = cfg.block_k
    grid_m = triton.cdiv(m, cfg.block_m)
    grid_n = triton.cdiv(n, cfg.block_n)
    k_tiles = triton.cdiv(k, block_k)
    split_k = cfg.split_k
    if split_k == 0:   # about _PROGRAMS_PER_SM programs an SM, each split at least four K tiles
        split_k = max(1, min(triton.cdiv(_PROGRAMS_PER_SM * num_sms, grid_m * grid_n), k_tiles // 4, 16))
    tiles_per_split = triton.cdiv(k_tiles, max(1, min(split_k, k_tiles)))
    split_k = triton.cdiv(k_tiles, tiles_per_split)            # no empty split
    n_tiles = grid_m * grid_n
    constexprs = dict(BITS=bits, GROUP=group_size, SCALE_MODE=_scale_mode(group_size, k, block_k, pack),
                      HAS_BIAS=has_bias, EVEN_K=k % block_k == 0 and k_tiles % tiles_per_split == 0,
                      SPLIT_K=split_k, W_AS_A=cfg.w_as_a, FUSED=_FUSED, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                      BLOCK_K=block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    ws_elems = split_k * n_tiles * cfg.block_m * cfg.block_n if split_k > 1 else 0
    return WidePlan((grid_n, split_k, grid_m), tiles_per_split * block_k, ws_elems, n_tiles, constexprs)


def launch(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None, plan: WidePlan) -> torch.Tensor:
    """``x`` contiguous along K (``perm`` already applied); the result ``[M, N]`` in ``x.dtype``."""
    m, k = x.shape
    n = w.qweight.shape[1]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    b = bias if bias is not None else y
    ws = locks = y
    constexprs = plan.constexprs
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
