"""LoRA deltas of decode-sized steps: ``y[t] += B_s (A_s x[t])`` with ``s`` the adapter slot of token ``t``.

The torch form (pagedllm/lora/layers.py) multiplies every token by every slot's A and B, masks the slots the token
does not use and adds: two cuBLAS GEMMs, a mask multiply and an add per adapted projection. At decode sizes those
shapes (a few rows against a [slots * rank, K] or [N, slots * rank] matrix) are all latency: a Qwen2.5-1.5B step at
batch 1 has 112 adapted projections, and their deltas took as long as the rest of the step (H100, session 26:
339 against 667 tok/s without adapters). Here two kernels per projection, each reading only the token's own slot
(vLLM's punica "shrink" and "expand"):

* shrink: ``xa[t, k_split, p * R + r] = x[t, k-slice] . A[(s * P + p) * R + r, k-slice]`` for each part ``p`` of a
  fused projection (QKV: 3, gate/up: 2). Each program takes one ``BLOCK_K`` slice of K in a single load (a loop of
  plain loads is not software-pipelined: a 1536-long K in 128-wide steps was a chain of dependent HBM round trips);
  the partial sums go to a small fp32 workspace, no atomics, no memset.
* expand: ``y[t, n] += sum_r (sum_split xa[t, split, p(n) * R + r]) * B[n, (s * P + p(n)) * R + r]``, in place,
  ``p(n)`` from the parts' row offsets; a token without an adapter (``s = -1``) leaves ``y`` alone.

Both join the decode step's PDL chain (kernels/pdl.py): the adapter weights (constants) and the token's slot
(copied before the step) are loaded before ``pdl_wait``, the activations after it.

``R`` is the slots' padded rank (max_lora_rank); unused rank columns of a slot are zero, as in the torch form.
CUDA-graph safe: no host syncs; the launch shapes depend only on the tensors' shapes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels.pdl import pdl_launch_args, pdl_wait

# A shrink program's [rank, BLOCK_K] tile of A, at most ~8K elements in registers (rank 16-32: 256 wide).
_SHRINK_TILE = 8192


@triton.jit
def _lora_shrink_kernel(X, A, Slots, XA, K, stride_x, stride_a,
                        P: tl.constexpr, R: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                        PDL: tl.constexpr):
    t = tl.program_id(0)
    p = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    slot = tl.load(Slots + t)
    if slot >= 0:           # else the expand kernel skips this token: nothing of it is read
        offs_r = tl.arange(0, BLOCK_R)
        kk = split * BLOCK_K + tl.arange(0, BLOCK_K)
        in_k = kk < K
        rows = (slot * P + p) * R + offs_r
        a = tl.load(A + rows[:, None].to(tl.int64) * stride_a + kk[None, :],
                    mask=(offs_r < R)[:, None] & in_k[None, :], other=0.0).to(tl.float32)
        pdl_wait(PDL)
        x = tl.load(X + t.to(tl.int64) * stride_x + kk, mask=in_k, other=0.0).to(tl.float32)
        xa = tl.sum(a * x[None, :], axis=1)
        tl.store(XA + (t * num_splits + split) * (P * R) + p * R + offs_r, xa, mask=offs_r < R)
    else:
        pdl_wait(PDL)


@triton.jit
def _lora_expand_kernel(XA, B, Slots, Y, N, SPLIT, stride_b, stride_y, OFF1, OFF2,
                        P: tl.constexpr, R: tl.constexpr, SPLIT_PAD: tl.constexpr, BLOCK_R: tl.constexpr,
                        BLOCK_N: tl.constexpr, PDL: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(Slots + t)
    if slot >= 0:
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        in_n = offs_n < N
        part = (offs_n >= OFF1).to(tl.int32) + (offs_n >= OFF2).to(tl.int32)      # OFFs past N for fewer parts
        offs_r = tl.arange(0, BLOCK_R)
        in_r = offs_r < R
        b_cols = (slot * P + part)[:, None] * R + offs_r[None, :]
        b = tl.load(B + offs_n[:, None].to(tl.int64) * stride_b + b_cols, mask=in_n[:, None] & in_r[None, :],
                    other=0.0).to(tl.float32)
        pdl_wait(PDL)
        offs_s = tl.arange(0, SPLIT_PAD)
        xa_rows = XA + (t * SPLIT + offs_s)[:, None] * (P * R) + offs_r[None, :]
        xa_mask = (offs_s < SPLIT)[:, None] & in_r[None, :]
        delta = tl.zeros([BLOCK_N], dtype=tl.float32)
        for q in tl.static_range(P):
            xa = tl.sum(tl.load(xa_rows + q * R, mask=xa_mask, other=0.0), axis=0)      # the splits' sum
            delta += tl.where(part == q, tl.sum(b * xa[None, :], axis=1), 0.0)
        y_ptr = Y + t.to(tl.int64) * stride_y + offs_n
        y = tl.load(y_ptr, mask=in_n, other=0.0)
        tl.store(y_ptr, (y.to(tl.float32) + delta).to(Y.dtype.element_ty), mask=in_n)
    else:
        pdl_wait(PDL)


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
    block_r = max(16, triton.next_power_of_2(max_rank))
    block_k = max(32, min(256, _SHRINK_TILE // block_r))
    split = triton.cdiv(k, block_k)
    xa = torch.empty((tokens, split, num_parts * max_rank), dtype=torch.float32, device=x.device)
    pdl = pdl_launch_args(x.device)
    _lora_shrink_kernel[(tokens, num_parts, split)](
        x, a, slots, xa, k, x.stride(0), a.stride(0), P=num_parts, R=max_rank, BLOCK_R=block_r,
        BLOCK_K=block_k, **pdl)
    offsets = list(part_offsets[1:]) + [n + 1] * (3 - num_parts)     # parts 2 and 3 start past N when absent
    block_n = max(16, min(128, 4096 // block_r))
    _lora_expand_kernel[(tokens, triton.cdiv(n, block_n))](
        xa, b, slots, y, n, split, b.stride(0), y.stride(0), offsets[0], offsets[1], P=num_parts, R=max_rank,
        SPLIT_PAD=max(2, triton.next_power_of_2(split)), BLOCK_R=block_r, BLOCK_N=block_n, **pdl)
    return y
