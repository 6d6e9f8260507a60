"""Block-scaled FP8 linears on the GPU (DeepSeek-V3 / Qwen3-FP8 checkpoints: e4m3 weights with one fp32 scale per
``bn x bk`` tile, ``weight_scale_inv``; 128 x 128 in every published one).

A cuBLAS FP8 GEMM takes one scale per tensor or per row, not per tile, so these layers run a Triton GEMM:
1. ``per_token_group_quant_fp8``: the activations quantized in groups of ``bk`` columns, one scale per (row,
   group) (dynamic: amax / 448), so that a ``bk``-wide k tile of x and of W each carry one scale per row / column;
2. ``block_fp8_matmul``: for each k tile an fp8 x fp8 tensor-core dot into a fresh fp32 tile (at most ``bk`` = 128
   products: the Hopper FP8 MMA's reduced-precision accumulation never runs longer than that), scaled by the row's
   activation scale times the column block's weight scale and added to the fp32 accumulator.
The weights stay e4m3 (half the bf16 bytes: what the checkpoint is for) and every step reads them once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels.quant.fp8 import FP8_DTYPE, FP8_MAX, MIN_SCALE


@triton.jit
def _group_quant_kernel(X, Q, S, stride_x, stride_q, stride_s, min_scale, K: tl.constexpr, GROUP: tl.constexpr,
                        FP8_MAXV: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1)
    cols = group * GROUP + tl.arange(0, GROUP)
    mask = cols < K
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), axis=0) * (1.0 / FP8_MAXV), min_scale)
    q = tl.clamp(tl.math.div_rn(x, scale), -FP8_MAXV, FP8_MAXV)
    tl.store(Q + row * stride_q + cols, q.to(Q.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)
    tl.store(S + row * stride_s + group, scale)


def per_token_group_quant_fp8(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` (contiguous rows) -> fp8 ``[M, K]`` and fp32 scales ``[M, ceil(K / group)]``, one per row and
    ``group`` consecutive columns."""
    m, k = x.shape
    groups = triton.cdiv(k, group)
    q = torch.empty((m, k), dtype=FP8_DTYPE, device=x.device)
    s = torch.empty((m, groups), dtype=torch.float32, device=x.device)
    if m:
        _group_quant_kernel[(m, groups)](x, q, s, x.stride(0), q.stride(0), s.stride(0), MIN_SCALE, K=k, GROUP=group,
                                         FP8_MAXV=FP8_MAX, num_warps=1 if group <= 128 else 4)
    return q, s


def per_token_group_quant_fp8_torch(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference of ``per_token_group_quant_fp8`` in torch ops (tests; the CPU never runs W8A8)."""
    m, k = x.shape
    pad = -k % group
    xf = torch.nn.functional.pad(x.float(), (0, pad)).reshape(m, -1, group)
    scale = (xf.abs().amax(dim=2) / FP8_MAX).clamp(min=MIN_SCALE)
    q = (xf / scale[:, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).reshape(m, -1)[:, :k]
    return q, scale


@triton.jit
def _block_fp8_matmul_kernel(A, AS, W, WS, Bias, Y, M, stride_a, stride_as, stride_w, stride_ws, stride_y,
                             N: tl.constexpr, K: tl.constexpr, GN: tl.constexpr, GK: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                             HAS_BIAS: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    rows = offs_m.to(tl.int64)
    cols = offs_n.to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < K
        a = tl.load(A + rows[:, None] * stride_a + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(W + cols[None, :] * stride_w + k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        a_scale = tl.load(AS + rows * stride_as + k0 // GK, mask=m_ok, other=0.0)
        w_scale = tl.load(WS + (offs_n // GN).to(tl.int64) * stride_ws + k0 // GK, mask=n_ok, other=0.0)
        part = tl.dot(a, w)          # <= GK products: within the fp8 MMA's accumulation precision
        acc += part * a_scale[:, None] * w_scale[None, :]
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows[:, None] * stride_y + offs_n[None, :], acc.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def _tiles(m: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, warps, stages) by row count: a decode step streams the weight in wide-N tiles; a prefill
    step takes GEMM-shaped tiles."""
    if m <= 16:
        return 16, 64, 4, 4
    if m <= 64:
        return 64, 64, 4, 4
    return 128, 128, 8, 3


def block_fp8_matmul(qx: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                     block: tuple[int, int], bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """``(qx * x_scale) @ (weight * weight_scale)^T (+ bias)`` in ``out_dtype``: ``qx [M, K]`` fp8 with
    ``x_scale [M, ceil(K / bk)]``, ``weight [N, K]`` fp8 with ``weight_scale [ceil(N / bn), ceil(K / bk)]``;
    ``bk`` a power of two of at least 32 (every k tile within one scale column; the fp8 MMA's k is 32)."""
    m, k = qx.shape
    n = weight.shape[0]
    bn, bk = block
    y = torch.empty((m, n), dtype=out_dtype, device=qx.device)
    if m == 0:
        return y
    block_m, block_n, warps, stages = _tiles(m)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _block_fp8_matmul_kernel[grid](qx, x_scale, weight, weight_scale, bias if bias is not None else y, y, m,
                                   qx.stride(0), x_scale.stride(0), weight.stride(0), weight_scale.stride(0),
                                   y.stride(0), N=n, K=k, GN=bn, GK=bk, BLOCK_M=block_m, BLOCK_N=block_n,
                                   BLOCK_K=min(bk, 128), HAS_BIAS=bias is not None, num_warps=warps,
                                   num_stages=stages)
    return y


def block_fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, block: tuple[int, int],
                     bias: torch.Tensor | None) -> torch.Tensor:
    """A block-scaled FP8 layer's ``x @ W^T (+ bias)`` for ``x [..., K]`` in bf16 / fp16 / fp32 (W8A8: x quantized
    per token and ``bk``-column group)."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1 or x2.stride(0) != k:
        x2 = x2.contiguous()
    qx, sx = per_token_group_quant_fp8(x2, block[1])
    y = block_fp8_matmul(qx, sx, weight, weight_scale, block, bias, x.dtype)
    return y.reshape(*x.shape[:-1], weight.shape[0])
