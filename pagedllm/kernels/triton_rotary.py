"""Rotary embedding of Q and K in place, one Triton program per token (NeoX / HF "rotate_half" layout).

The eager version launches ~10 kernels per layer (gathers of cos/sin, slices, muls, cat) for a few KB of data;
this is one launch that reads each element once. Math in fp32, rounded once to the activation dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_rows(X, t, stride_t, stride_h, cos, sin, d, dm, H: tl.constexpr, HALF: tl.constexpr,
                 BLOCK_H: tl.constexpr):
    h = tl.arange(0, BLOCK_H)
    m = (h < H)[:, None] & dm[None, :]
    ptr = X + t * stride_t + h[:, None] * stride_h + d[None, :]
    x1 = tl.load(ptr, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(ptr + HALF, mask=m, other=0.0).to(tl.float32)
    tl.store(ptr, (x1 * cos - x2 * sin).to(X.dtype.element_ty), mask=m)
    tl.store(ptr + HALF, (x2 * cos + x1 * sin).to(X.dtype.element_ty), mask=m)


@triton.jit
def _rotary_kernel(Q, K, Cos, Sin, Pos, stride_qt, stride_qh, stride_kt, stride_kh, stride_c,
                   HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr, BLOCK_HQ: tl.constexpr,
                   BLOCK_HKV: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(Pos + t).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dm = d < HALF
    cos = tl.load(Cos + pos * stride_c + d, mask=dm, other=0.0)[None, :]
    sin = tl.load(Sin + pos * stride_c + d, mask=dm, other=0.0)[None, :]
    _rotate_rows(Q, t, stride_qt, stride_qh, cos, sin, d, dm, HQ, HALF, BLOCK_HQ)
    _rotate_rows(K, t, stride_kt, stride_kh, cos, sin, d, dm, HKV, HALF, BLOCK_HKV)


def rotary_inplace(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor) -> None:
    """Rotate ``q`` ``[T, Hq, D]`` and ``k`` ``[T, Hkv, D]`` in place (the first ``2 * cos.shape[1]`` dims of each
    head). ``cos``/``sin``: fp32 ``[max_pos, rotary_dim / 2]``. Strided views (slices of a fused QKV) are fine."""
    num_tokens, hq, _ = q.shape
    hkv = k.shape[1]
    half = cos.shape[1]
    assert q.stride(2) == 1 and k.stride(2) == 1 and cos.stride(1) == 1
    if num_tokens == 0:
        return
    _rotary_kernel[(num_tokens,)](q, k, cos, sin, positions, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                                  cos.stride(0), HQ=hq, HKV=hkv, HALF=half, BLOCK_HQ=triton.next_power_of_2(hq),
                                  BLOCK_HKV=triton.next_power_of_2(hkv), BLOCK_D=triton.next_power_of_2(half),
                                  num_warps=4)
