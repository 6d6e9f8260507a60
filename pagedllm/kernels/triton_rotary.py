"""Rotary embedding of Q and K in place, one Triton program per token (NeoX / HF "rotate_half" layout).

The eager version launches ~10 kernels per layer (gathers of cos/sin, slices, muls, cat) for a few KB of data;
this is one launch that reads each element once. Math in fp32, rounded once to the activation dtype.

``rotary_store_kv`` also writes the token's rotated K and its V into the paged KV cache in the same program (what
``triton_attention.store_kv`` does as a separate launch): one kernel per layer less, which at decode batch 1 is
~1.5 µs of kernel plus its launch gap per layer (H200, Qwen2.5-1.5B profile in docs/perf.md).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.kernels.pdl import pdl_launch_args, pdl_wait
from pagedllm.kernels.triton_attention import write_token_kv


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
                   V, KCache, VCache, SlotMapping, stride_vt, stride_vh,
                   stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct, stride_vch,
                   HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr, BLOCK_HQ: tl.constexpr,
                   BLOCK_HKV: tl.constexpr, BLOCK_D: tl.constexpr,
                   STORE_KV: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_HD: tl.constexpr, PAGE: tl.constexpr,
                   PDL: tl.constexpr):
    pdl_wait(PDL)
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(Pos + t).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dm = d < HALF
    cos = tl.load(Cos + pos * stride_c + d, mask=dm, other=0.0)[None, :]
    sin = tl.load(Sin + pos * stride_c + d, mask=dm, other=0.0)[None, :]
    _rotate_rows(Q, t, stride_qt, stride_qh, cos, sin, d, dm, HQ, HALF, BLOCK_HQ)
    _rotate_rows(K, t, stride_kt, stride_kh, cos, sin, d, dm, HKV, HALF, BLOCK_HKV)
    if STORE_KV:
        slot = tl.load(SlotMapping + t).to(tl.int64)
        if slot >= 0:                  # -1: padding token of a CUDA-graph batch
            # Whole head rows (a partial rotary leaves the tail of K as it was): read back the K this program just
            # rotated in place; the barrier makes every thread's stores visible to the others first.
            tl.debug_barrier()
            write_token_kv(K, V, KCache, VCache, t, slot, stride_kt, stride_kh, stride_vt, stride_vh,
                           stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct, stride_vch,
                           HKV, HEAD_DIM, BLOCK_HKV, BLOCK_HD, PAGE)


def rotary_inplace(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor) -> None:
    """Rotate ``q`` ``[T, Hq, D]`` and ``k`` ``[T, Hkv, D]`` in place (the first ``2 * cos.shape[1]`` dims of each
    head). ``cos``/``sin``: fp32 ``[max_pos, rotary_dim / 2]``. Strided views (slices of a fused QKV) are fine."""
    _launch(positions, q, k, cos, sin, None)


def rotary_store_kv(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                    sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slot_mapping: torch.Tensor) -> None:
    """``rotary_inplace`` of ``q`` and ``k``, then the rotated ``k`` and ``v`` ``[T, Hkv, D]`` written into their
    cache slots (``k_cache``/``v_cache`` ``[num_blocks, block_size, Hkv, D]``; ``slot_mapping[t] = -1`` skips)."""
    _launch(positions, q, k, cos, sin, (v, k_cache, v_cache, slot_mapping))


def _launch(positions, q, k, cos, sin, store) -> None:
    num_tokens, hq, head_dim = q.shape
    hkv = k.shape[1]
    half = cos.shape[1]
    assert q.stride(2) == 1 and k.stride(2) == 1 and cos.stride(1) == 1
    if num_tokens == 0:
        return
    if store is None:
        v = kc = vc = slots = k            # unused (STORE_KV=False)
    else:
        v, kc, vc, slots = store
        assert v.stride(2) == 1 and kc.stride(-1) == 1 and vc.stride(-1) == 1
    _rotary_kernel[(num_tokens,)](q, k, cos, sin, positions, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                                  cos.stride(0), v, kc, vc, slots, v.stride(0), v.stride(1),
                                  kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1), vc.stride(2),
                                  HQ=hq, HKV=hkv, HALF=half, BLOCK_HQ=triton.next_power_of_2(hq),
                                  BLOCK_HKV=triton.next_power_of_2(hkv), BLOCK_D=triton.next_power_of_2(half),
                                  STORE_KV=store is not None, HEAD_DIM=head_dim,
                                  BLOCK_HD=triton.next_power_of_2(head_dim),
                                  PAGE=kc.shape[1] if store is not None else 1, num_warps=4,
                                  **pdl_launch_args(q.device))
