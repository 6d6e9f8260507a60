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

From ``_DOT_MIN_TOKENS`` tokens the per-token programs re-read their slot's A and B once per token (64 decode rows:
~9 µs a projection on an H100, against ~3 µs at one row), so there the pair works on tiles of tokens on the tensor
cores instead, over every slot's columns with the other slots' masked out (the torch form's arithmetic, in two
kernels): the shrink tiles [tokens, slot columns] over a pipelined K loop, split over programs, the mask applied in
its epilogue; the expand sums the splits and adds ``xa @ B_all^T`` (B_all is zero outside each part's own columns)
into ``y`` in place. Used while all slots' columns fit one tile (``max_loras * parts * rank <= 256``).

``R`` is the slots' padded rank (max_lora_rank); unused rank columns of a slot are zero, as in the torch form.
CUDA-graph safe: no host syncs; the launch shapes depend only on the tensors' shapes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels.pdl import pdl_launch_args, pdl_wait
from pagedllm.kernels.triton_attention import _mma      # tl.dot, fp32 products for fp32 operands

# From this many tokens the tensor-core pair (below: the per-token pair), while all slot columns fit its tile; its
# token tiles are at most _DOT_BLOCK_M rows (how many tokens reach these kernels at all is lora/layers.py's choice).
_DOT_MIN_TOKENS = 17
_DOT_MAX_COLS = 256
_DOT_BLOCK_M = 64
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


@triton.jit
def _lora_shrink_dot_kernel(X, A, Slots, XA, T, K, C, stride_x, stride_a, K_PER_SPLIT,
                            COLS_PER_SLOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                            BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    in_m = offs_m < T
    in_c = offs_c < C
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    pdl_wait(PDL)
    k_start = split * K_PER_SPLIT
    for k0 in range(k_start, k_start + K_PER_SPLIT, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        in_k = kk < K
        x = tl.load(X + offs_m[:, None].to(tl.int64) * stride_x + kk[None, :], mask=in_m[:, None] & in_k[None, :],
                    other=0.0)
        a = tl.load(A + offs_c[None, :].to(tl.int64) * stride_a + kk[:, None], mask=in_c[None, :] & in_k[:, None],
                    other=0.0)
        acc += _mma(x.to(a.dtype), a)
    slots = tl.load(Slots + offs_m, mask=in_m, other=-1)
    acc = tl.where(slots[:, None] == (offs_c // COLS_PER_SLOT)[None, :], acc, 0.0)
    tl.store(XA + (offs_m[:, None] * num_splits + split) * C + offs_c[None, :], acc,
             mask=in_m[:, None] & in_c[None, :])


@triton.jit
def _lora_expand_dot_kernel(XA, B, Y, T, N, C, SPLIT, stride_b, stride_y, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, C_PAD: tl.constexpr, PDL: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, C_PAD)
    in_m = offs_m < T
    in_n = offs_n < N
    in_c = offs_c < C
    b = tl.load(B + offs_n[None, :].to(tl.int64) * stride_b + offs_c[:, None], mask=in_c[:, None] & in_n[None, :],
                other=0.0)                                                       # [C_PAD, BLOCK_N], a constant
    pdl_wait(PDL)
    xa = tl.zeros([BLOCK_M, C_PAD], dtype=tl.float32)
    xa_ptr = XA + offs_m[:, None] * SPLIT * C + offs_c[None, :]
    for s in range(SPLIT):
        xa += tl.load(xa_ptr + s * C, mask=in_m[:, None] & in_c[None, :], other=0.0)
    delta = _mma(xa.to(b.dtype), b)
    y_ptr = Y + offs_m[:, None].to(tl.int64) * stride_y + offs_n[None, :]
    mask = in_m[:, None] & in_n[None, :]
    y = tl.load(y_ptr, mask=mask, other=0.0)
    tl.store(y_ptr, (y.to(tl.float32) + delta).to(Y.dtype.element_ty), mask=mask)


def _lora_delta_dot_(x, y, a, b, slots, cols_per_slot: int) -> torch.Tensor:
    """The tensor-core pair (from 17 tokens): ``lora_delta_``'s arguments, ``cols_per_slot`` = parts x max_rank."""
    tokens, k = x.shape
    n, cols = y.shape[1], a.shape[0]
    block_m = min(_DOT_BLOCK_M, max(16, triton.next_power_of_2(tokens)))
    block_c = min(64, max(16, triton.next_power_of_2(cols)))
    block_k = 64 if block_m * block_c > 2048 else 128
    k_per_split = 4 * block_k                          # four pipelined K steps a program
    split = triton.cdiv(k, k_per_split)
    xa = torch.empty((tokens, split, cols), dtype=torch.float32, device=x.device)
    pdl = pdl_launch_args(x.device)
    _lora_shrink_dot_kernel[(triton.cdiv(tokens, block_m), triton.cdiv(cols, block_c), split)](
        x, a, slots, xa, tokens, k, cols, x.stride(0), a.stride(0), k_per_split, COLS_PER_SLOT=cols_per_slot,
        BLOCK_M=block_m, BLOCK_C=block_c, BLOCK_K=block_k, **pdl)
    c_pad = max(16, triton.next_power_of_2(cols))
    block_n = max(16, min(128, 8192 // c_pad))
    _lora_expand_dot_kernel[(triton.cdiv(tokens, block_m), triton.cdiv(n, block_n))](
        xa, b, y, tokens, n, cols, split, b.stride(0), y.stride(0), BLOCK_M=block_m, BLOCK_N=block_n, C_PAD=c_pad,
        **pdl)
    return y


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
    if tokens >= _DOT_MIN_TOKENS and a.shape[0] <= _DOT_MAX_COLS:
        return _lora_delta_dot_(x, y, a, b, slots, num_parts * max_rank)
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
