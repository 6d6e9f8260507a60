"""LoRA deltas of decode-sized steps: ``y[t] += B_s (A_s x[t])`` with ``s`` the adapter slot of token ``t``.

The torch form (pagedllm/lora/layers.py) multiplies every token by every slot's A and B, masks the slots the token
does not use and adds: two cuBLAS GEMMs, a mask multiply and an add per adapted projection. At decode sizes those
shapes (a few rows against a [slots * rank, K] or [N, slots * rank] matrix) are all latency: a Qwen2.5-1.5B step at
batch 1 has 112 adapted projections, and their deltas took as long as the rest of the step (H100, session 26:
339 against 667 tok/s without adapters). Here two kernels per projection, each reading only the token's own slot
(vLLM's punica "shrink" and "expand"):

* shrink: ``xa[t, k_split, p * R + r] = x[t, k-slice] . A[(s * P + p) * R + r, k-slice]`` for each part ``p`` of a
  fused projection (QKV: 3, gate/up: 2). K is split over programs so a long K (down_proj's 8960) is not one
  program's serial loop; the partial sums go to a small fp32 workspace, no atomics, no memset.
* expand: ``y[t, n] += sum_r (sum_split xa[t, split, p(n) * R + r]) * B[n, (s * P + p(n)) * R + r]``, in place,
  ``p(n)`` from the parts' row offsets; a token without an adapter (``s = -1``) leaves ``y`` alone.

``R`` is the slots' padded rank (max_lora_rank); unused rank columns of a slot are zero, as in the torch form.
CUDA-graph safe: no host syncs; the launch shapes depend only on the tensors' shapes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_SHRINK_BLOCK_K = 128
_SHRINK_K_PER_PROGRAM = 1024


@triton.jit
def _lora_shrink_kernel(X, A, Slots, XA, K, stride_x, stride_a, K_PER_SPLIT,
                        P: tl.constexpr, R: tl.constexpr, SPLIT: tl.constexpr, BLOCK_R: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    t = tl.program_id(0)
    p = tl.program_id(1)
    split = tl.program_id(2)
    slot = tl.load(Slots + t)
    if slot < 0:
        return                         # the expand kernel skips this token: nothing of it is read
    offs_r = tl.arange(0, BLOCK_R)
    rows = (slot * P + p) * R + offs_r
    acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
    k_start = split * K_PER_SPLIT
    for k0 in range(k_start, k_start + K_PER_SPLIT, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        in_k = kk < K
        x = tl.load(X + t.to(tl.int64) * stride_x + kk, mask=in_k, other=0.0).to(tl.float32)
        a = tl.load(A + rows[:, None].to(tl.int64) * stride_a + kk[None, :],
                    mask=(offs_r < R)[:, None] & in_k[None, :], other=0.0).to(tl.float32)
        acc += a * x[None, :]
    xa = tl.sum(acc, axis=1)
    tl.store(XA + (t * SPLIT + split) * (P * R) + p * R + offs_r, xa, mask=offs_r < R)


@triton.jit
def _lora_expand_kernel(XA, B, Slots, Y, N, stride_b, stride_y, OFF1, OFF2,
                        P: tl.constexpr, R: tl.constexpr, SPLIT: tl.constexpr, BLOCK_R: tl.constexpr,
                        BLOCK_N: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(Slots + t)
    if slot < 0:
        return
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_n = offs_n < N
    part = (offs_n >= OFF1).to(tl.int32) + (offs_n >= OFF2).to(tl.int32)      # OFFs past N for fewer parts
    offs_r = tl.arange(0, BLOCK_R)
    m2 = in_n[:, None] & (offs_r < R)[None, :]
    xa_cols = part[:, None] * R + offs_r[None, :]
    xa = tl.zeros([BLOCK_N, BLOCK_R], dtype=tl.float32)
    for s in tl.static_range(SPLIT):
        xa += tl.load(XA + (t * SPLIT + s) * (P * R) + xa_cols, mask=m2, other=0.0)
    b_cols = (slot * P + part)[:, None] * R + offs_r[None, :]
    b = tl.load(B + offs_n[:, None].to(tl.int64) * stride_b + b_cols, mask=m2, other=0.0).to(tl.float32)
    delta = tl.sum(b * xa, axis=1)
    y_ptr = Y + t.to(tl.int64) * stride_y + offs_n
    y = tl.load(y_ptr, mask=in_n, other=0.0)
    tl.store(y_ptr, (y.to(tl.float32) + delta).to(Y.dtype.element_ty), mask=in_n)


def lora_delta_(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slots: torch.Tensor,
                part_offsets: list[int], max_rank: int) -> torch.Tensor:
    """``y`` (2-D, [T, N], updated in place and returned) plus each token's adapter delta. ``x`` [T, K]; ``a``
    [slots * P * max_rank, K] and ``b`` [N, slots * P * max_rank] as LoRASlots stores them (scaling in B);
    ``slots`` [T] int32, -1 for no adapter; ``part_offsets``: the first row of each of the P parts in ``y``."""
    tokens, k = x.shape
    n = y.shape[1]
    num_parts = len(part_offsets)
    assert 1 <= num_parts <= 3, "the expand kernel tells up to three parts apart (QKV)"
    if tokens == 0:
        return y
    if x.stride(1) != 1:
        x = x.contiguous()
    split = triton.cdiv(k, _SHRINK_K_PER_PROGRAM)
    k_per_split = triton.cdiv(triton.cdiv(k, split), _SHRINK_BLOCK_K) * _SHRINK_BLOCK_K
    block_r = max(16, triton.next_power_of_2(max_rank))
    xa = torch.empty((tokens, split, num_parts * max_rank), dtype=torch.float32, device=x.device)
    _lora_shrink_kernel[(tokens, num_parts, split)](
        x, a, slots, xa, k, x.stride(0), a.stride(0), k_per_split, P=num_parts, R=max_rank, SPLIT=split,
        BLOCK_R=block_r, BLOCK_K=_SHRINK_BLOCK_K)
    offsets = list(part_offsets[1:]) + [n + 1] * (3 - num_parts)     # parts 2 and 3 start past N when absent
    block_n = max(16, min(128, 4096 // block_r))
    _lora_expand_kernel[(tokens, triton.cdiv(n, block_n))](
        xa, b, slots, y, n, b.stride(0), y.stride(0), offsets[0], offsets[1], P=num_parts, R=max_rank,
        SPLIT=split, BLOCK_R=block_r, BLOCK_N=block_n)
    return y
