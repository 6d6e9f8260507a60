"""Mixture-of-experts MLP on the GPU: every token's ``top_k`` experts in two grouped GEMM launches, no host sync.

The eager form (model/layers/moe.py) runs one expert at a time over the tokens routed to it, which needs the routing
on the host (a sync per layer) and so rules out CUDA graphs. Here the routing stays on the GPU:

1. ``align_to_experts`` sorts the ``T * top_k`` (token, expert) slots by expert and pads each expert's run to a
   multiple of ``BLOCK_M`` rows, in torch ops of fixed output size (the padded length is bounded by
   ``T * top_k + E * (BLOCK_M - 1)``): each block of ``BLOCK_M`` sorted slots belongs to one expert, or to none (a
   tail block past the last expert's run, whose programs return at once).
2. ``_moe_gate_up_kernel``: for a block, the rows of ``x`` its slots name times that expert's gate and up rows,
   ``silu(gate) * up`` in the epilogue, written to the slot's row of ``h [T * top_k, I]``.
3. ``_moe_down_kernel``: ``h`` rows times the expert's down rows, scaled by the slot's routing weight, written to
   the slot's row of ``y [T * top_k, H]``; the token's output is the fp32 sum over its ``top_k`` rows.

Each program reads one expert's weight tile once for up to ``BLOCK_M`` tokens; at decode (a few tokens, most experts
idle) the launch reads only the chosen experts' weights, which is what makes a MoE step cheap.

The weights may be dense, FP8, packed integers or MXFP4 (gpt-oss's experts): the quantized forms are scaled up to the
activations' dtype inside the K loop (weight-only; fp32 accumulation), each one a constexpr specialization of the
weight-tile load (``WFMT``), so a format adds no instruction to the others' kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def align_to_experts(top_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``top_ids [T, k]`` -> ``(sorted_slots [P], block_experts [P // block_m])``: the flat slot indices (``t * k +
    j``) grouped by expert, each expert's group padded with the sentinel ``T * k`` to a multiple of ``block_m``, and
    the expert of each block (-1 for a block past the last group). ``P`` depends only on ``T``, ``k``, the expert
    count and ``block_m`` (CUDA graphs capture it)."""
    flat = top_ids.reshape(-1)
    slots = flat.numel()
    device = flat.device
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device)
    counts.index_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    start = torch.cumsum(counts, 0) - counts
    order = torch.argsort(flat, stable=True)
    expert_of = flat[order]
    dest = (padded_end - padded)[expert_of] + torch.arange(slots, device=device) - start[expert_of]
    length = triton.cdiv(slots + num_experts * (block_m - 1), block_m) * block_m
    sorted_slots = torch.full((length,), slots, dtype=torch.int32, device=device)
    sorted_slots[dest] = order.to(torch.int32)
    block_start = torch.arange(0, length, block_m, device=device)
    block_experts = torch.searchsorted(padded_end, block_start, right=True)
    block_experts = torch.where(block_experts < num_experts, block_experts, -1).to(torch.int32)
    return sorted_slots, block_experts


