"""The int4/int8 weight-only matmul for prefill-sized ``M`` (64..8192) with the dequantization fused into the GEMM's
K loop: ``y = x @ W (+ bias)``, W in packed.py's canonical form (``qweight`` int32 ``[K / pack, N]``, N contiguous).

Why: the scratch path (``triton_packed._dequantize_kernel`` writes W as bf16 at HBM speed, then cuBLAS) pays a full
read of the packed W plus a write and a re-read of 2 bytes a weight before the GEMM starts; at M = 256 that is about
half of the matmul (docs/perf.md: int4 at 0.53-0.61x of bf16 F.linear there). Here each program streams its
``[BLOCK_K / pack, BLOCK_N]`` tile of words (a quarter of bf16's bytes for int4) and dequantizes it in registers
right before the tensor cores use it, so the only HBM traffic for W is the packed read.

Per K step of a ``[BLOCK_M, BLOCK_N]`` output tile:

* ``x`` tile ``[BLOCK_M, BLOCK_K]`` (the dot's other operand, pipelined ``num_stages`` deep like any Triton GEMM);
* the words ``[BLOCK_KP, BLOCK_N]`` (``BLOCK_KP = BLOCK_K / pack``), unpacked with one broadcast shift per value
  into ``[BLOCK_KP, pack, BLOCK_N]`` (``KORDER = 0``: reshaped to K's natural order ``k = kp * pack + j``, so ``x``
  loads stay contiguous) or ``[pack, BLOCK_KP, BLOCK_N]`` (``KORDER = 1``: the tile's K permuted to ``j * BLOCK_KP
  + kp``, and ``x`` loaded in that permuted order: a dot over a tile is the same sum in any K order). Which of the
  two needs the cheaper register shuffle before the dot is a property of Triton's layouts: measured, not assumed;
* each value becomes a float by ORing the field into the mantissa of ``2**23`` (no int->float conversion), then
  ``q * s + o`` in fp32 exactly as the scratch path computes it (``fma(2**23 + q, s, -2**23 s) + o``), rounded to
  ``x``'s dtype: the tensor cores see the same dequantized weights cuBLAS sees on the scratch path, so the two
  paths differ only by accumulation order (fp32 accumulate in both);
* ``tl.dot`` with fp32 accumulation; ``W_AS_A`` computes ``y^T = W^T x^T`` instead, so the dequantized tile is the
  tensor cores' A operand (Hopper's wgmma reads A from registers, B only from shared memory) and ``x^T`` the B
  operand straight from the pipelined shared-memory copy.

Program ids are swizzled in groups of ``GROUP_M`` row tiles so that the row tiles sharing a column tile of W run
together (its words come from L2 after the first). Scales and offsets: one ``[BLOCK_N]`` row a tile when the tile
lies inside one group, one row for the whole matmul when per-channel, else gathered per packed row.

Configs (``PackedGemmConfig``) are chosen per ``(M bucket, N, K, bits)`` in ``triton_packed.GEMM_TABLE``; where it
has no entry the scratch path runs. ``benchmarks/quant_kernels.py --gemm`` sweeps ``GEMM_CANDIDATES`` against the
scratch path and bf16 F.linear and writes the table.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from pagedllm.kernels.pdl import pdl_launch_args, pdl_wait
from pagedllm.kernels.quant.packed import PackedWeight
from pagedllm.kernels.triton_gemv import _workspace

# triton_packed (the router) imports this module, so these are not imported from it: the same constants and modes.
MAGIC = tl.constexpr(0x4B000000)     # 2**23 as float32 bits: (MAGIC | v) read as float32 is 2**23 + v
TWO23 = tl.constexpr(8388608.0)
SCALE_GATHER, SCALE_PER_TILE, SCALE_ONE_GROUP = 0, 1, 2


class PackedGemmConfig(NamedTuple):
    block_m: int = 128
    block_n: int = 128
    block_k: int = 128       # unpacked K per step; halved until it divides group_size where that keeps >= 16 * pack
    num_warps: int = 8
    num_stages: int = 3
    group_m: int = 8         # row tiles that walk the column tiles together (L2 reuse of W's words)
    korder: int = 0          # 0: K in natural order (x contiguous); 1: K permuted j-major within a tile
    w_as_a: bool = False     # y^T = W^T x^T: the dequantized W as the tensor cores' A operand (registers)
    split_k: int = 1         # K ranges per output tile (narrow layers at small M: too few tiles to fill the GPU)


_C = PackedGemmConfig
# What benchmarks/quant_kernels.py --gemm sweeps per M (and tests/gpu checks): few, since every one compiles. From
# SASS counted offline for sm_90 (benchmarks/kernels/sass_count.py, 128x128x128 tile, 8 warps): W_AS_A keeps the
# dequantized tile in registers (wgmma's A), x as A stores it to shared memory first (64 STS.U16 a thread a step);
# both ~9 instructions a weight a step (2 LOP3 + SHF + FFMA + FADD + cvt/pack); KORDER 1 loads x without cp.async
# (and spills with W_AS_A). BLOCK_M = 256 dequantizes each weight once at M = 256; split-K fills the GPU for the
# narrow layers (o, qkv, down have 28-36 column tiles of 128).
GEMM_CANDIDATES: dict[int, list[PackedGemmConfig]] = {
    256: [_C(128, 128, 128, 8, 3, w_as_a=True), _C(256, 128, 64, 8, 3, w_as_a=True),
          _C(128, 256, 64, 8, 3, w_as_a=True), _C(128, 128, 128, 8, 3),
          _C(128, 128, 128, 8, 3, w_as_a=True, split_k=4), _C(256, 128, 64, 8, 3, w_as_a=True, split_k=4),
          _C(64, 128, 128, 4, 4, w_as_a=True, split_k=2), _C(128, 128, 128, 8, 3, korder=1)],
    4096: [_C(128, 128, 128, 8, 3, w_as_a=True), _C(256, 128, 64, 8, 3, w_as_a=True),
           _C(128, 256, 64, 8, 3, w_as_a=True), _C(128, 128, 128, 8, 3), _C(128, 256, 64, 8, 3),
           _C(128, 128, 128, 8, 4, group_m=16, w_as_a=True),
           _C(256, 128, 64, 8, 3, w_as_a=True, split_k=2)],
}
GEMM_CANDIDATES[64] = GEMM_CANDIDATES[128] = GEMM_CANDIDATES[512] = GEMM_CANDIDATES[256]
GEMM_CANDIDATES[1024] = GEMM_CANDIDATES[4096]


@triton.jit
def _tile_scales(S, O, kp0, offs_kp, cols, N, kmask, s_one, o_one, PACK: tl.constexpr, GROUP: tl.constexpr,
                 SCALE_MODE: tl.constexpr, EVEN_K: tl.constexpr):
    """The scale and offset of each packed row of a tile, ``[1 or BLOCK_KP, BLOCK_N]`` fp32."""
    if SCALE_MODE == 2:
        s = s_one[None, :]
        o = o_one[None, :]
    elif SCALE_MODE == 1:           # a tile never straddles a group; tiles are never wholly past K
        g = (kp0 * PACK) // GROUP
        s = tl.load(S + g * N + cols).to(tl.float32)[None, :]
        o = tl.load(O + g * N + cols).to(tl.float32)[None, :]
    else:
        ptrs = (((kp0 + offs_kp) * PACK) // GROUP)[:, None] * N + cols[None, :]
        if EVEN_K:
            s = tl.load(S + ptrs).to(tl.float32)
            o = tl.load(O + ptrs).to(tl.float32)
        else:
            s = tl.load(S + ptrs, mask=kmask[:, None], other=0.0).to(tl.float32)
            o = tl.load(O + ptrs, mask=kmask[:, None], other=0.0).to(tl.float32)
    return s, o


@triton.jit
def _dequantized_tile(words, s, o, KORDER: tl.constexpr, BITS: tl.constexpr, FUSED: tl.constexpr,
                      BLOCK_KP: tl.constexpr, BLOCK_N: tl.constexpr, DTYPE: tl.constexpr):
    """``W`` ``[BLOCK_KP * pack, BLOCK_N]`` in ``DTYPE`` from a tile of words and its scales/offsets
    (``[1 or BLOCK_KP, BLOCK_N]`` fp32), rows in the order ``KORDER`` names."""
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    shifts = tl.arange(0, PACK) * BITS
    if KORDER == 0:         # [BLOCK_KP, PACK, BLOCK_N]: row kp * PACK + j
        q = (words[:, None, :] >> shifts[None, :, None]) & MASK
        s3 = s[:, None, :]
        o3 = o[:, None, :]
    else:                   # [PACK, BLOCK_KP, BLOCK_N]: row j * BLOCK_KP + kp
        q = (words[None, :, :] >> shifts[:, None, None]) & MASK
        s3 = s[None, :, :]
        o3 = o[None, :, :]
    wf = (q | MAGIC).to(tl.float32, bitcast=True)             # 2**23 + q, exactly
    if FUSED:               # q * s with one rounding, as the scratch path (_unpack_scaled)
        w = tl.fma(wf, tl.broadcast_to(s3, wf.shape), tl.broadcast_to(s3 * -TWO23, wf.shape))
    else:                   # the interpreter's fma rounds twice; this is exact as well
        w = (wf - TWO23) * s3
    w = w + o3
    return tl.reshape(w, (BLOCK_KP * PACK, BLOCK_N)).to(DTYPE)


@triton.jit
def _fused_gemm_kernel(X, QW, S, O, B, Y, WS, Locks, M, N, K, KP, KP_PER_SPLIT, stride_xm, stride_ym,
                       BITS: tl.constexpr, GROUP: tl.constexpr, SCALE_MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
                       EVEN_K: tl.constexpr, FUSED: tl.constexpr, KORDER: tl.constexpr, W_AS_A: tl.constexpr,
                       SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, PDL: tl.constexpr):
    PACK: tl.constexpr = 32 // BITS
    BLOCK_KP: tl.constexpr = BLOCK_K // PACK
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * grid_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_m, M - 1)           # clamped: x loads unmasked along M; stores masked
    cols = tl.where(offs_n < N, offs_n, 0)
    offs_kp = tl.arange(0, BLOCK_KP)
    t = tl.arange(0, BLOCK_K)
    if KORDER == 0:
        xk = t
    else:                   # position t = j * BLOCK_KP + kp of the tile holds k = kp * PACK + j
        xk = (t % BLOCK_KP) * PACK + t // BLOCK_KP
    s_one = tl.zeros((BLOCK_N,), dtype=tl.float32)
    o_one = s_one
    if SCALE_MODE == 2:
        s_one = tl.load(S + cols).to(tl.float32)
        o_one = tl.load(O + cols).to(tl.float32)
    if W_AS_A:
        x_ptrs = X + rows.to(tl.int64)[None, :] * stride_xm + xk[:, None]          # x^T [BLOCK_K, BLOCK_M]
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        x_ptrs = X + rows.to(tl.int64)[:, None] * stride_xm + xk[None, :]          # [BLOCK_M, BLOCK_K]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    kp_start = tl.program_id(1) * KP_PER_SPLIT
    kp_end = tl.minimum(kp_start + KP_PER_SPLIT, KP)
    x_ptrs += kp_start * PACK
    w_ptrs = QW + (kp_start + offs_kp).to(tl.int64)[:, None] * N + cols[None, :]
    pdl_wait(PDL)
    for kp0 in range(kp_start, kp_end, BLOCK_KP):
        kmask = (kp0 + offs_kp) < KP
        if EVEN_K:
            xt = tl.load(x_ptrs)
            words = tl.load(w_ptrs)
        else:
            if W_AS_A:
                xt = tl.load(x_ptrs, mask=(kp0 * PACK + xk)[:, None] < K, other=0.0)
            else:
                xt = tl.load(x_ptrs, mask=(kp0 * PACK + xk)[None, :] < K, other=0.0)
            words = tl.load(w_ptrs, mask=kmask[:, None], other=0)
        s, o = _tile_scales(S, O, kp0, offs_kp, cols, N, kmask, s_one, o_one, PACK, GROUP, SCALE_MODE, EVEN_K)
        w = _dequantized_tile(words, s, o, KORDER, BITS, FUSED, BLOCK_KP, BLOCK_N, X.dtype.element_ty)
        if W_AS_A:
            acc = tl.dot(tl.trans(w), xt, acc)
        else:
            acc = tl.dot(xt, w, acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_KP * N
    if W_AS_A:
        acc = tl.trans(acc)
    if SPLIT_K > 1:
        # As triton_gemv: partial tiles to the workspace, the last program of an output tile to arrive sums them in
        # split order (deterministic), writes y and resets the tile's counter for the next launch (or graph replay).
        tile_offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        TILE: tl.constexpr = BLOCK_M * BLOCK_N
        tl.store(WS + (tl.program_id(1) * tl.num_programs(0) + pid).to(tl.int64) * TILE + tile_offs, acc)
        tl.debug_barrier()
        count = tl.atomic_add(Locks + pid, 1, sem="acq_rel", scope="gpu")
        if count == SPLIT_K - 1:
            acc = tl.load(WS + pid.to(tl.int64) * TILE + tile_offs, cache_modifier=".cg")
            for sk in tl.static_range(1, SPLIT_K):
                acc += tl.load(WS + (sk * tl.num_programs(0) + pid).to(tl.int64) * TILE + tile_offs,
                               cache_modifier=".cg")
            _store_tile(acc, B, Y, cols, offs_m, offs_n, M, N, stride_ym, HAS_BIAS)
            tl.atomic_xchg(Locks + pid, 0, sem="relaxed", scope="gpu")
    else:
        _store_tile(acc, B, Y, cols, offs_m, offs_n, M, N, stride_ym, HAS_BIAS)


@triton.jit
def _store_tile(acc, B, Y, cols, offs_m, offs_n, M, N, stride_ym, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(B + cols).to(tl.float32)[None, :]
    y_ptrs = Y + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


# (triton_packed.prefill_bucket(M), N, K, bits) -> the fused kernel's config, or None for the scratch path
# (dequantize + cuBLAS) where the sweep measured it faster. Shapes and buckets not listed keep triton_packed's
# _TABLE / _DEFAULTS (the scratch path for M > 64). `benchmarks/quant_kernels.py --gemm` prints this block from
# its sweep (--save-gemm-table FILE writes it; --apply-gemm-table FILE puts it here).
# BEGIN GEMM_TABLE
GEMM_TABLE: dict[tuple[int, int, int, int], PackedGemmConfig | None] = {
    # Qwen2.5-7B: qkv, o, gate_up, down (benchmarks/quant_kernels.py --gemm, H200); None: scratch + cuBLAS
    (64, 3584, 3584, 4): None,  # from M bucket 256 (not measured)
    (128, 3584, 3584, 4): None,  # from M bucket 256 (not measured)
    (256, 3584, 3584, 4): None,  # scratch 23.87 us at M=256; bf16 F.linear 13.58 us, scratch 23.87 us
    (512, 3584, 3584, 4): None,  # from M bucket 4096 (not measured)
    (1024, 3584, 3584, 4): None,  # from M bucket 4096 (not measured)
    (4096, 3584, 3584, 4): None,  # scratch 166.78 us at M=4096; bf16 F.linear 142.55 us, scratch 166.78 us
    (64, 3584, 18944, 4): None,  # from M bucket 256 (not measured)
    (128, 3584, 18944, 4): None,  # from M bucket 256 (not measured)
    (256, 3584, 18944, 4): None,  # scratch 119.62 us at M=256; bf16 F.linear 54.19 us, scratch 119.62 us
    (512, 3584, 18944, 4): None,  # from M bucket 4096 (not measured)
    (1024, 3584, 18944, 4): None,  # from M bucket 4096 (not measured)
    (4096, 3584, 18944, 4): None,  # scratch 869.90 us at M=4096; bf16 F.linear 838.71 us, scratch 869.90 us
    (64, 4608, 3584, 4): None,  # from M bucket 256 (not measured)
    (128, 4608, 3584, 4): None,  # from M bucket 256 (not measured)
    (256, 4608, 3584, 4): None,  # scratch 32.17 us at M=256; bf16 F.linear 15.47 us, scratch 32.17 us
    (512, 4608, 3584, 4): None,  # from M bucket 4096 (not measured)
    (1024, 4608, 3584, 4): None,  # from M bucket 4096 (not measured)
    (4096, 4608, 3584, 4): None,  # scratch 204.86 us at M=4096; bf16 F.linear 172.95 us, scratch 204.86 us
    (64, 37888, 3584, 4): None,  # from M bucket 256 (not measured)
    (128, 37888, 3584, 4): None,  # from M bucket 256 (not measured)
    (256, 37888, 3584, 4): None,  # scratch 206.10 us at M=256; bf16 F.linear 100.25 us, scratch 206.10 us
    (512, 37888, 3584, 4): None,  # from M bucket 4096 (not measured)
    (1024, 37888, 3584, 4): None,  # from M bucket 4096 (not measured)
    (4096, 37888, 3584, 4): None,  # scratch 1742.96 us at M=4096; bf16 F.linear 1608.48 us, scratch 1742.96 us
}
# END GEMM_TABLE


def make_plan(k: int, bits: int, group_size: int, has_bias: bool, fused_fma: bool, cfg: PackedGemmConfig) -> dict:
    """The kernel's constexprs and launch options for a shape class (``BLOCK_M``/``BLOCK_N`` size the grid)."""
    if cfg.korder not in (0, 1):
        raise ValueError(f"korder must be 0 or 1, got {cfg.korder}")
    pack = 32 // bits
    # A tile inside one group reads one scale row (SCALE_PER_TILE) instead of gathering one per packed row; tiles
    # keep at least 16 packed rows (smaller groups gather their scales per packed row).
    block_k = max(cfg.block_k, 16 * pack)
    while group_size < k and group_size % block_k and block_k // 2 >= 16 * pack:
        block_k //= 2
    if group_size >= k:
        scale_mode = SCALE_ONE_GROUP
    elif group_size % block_k == 0:
        scale_mode = SCALE_PER_TILE
    elif group_size % pack == 0:
        scale_mode = SCALE_GATHER
    else:
        raise ValueError(f"group_size ({group_size}) must be a multiple of {pack} for {bits}-bit packed weights")
    return dict(BITS=bits, GROUP=group_size, SCALE_MODE=scale_mode,
                HAS_BIAS=has_bias, EVEN_K=k % block_k == 0, FUSED=fused_fma, KORDER=cfg.korder, W_AS_A=cfg.w_as_a,
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=block_k, GROUP_M=cfg.group_m,
                SPLIT_K=max(1, cfg.split_k), num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def launch(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None, constexprs: dict) -> torch.Tensor:
    """``x`` ``[M, K]`` with unit stride along K (``x[:, perm]`` already gathered)."""
    m, k = x.shape
    n = w.qweight.shape[1]
    kp = w.qweight.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_m, block_n, block_kp = constexprs["BLOCK_M"], constexprs["BLOCK_N"], constexprs["BLOCK_K"] * w.bits // 32
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    k_tiles = triton.cdiv(kp, block_kp)
    split_k = min(constexprs["SPLIT_K"], k_tiles)
    tiles_per_split = triton.cdiv(k_tiles, split_k)
    split_k = triton.cdiv(k_tiles, tiles_per_split)            # no empty split
    ws = locks = y
    if split_k > 1:
        buffers = _workspace(x.device, split_k * tiles * block_m * block_n, tiles)
        if buffers is None:     # inside a CUDA-graph capture that would need a bigger workspace
            split_k, tiles_per_split = 1, k_tiles
        else:
            ws, locks = buffers
    if split_k != constexprs["SPLIT_K"]:
        constexprs = dict(constexprs, SPLIT_K=split_k)
    _fused_gemm_kernel[(tiles, split_k)](x, w.qweight, w.scales, w.offsets, bias if bias is not None else y, y, ws,
                                         locks, m, n, k, kp, tiles_per_split * block_kp, x.stride(0), y.stride(0),
                                         **constexprs, **pdl_launch_args(x.device))
    return y