@triton.jit
def _block_slots(SortedSlots, BlockExperts, num_slots, BLOCK_M: tl.constexpr):
    """This program's block: its expert (-1: an idle tail block), its ``BLOCK_M`` slots and which are real."""
    pid_m = tl.program_id(0)
    expert = tl.load(BlockExperts + pid_m).to(tl.int64)
    slots = tl.load(SortedSlots + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    return expert, slots, slots < num_slots


@triton.jit
def _expert_columns(W, S, O, expert, stride_we, stride_se, N, BLOCK_N: tl.constexpr):
    """This program's ``BLOCK_N`` output columns of ``N`` (and which exist) and its expert's weight, scale and
    offset base pointers (the gate/up and down kernels alike)."""
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_n, offs_n < N, W + expert * stride_we, S + expert * stride_se, O + expert * stride_se


# ``WFMT`` of MXFP4 weights (the other formats: 0 dense, 1 fp8, 4 / 8 packed integers of that many bits)
MXFP4_FORMAT: tl.constexpr = tl.constexpr(2)


@triton.jit
def _mxfp4_tile(w_base, s_base, rows, rows_ok, k0, K, stride_w, stride_s, dtype, BLOCK_K: tl.constexpr):
    """The ``[BLOCK_N, BLOCK_K]`` tile (output features by k: the dot's first operand, ``_dot``) of an MXFP4 weight
    (OCP MX: e2m1 values, one e8m0 scale per 32 of K; model/quantization/mxfp4.py) at columns ``k0 ..``, in
    ``dtype``, exactly the dequantized values, its k in the order ``_input_columns`` gives the activations for MXFP4
    (the low 3 bits of k reversed). Bytes ``[N, K / 2]`` (``stride_w`` between rows; two values a byte, the even k
    in the low nibble) read as int32 words, 8 values each, and scale bytes ``[N, K / 32]`` (``stride_s``).

    Each code goes into an fp16's bits (sign to bit 15, exponent and mantissa bits to 11..9: the value times 2 **
    -14, e2m1's subnormal 0.5 included), two at a time: one shift and mask of a word places nibbles ``j`` and ``j +
    4`` (bytes ``j // 2`` and ``j // 2 + 2``) in its two halves. Then one fp32 multiply by ``2 ** (scale - 127 +
    14)``. SASS for sm_90 counted offline (Triton 3.6's ptxas, no GPU), instructions a weight in the K loop: 7.8 in
    gate/up's and 8.4 in down's at the decode tile (16 x 64 x 128, 4 warps), 7.7 / 8.5 at the 32- / 64-row tiles (a
    byte at a time instead of words: 10.0 and 10.5; ``tl.dot_scaled``'s Hopper emulation: 9.8; the bf16 kernels: 1.3
    and 2.0, which read 3.8x the bytes)."""
    G: tl.constexpr = BLOCK_K // 32
    BLOCK_N: tl.constexpr = rows.shape[0]
    groups = k0 // 32 + tl.arange(0, G)
    ok = rows_ok[:, None] & (groups * 32 < K)[None, :]                          # [BLOCK_N, G]
    rows = rows.to(tl.int64)
    words = tl.load(w_base.to(tl.pointer_type(tl.int32)) + rows[:, None, None] * (stride_w // 4)
                    + groups[None, :, None] * 4 + tl.arange(0, 4)[None, None, :], mask=ok[:, :, None], other=0)
    s = tl.load(s_base + rows[:, None] * stride_s + groups[None, :], mask=ok, other=0)
    scale = tl.exp2(s.to(tl.float32) - 113.0)[:, :, None, None, None, None]
    MAG: tl.constexpr = 0x0E000E00          # exponent and mantissa bits of both halves
    SIGN: tl.constexpr = -0x7FFF8000        # 0x80008000 (both halves' sign bits) as an int32
    j0 = ((words << 9) & MAG) | ((words << 12) & SIGN)      # [BLOCK_N, G, 4]: nibbles 0 and 4 of each word
    j1 = ((words << 5) & MAG) | ((words << 8) & SIGN)       # 1 and 5
    j2 = ((words << 1) & MAG) | ((words << 4) & SIGN)       # 2 and 6
    j3 = ((words >> 3) & MAG) | (words & SIGN)              # 3 and 7
    pairs = tl.join(tl.join(j0, j1), tl.join(j2, j3))       # [.., 2 (i), 2 (j)]: nibbles i + 2 j and i + 2 j + 4
    halves = tl.join(pairs.to(tl.int16), (pairs >> 16).to(tl.int16))      # [.., i, j, h]: nibble i + 2 j + 4 h
    w = (halves.to(tl.float16, bitcast=True).to(tl.float32) * scale).to(dtype)
    return tl.reshape(w, [BLOCK_N, BLOCK_K])     # column 8 q + 4 i + 2 j + h holds k = 8 q + i + 2 j + 4 h


@triton.jit
def _weight_tile(w_base, s_base, o_base, rows, rows_ok, k, k_ok, k0, K, stride_w, stride_s, dtype,
                 WFMT: tl.constexpr, GN: tl.constexpr, GK: tl.constexpr):
    """The ``[BLOCK_K, BLOCK_N]`` tile of weight rows ``rows`` (output features) at columns ``k``, in ``dtype``
    (MXFP4: ``[BLOCK_N, BLOCK_K]``, see ``_dot``).
    ``WFMT`` 0: a dense ``[N, K]`` weight (``stride_w`` between rows). 1: fp8 ``[N, K]`` times its scale, one per
    ``GN`` rows x ``GK`` columns (per output channel: ``GN = 1, GK = K``; a block checkpoint's 128 x 128; a k tile
    never straddles two scale columns). 2 (``MXFP4_FORMAT``): MXFP4 bytes ``[N, K / 2]`` and scales ``[N, K / 32]``
    (``_mxfp4_tile``). 4 / 8: the canonical packed form (kernels/quant/packed.py): int32 words ``[K / (32 / WFMT),
    N]`` (``stride_w`` between word rows), ``q * scale + offset`` with one scale and offset row ``[N]`` per ``GK``
    (the group size) columns of K (``stride_s`` between group rows)."""
    if WFMT == MXFP4_FORMAT:
        w = _mxfp4_tile(w_base, s_base, rows, rows_ok, k0, K, stride_w, stride_s, dtype, k.shape[0])
    elif WFMT >= 4:
        PACK: tl.constexpr = 32 // WFMT
        words = tl.load(w_base + (k // PACK)[:, None].to(tl.int64) * stride_w + rows[None, :],
                        mask=k_ok[:, None] & rows_ok[None, :], other=0)
        q = (words >> ((k % PACK) * WFMT)[:, None]) & ((1 << WFMT) - 1)
        group = k0 // GK
        scale = tl.load(s_base + group * stride_s + rows, mask=rows_ok, other=0.0).to(tl.float32)
        offset = tl.load(o_base + group * stride_s + rows, mask=rows_ok, other=0.0).to(tl.float32)
        w = (q.to(tl.float32) * scale[None, :] + offset[None, :]).to(dtype)
    else:
        w = tl.load(w_base + rows[None, :].to(tl.int64) * stride_w + k[:, None],
                    mask=k_ok[:, None] & rows_ok[None, :], other=0.0)
        if WFMT == 1:
            scale = tl.load(s_base + (rows // GN).to(tl.int64) * stride_s + k0 // GK, mask=rows_ok, other=0.0)
            w = (w.to(tl.float32) * scale[None, :]).to(dtype)
    return w


@triton.jit
def _dot(x, w, acc, PRECISION: tl.constexpr, WFMT: tl.constexpr):
    """``acc + x @ w`` for ``_weight_tile``'s ``w``. MXFP4 (``_mxfp4_tile``): the transposed product, ``acc^T + w
    @ x^T`` with ``acc^T [BLOCK_N, BLOCK_M]``: the unpacked tile is the dot's first operand, taken from registers;
    as the second (a Hopper wgmma operand in shared memory) Triton 3.6 could not place the 64-row tile's
    transposed reshape there (sm_90 compile: "Illegal shared layout", TritonGPUOptimizeDotOperands)."""
    if WFMT == MXFP4_FORMAT:
        acc = tl.dot(w, tl.trans(x), acc, input_precision=PRECISION)
    else:
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _acc_zeros(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WFMT: tl.constexpr):
    """The K loop's accumulator: ``[BLOCK_M, BLOCK_N]``, or MXFP4's transposed one (``_dot``)."""
    if WFMT == MXFP4_FORMAT:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    return acc


@triton.jit
def _acc_rows(acc, WFMT: tl.constexpr):
    """The accumulator as ``[BLOCK_M, BLOCK_N]`` (MXFP4's transposed back once, after the K loop)."""
    if WFMT == MXFP4_FORMAT:
        acc = tl.trans(acc)
    return acc


@triton.jit
def _input_columns(Perm, expert, k, k_ok, K: tl.constexpr, HAS_PERM: tl.constexpr, WFMT: tl.constexpr = 0):
    """The activation columns that weight rows ``k`` multiply: ``k`` itself, or with ``HAS_PERM`` (GPTQ
    ``desc_act``: each expert's rows were sorted by group at load) that expert's ``Perm [E, K]`` entries, as the
    dense layer's ``x[:, perm]``; MXFP4 tiles (``_mxfp4_tile``) come with the low 3 bits of k reversed."""
    if HAS_PERM:
        return tl.load(Perm + expert * K + k, mask=k_ok, other=0)     # int32, as k (one return type)
    if WFMT == MXFP4_FORMAT:
        t = k & 7
        return (k - t) + ((t >> 2) | (t & 2) | ((t & 1) << 2))
    return k


@triton.jit
def _moe_gate_up_kernel(X, W13, S13, O13, P13, H, SortedSlots, BlockExperts, B13, stride_x, stride_we, stride_wn,
                        stride_se, stride_sn, stride_h, stride_be, num_slots, K: tl.constexpr, I: tl.constexpr,
                        TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        PRECISION: tl.constexpr, WFMT: tl.constexpr, GN: tl.constexpr, GK: tl.constexpr,
                        HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr = False, SWIGLU_ALPHA: tl.constexpr = 0.0,
                        SWIGLU_LIMIT: tl.constexpr = 0.0):
    expert, slots, valid = _block_slots(SortedSlots, BlockExperts, num_slots, BLOCK_M)
    if expert < 0:
        return
    tokens = tl.where(valid, slots // TOP_K, 0).to(tl.int64)
    offs_n, n_ok, w_base, s_base, o_base = _expert_columns(W13, S13, O13, expert, stride_we, stride_se, I, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc_g = _acc_zeros(BLOCK_M, BLOCK_N, WFMT)
    acc_u = _acc_zeros(BLOCK_M, BLOCK_N, WFMT)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < K
        xk = _input_columns(P13, expert, k, k_ok, K, HAS_PERM, WFMT)
        x = tl.load(X + tokens[:, None] * stride_x + xk[None, :], mask=valid[:, None] & k_ok[None, :], other=0.0)
        wg = _weight_tile(w_base, s_base, o_base, offs_n, n_ok, k, k_ok, k0, K, stride_wn, stride_sn,
                          X.dtype.element_ty, WFMT, GN, GK)
        wu = _weight_tile(w_base, s_base, o_base, offs_n + I, n_ok, k, k_ok, k0, K, stride_wn, stride_sn,
                          X.dtype.element_ty, WFMT, GN, GK)
        acc_g = _dot(x, wg, acc_g, PRECISION, WFMT)
        acc_u = _dot(x, wu, acc_u, PRECISION, WFMT)
    # HF rounds gate and up to the model dtype before silu(gate) * up: the same here, so bf16 stays close to it.
    g = _acc_rows(acc_g, WFMT).to(H.dtype.element_ty).to(tl.float32)
    u = _acc_rows(acc_u, WFMT).to(H.dtype.element_ty).to(tl.float32)
    if HAS_BIAS:        # gpt-oss: each expert's gate and up biases ([E, 2I], gate then up), added in the model dtype
        b_row = B13 + expert * stride_be
        g = (g + tl.load(b_row + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]).to(
            H.dtype.element_ty).to(tl.float32)
        u = (u + tl.load(b_row + I + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]).to(
            H.dtype.element_ty).to(tl.float32)
    if SWIGLU_LIMIT > 0:    # gpt-oss's clamped SwiGLU: (clamp(up, -l, l) + 1) * g * sigmoid(alpha * g), g <= l
        g = tl.minimum(g, SWIGLU_LIMIT)
        u = tl.minimum(tl.maximum(u, -SWIGLU_LIMIT), SWIGLU_LIMIT)
        h = (u + 1.0) * (g * tl.sigmoid(g * SWIGLU_ALPHA))
    else:
        h = (g / (1.0 + tl.exp(-g))).to(H.dtype.element_ty).to(tl.float32) * u
    tl.store(H + slots[:, None].to(tl.int64) * stride_h + offs_n[None, :], h.to(H.dtype.element_ty),
             mask=valid[:, None] & n_ok[None, :])


@triton.jit
def _moe_down_kernel(Hin, W2, S2, O2, P2, Y, RouteWeights, SortedSlots, BlockExperts, B2, stride_h, stride_we,
                     stride_wn, stride_se, stride_sn, stride_y, stride_be, num_slots, K: tl.constexpr, N: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
                     WFMT: tl.constexpr, GN: tl.constexpr, GK: tl.constexpr, HAS_PERM: tl.constexpr,
                     HAS_BIAS: tl.constexpr = False):
    expert, slots, valid = _block_slots(SortedSlots, BlockExperts, num_slots, BLOCK_M)
    if expert < 0:
        return
    safe = tl.where(valid, slots, 0).to(tl.int64)
    offs_n, n_ok, w_base, s_base, o_base = _expert_columns(W2, S2, O2, expert, stride_we, stride_se, N, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = _acc_zeros(BLOCK_M, BLOCK_N, WFMT)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < K
        hk = _input_columns(P2, expert, k, k_ok, K, HAS_PERM, WFMT)
        h = tl.load(Hin + safe[:, None] * stride_h + hk[None, :], mask=valid[:, None] & k_ok[None, :], other=0.0)
        w = _weight_tile(w_base, s_base, o_base, offs_n, n_ok, k, k_ok, k0, K, stride_wn, stride_sn,
                         Hin.dtype.element_ty, WFMT, GN, GK)
        acc = _dot(h, w, acc, PRECISION, WFMT)
    # HF: down_proj's output in the model dtype, times the routing weight (in the dtype the block gave it).
    route = tl.load(RouteWeights + safe, mask=valid, other=0.0).to(tl.float32)
    y = _acc_rows(acc, WFMT).to(Y.dtype.element_ty).to(tl.float32)
    if HAS_BIAS:        # gpt-oss: the expert's down bias, before the routing weight (HF's order)
        bias = tl.load(B2 + expert * stride_be + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        y = (y + bias[None, :]).to(Y.dtype.element_ty).to(tl.float32)
    y = y * route[:, None]
    tl.store(Y + safe[:, None] * stride_y + offs_n[None, :], y.to(Y.dtype.element_ty),
             mask=valid[:, None] & n_ok[None, :])


def _tiles(slots: int, num_experts: int, mxfp4: bool = False) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps) for ``slots`` routed rows over ``num_experts``: a decode step gives most
    experts one row or none (16 rows, the smallest tl.dot, wide N tiles to stream the weights); a prefill step gives
    each expert enough rows for a GEMM-shaped tile. MXFP4 at batch 1 (gpt-oss's top 4: 4 slots): 32-wide N tiles,
    twice the programs to hide the in-register unpack's latency. H100, one gpt-oss-20b layer (docs/perf.md,
    session 34): 239.6 -> 203.2 us at 1 token; at 16 tokens 510 -> 528 us (so only up to 4 slots)."""
    if mxfp4 and slots <= 4:
        return 16, 32, 128, 4
    per_expert = slots / num_experts
    if per_expert <= 16:
        return 16, 64, 128, 4
    if per_expert <= 64:
        return 32, 128, 64, 4
    return 64, 128, 64, 8


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, top_ids: torch.Tensor,
              top_weights: torch.Tensor, w13_scale: torch.Tensor | None = None, w2_scale: torch.Tensor | None = None,
              scale_group: tuple[int, int] | None = None, w13_offset: torch.Tensor | None = None,
              w2_offset: torch.Tensor | None = None, bits: int = 0, w13_perm: torch.Tensor | None = None,
              w2_perm: torch.Tensor | None = None, w13_bias: torch.Tensor | None = None,
              w2_bias: torch.Tensor | None = None, swiglu_limits: tuple[float, float] | None = None,
              mxfp4: bool = False) -> torch.Tensor:
    """``sum_j top_weights[t, j] * down_e(silu(gate_e(x_t)) * up_e(x_t))`` over each token's experts ``e =
    top_ids[t, j]``; ``x [T, H]``, ``w13 [E, 2I, H]`` (gate rows then up rows), ``w2 [E, H, I]``. Returns ``[T, H]``
    in ``x``'s dtype (the sum over the ``top_k`` rows in fp32). The weights are scaled up to ``x``'s dtype in the
    kernels (weight-only: activations are not quantized):

    * FP8 experts: ``w13`` / ``w2`` in e4m3 with fp32 scales ``[E, rows / gn, cols / gk]`` for ``scale_group =
      (gn, gk)`` (``gk = 0``: one scale per row, per output channel);
    * ``bits`` 4 / 8: each expert in the canonical packed form, ``w13 [E, H / pack, 2I]`` and ``w2 [E, I / pack,
      H]`` int32 words with ``*_scale`` / ``*_offset`` ``[E, K / group, N]`` for ``scale_group = (1, group)``
      (``group = 0``: one group per column, per output channel, whatever each matrix's K); with GPTQ's
      ``desc_act``, ``w13_perm [E, H]`` / ``w2_perm [E, I]`` int32: expert ``e``'s weight row ``k`` multiplies
      activation column ``perm[e, k]`` (its rows were sorted by group at load);
    * ``mxfp4``: OCP MXFP4 experts (gpt-oss), ``w13 [E, 2I, H / 2]`` and ``w2 [E, H, I / 2]`` uint8 (two e2m1
      values a byte, the lower-indexed one in the low nibble) with e8m0 scale bytes ``w13_scale [E, 2I, H / 32]``
      and ``w2_scale [E, H, I / 32]`` (one per 32 values of a row); ``H`` and ``I`` multiples of 32.

    gpt-oss's experts: ``w13_bias [E, 2I]`` (gate then up) and ``w2_bias [E, H]``, added to each product in the
    model dtype (the down bias before the routing weight), and ``swiglu_limits = (alpha, limit)``: the clamped SwiGLU
    ``(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g)``, ``g = min(gate, limit)``, instead of SiLU-and-mul."""
    tokens, hidden = x.shape
    num_experts = w13.shape[0]
    inter = (w13.shape[2] if bits else w13.shape[1]) // 2
    if mxfp4 and (w13.dtype != torch.uint8 or hidden % 32 or inter % 32 or w13.shape[2] * 2 != hidden
                  or w2_scale is None or w2_scale.shape[2] * 32 != inter
                  or any(w.stride(2) != 1 or w.stride(1) % 4 or w.stride(0) % 4 or w.data_ptr() % 4
                         for w in (w13, w2))):
        raise ValueError(f"fused_moe: MXFP4 experts take uint8 w13 [E, 2I, H / 2] / w2 [E, H, I / 2] (rows contiguous, "
                         f"read as 4-byte words) with their scales [E, 2I, H / 32] / [E, H, I / 32], H and I "
                         f"multiples of 32; got w13 {tuple(w13.shape)} {w13.dtype} for H = {hidden}.")
    top_k = top_ids.shape[1]
    slots = tokens * top_k
    if x.stride(-1) != 1:
        x = x.contiguous()
    block_m, block_n, block_k, warps = _tiles(slots, num_experts, mxfp4)
    fmt = MXFP4_FORMAT.value if mxfp4 else bits or (1 if w13_scale is not None else 0)
    gn, gk = scale_group if fmt and not mxfp4 else (1, 0)
    if gk:
        block_k = min(block_k, gk)     # a k tile within one scale column / group (the loader checked gk)
    sorted_slots, block_experts = align_to_experts(top_ids, num_experts, block_m)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    s13, s2 = (w13_scale, w2_scale) if fmt else (w13, w2)          # unread when dense
    o13, o2 = (w13_offset, w2_offset) if bits else (s13, s2)       # unread unless packed
    # stride(1) of a weight: between output features for dense / fp8 [E, N, K], between k words for packed [E, K/p, N]
    h = torch.empty((slots, inter), dtype=x.dtype, device=x.device)
    grid = (block_experts.numel(), triton.cdiv(inter, block_n))
    has_perm = w13_perm is not None
    if has_perm != (w2_perm is not None):
        raise ValueError("fused_moe: w13_perm and w2_perm come together")
    p13, p2 = (w13_perm, w2_perm) if has_perm else (sorted_slots, sorted_slots)      # unread without desc_act
    if (w13_bias is None) != (w2_bias is None):
        raise ValueError("fused_moe: w13_bias and w2_bias come together")
    b13, b2 = (w13_bias, w2_bias) if w13_bias is not None else (x, x)          # unread without biases
    alpha, limit = swiglu_limits if swiglu_limits is not None else (0.0, 0.0)
    _moe_gate_up_kernel[grid](x, w13, s13, o13, p13, h, sorted_slots, block_experts, b13, x.stride(0), w13.stride(0),
                              w13.stride(1), s13.stride(0), s13.stride(1), h.stride(0), b13.stride(0), slots,
                              K=hidden, I=inter, TOP_K=top_k, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                              PRECISION=precision, WFMT=fmt, GN=gn, GK=gk or hidden, HAS_PERM=has_perm,
                              HAS_BIAS=w13_bias is not None, SWIGLU_ALPHA=float(alpha), SWIGLU_LIMIT=float(limit),
                              num_warps=warps)
    y = torch.empty((slots, hidden), dtype=x.dtype, device=x.device)
    route = top_weights.reshape(-1).contiguous()
    grid = (block_experts.numel(), triton.cdiv(hidden, block_n))
    _moe_down_kernel[grid](h, w2, s2, o2, p2, y, route, sorted_slots, block_experts, b2, h.stride(0), w2.stride(0),
                           w2.stride(1), s2.stride(0), s2.stride(1), y.stride(0), b2.stride(0), slots, K=inter,
                           N=hidden, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, PRECISION=precision,
                           WFMT=fmt, GN=gn, GK=gk or inter, HAS_PERM=has_perm, HAS_BIAS=w2_bias is not None,
                           num_warps=warps)
    return y.view(tokens, top_k, hidden).sum(dim=1, dtype=torch.float32).to(x.dtype)
