"""Triton attention over the paged KV cache (the GPU backend).

Same layout and semantics as ``pagedllm.kernels.torch_attention`` (the reference; see its docstring):

* ``k_cache`` / ``v_cache``: ``[num_blocks, block_size, num_kv_heads, head_dim]`` (last dim contiguous);
* ``slot_mapping[t] = block * block_size + offset`` (``-1`` = skip), ``query_start_loc`` ``[B+1]``,
  ``seq_lens`` ``[B]`` (context including the new tokens), ``block_tables`` ``[B, max_blocks]``.

Three kernels:

``store_kv``
    one program per new token scatters its K and V rows into the cache; slot ``-1`` returns early, so padded
    CUDA-graph batches need no host-side filtering (the reference does a boolean index, i.e. a sync).

``extend_attention`` (prefill, chunked prefill / cached prefix, mixed with decodes)
    FlashAttention-style varlen kernel. One program = one KV head x one block of query *rows*, where the rows are
    the ``G = Hq / Hkv`` query heads of ``BLOCK_Q`` consecutive tokens (row ``r`` -> token ``r // G``, head
    ``r % G``), so each K/V tile is loaded once for the whole GQA group and the ``tl.dot`` has ``BLOCK_M >= 16``
    rows even for one token. ``BLOCK_Q = BLOCK_M // G`` need not be a power of two, so non-power-of-two groups
    (SmolLM2: G = 3) waste at most ``BLOCK_M mod G`` rows instead of padding G to 4.
    The grid is a host-sync-free upper bound, ``num_tokens // BLOCK_Q + B`` programs per KV head; each program
    binary-searches ``query_start_loc`` to find its request (surplus programs exit at once). The key loop is cut
    in two: keys every row of the block may see (no mask at all) and the last one or two diagonal tiles (causal
    mask), and keys past the block's last query are never visited.

``decode_attention`` (one query token per request)
    Split-KV ("flash decoding") in one kernel: ``B x Hkv x S`` programs, each attending the packed GQA group to
    one contiguous chunk of the context and writing the normalised partial output and its log-sum-exp (base 2) in
    fp32; the last program of a (request, KV head) to finish (a per-(request, head) arrival counter, reset by that
    program) merges the ``<= S`` partials with LSE weights and writes the output. A separate merge kernel (the
    usual second stage) cost ~2 µs plus a launch gap per layer at batch 1 (H200 profile in docs/perf.md).
    ``S`` (the grid's third axis) depends only on the batch size (fixed under CUDA-graph capture, which is per
    batch size); the split count actually used by a request, ``min(S, ceil(seq_len / MIN_CHUNK))``, and the
    chunk length are computed on the device from ``seq_lens``, so no ``.item()`` and replaying a captured graph
    with new ``seq_lens`` / ``block_tables`` is correct. When ``S == 1`` (batch large enough to fill the GPU
    alone) each program writes its output directly.

``decode_rope_attention`` (``PAGEDLLM_DECODE_ROPE_FUSED``; the Triton backend's decode steps of up to 16 requests)
    The same kernel taking the QKV projection's unrotated q / k / v: each program rotates its q heads, the program
    holding the newest position rotates k and writes k / v to the cache before its loop (as triton_rotary's
    kernel would have), optionally reading its first tile of older keys before the PDL wait.

All softmax math is fp32 and in base 2 (``scale * log2(e)`` multiplies the fp32 scores, ``exp2`` is cheaper than
``exp``). Dots take the cache dtype (bf16/fp16 -> tensor cores, fp32 accumulation; an fp32 cache runs as tf32).
Attention sinks (gpt-oss: a learned logit per head in each softmax's denominator, ``HAS_SINKS``) are one more
online-softmax step after the keys, with a score and no value: in every extend row, and in split 0 of a decode
(its partial's log-sum-exp carries the sink, so the merge counts it once), the fused rotary decode included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from pagedllm.kernels.pdl import pdl_launch_args, pdl_wait

_LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------------------------
# store_kv
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _store_kv_kernel(Key, Value, KCache, VCache, SlotMapping,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct, stride_vch,
                     NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, PAGE: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(SlotMapping + tok).to(tl.int64)
    if slot < 0:        # padding token of a CUDA-graph batch
        return
    write_token_kv(Key, Value, KCache, VCache, tok, slot, stride_kt, stride_kh, stride_vt, stride_vh,
                   stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct, stride_vch,
                   NUM_KV_HEADS, HEAD_DIM, BLOCK_H, BLOCK_D, PAGE)


@triton.jit
def write_token_kv(Key, Value, KCache, VCache, tok, slot, stride_kt, stride_kh, stride_vt, stride_vh,
                   stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct, stride_vch,
                   NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, PAGE: tl.constexpr):
    """Token ``tok``'s K and V rows (all heads) into cache slot ``slot`` (>= 0); also used by the rotary kernel."""
    blk = slot // PAGE
    off = slot % PAGE
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    mask = (h[:, None] < NUM_KV_HEADS) & (d[None, :] < HEAD_DIM)
    k = tl.load(Key + tok * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask)
    v = tl.load(Value + tok * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask)
    tl.store(KCache + blk * stride_kcb + off * stride_kct + h[:, None] * stride_kch + d[None, :],
             k.to(KCache.dtype.element_ty), mask=mask)
    tl.store(VCache + blk * stride_vcb + off * stride_vct + h[:, None] * stride_vch + d[None, :],
             v.to(VCache.dtype.element_ty), mask=mask)


def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write new keys/values ``[num_tokens, num_kv_heads, head_dim]`` into their cache slots (``-1`` = skip)."""
    num_tokens = key.shape[0]
    if num_tokens == 0:
        return
    num_kv_heads, head_dim = key.shape[1], key.shape[2]
    if key.stride(-1) != 1:
        key = key.contiguous()
    if value.stride(-1) != 1:
        value = value.contiguous()
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    block_h = triton.next_power_of_2(num_kv_heads)
    block_d = triton.next_power_of_2(head_dim)
    _store_kv_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_H=block_h, BLOCK_D=block_d,
        PAGE=k_cache.shape[1], num_warps=4 if block_h * block_d >= 1024 else 1)


# ----------------------------------------------------------------------------------------------------------------
# Shared device helper: one K/V tile of a request, gathered through its block table
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _mma(a, b):
    """``a @ b`` with fp32 products for fp32 operands: ``tl.dot``'s default for them is TF32 (~1e-3 relative), which
    a ``dtype="float32"`` model would see as logits off HF fp32's by enough to flip near-ties."""
    if a.dtype == tl.float32:
        c = tl.dot(a, b, input_precision="ieee")
    else:
        c = tl.dot(a, b)
    return c


@triton.jit
def _soft_cap(s, SOFTCAP: tl.constexpr):
    """Gemma 2's logit soft-capping on base-2 scores: ``SOFTCAP = cap * log2(e)`` (0.0: none), and
    ``cap * tanh(x / cap)`` in natural units is ``SOFTCAP * tanh(s / SOFTCAP)`` in base 2 (tanh(x) = 2 sigmoid(2x) - 1).
    """
    if SOFTCAP > 0:
        s = SOFTCAP * (2.0 * tl.sigmoid(2.0 * s / SOFTCAP) - 1.0)
    return s


@triton.jit
def _attend_tile(acc, l_i, m_i, q, qk_scale, K, V, bt_row, start, q_pos, kv_end, kvh,
                 stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
                 offs_n, offs_d, d_mask,
                 PAGE: tl.constexpr, CAUSAL: tl.constexpr, BOUNDED: tl.constexpr, EVEN_D: tl.constexpr,
                 SOFTCAP: tl.constexpr = 0.0, WINDOW: tl.constexpr = 0):
    """One online-softmax step over keys ``start .. start + BLOCK_N``.

    ``qk_scale = scale * log2(e)`` is applied to the fp32 scores (not folded into q: rounding q*scale back to bf16
    would add error the reference does not have). ``BOUNDED``: keys may reach ``kv_end`` (mask the loads and
    scores); ``CAUSAL``: mask key > query position (``q_pos`` per row). Full tiles run without any mask.
    ``WINDOW`` (a sliding window, 0: none): also mask keys at or before ``q_pos - WINDOW``; a row may then have no
    key yet (its running max stays -inf), so the exponentials are taken from 0 there instead of -inf - -inf.
    """
    pos = start + offs_n
    if BOUNDED:
        kv_ok = pos < kv_end
        blk = tl.load(bt_row + pos // PAGE, mask=kv_ok, other=0).to(tl.int64)
    else:
        blk = tl.load(bt_row + pos // PAGE).to(tl.int64)
    row = pos % PAGE
    k_off = blk[:, None] * stride_kb + row[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :]
    v_off = blk[:, None] * stride_vb + row[:, None] * stride_vt + kvh * stride_vh + offs_d[None, :]
    if BOUNDED:
        k = tl.load(K + k_off, mask=kv_ok[:, None] & d_mask[None, :], other=0.0)
    elif EVEN_D:
        k = tl.load(K + k_off)
    else:
        k = tl.load(K + k_off, mask=d_mask[None, :], other=0.0)
    s = _soft_cap(_mma(q, tl.trans(k.to(q.dtype))) * qk_scale, SOFTCAP)   # [BLOCK_M, BLOCK_N] fp32, base 2
    if CAUSAL:
        s = tl.where(pos[None, :] <= q_pos[:, None], s, float("-inf"))
    elif BOUNDED:
        s = tl.where(kv_ok[None, :], s, float("-inf"))
    if WINDOW > 0:
        s = tl.where(pos[None, :] > q_pos[:, None] - WINDOW, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_ref = m_new
    if WINDOW > 0:          # a row with no key of its window yet: exponentials from 0, not -inf - -inf
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_ref)
    p = tl.exp2(s - m_ref[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if BOUNDED:
        v = tl.load(V + v_off, mask=kv_ok[:, None] & d_mask[None, :], other=0.0)
    elif EVEN_D:
        v = tl.load(V + v_off)
    else:
        v = tl.load(V + v_off, mask=d_mask[None, :], other=0.0)
    # An fp8 cache (kv_cache_dtype) is read as fp8 and converted here (per-tensor scale 1.0: nothing to multiply).
    acc = acc * alpha[:, None] + _mma(p.to(q.dtype), v.to(q.dtype))
    return acc, l_i, m_new


@triton.jit
def _fold_sink(acc, l_i, m_i, Sinks, head, head_ok):
    """gpt-oss's attention sinks: each row's head's learned logit joins the softmax's denominator (its probability
    is dropped, so no value row goes with it): one more online-softmax step with a score and no value, after the
    keys (the same sum in any order). ``Sinks`` ``[Hq]`` in natural units, scaled to base 2 here."""
    sink = tl.load(Sinks + head, mask=head_ok, other=float("-inf")).to(tl.float32) * 1.4426950408889634
    m_new = tl.maximum(m_i, sink)
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)      # a masked row: nothing to fold
    alpha = tl.exp2(m_i - m_ref)
    return acc * alpha[:, None], l_i * alpha + tl.exp2(sink - m_ref), m_new


# ----------------------------------------------------------------------------------------------------------------
# extend / prefill
# ----------------------------------------------------------------------------------------------------------------
# Batch-shaped arguments are not specialised, so no step meets a variant the start-up warm-up did not compile
# (~1 s each on a cold Triton cache, inside a timed request): Triton would otherwise compile separate variants for
# integers equal to 1 or divisible by 16 (num_seqs; stride_bt = the step's block-table width) and for pointers
# aligned to 16 bytes or not (seq_lens[nd:] and block_tables[nd:] of a mixed batch, aligned when nd % 4 == 0). They
# only feed scalar loads and address arithmetic. The decode kernel below does the same.
@triton.jit(do_not_specialize=["num_seqs", "stride_bt"],
            do_not_specialize_on_alignment=["QueryStartLoc", "SeqLens", "BlockTables"])
def _extend_kernel(Q, K, V, Out, QueryStartLoc, SeqLens, BlockTables, Sinks, Lse, qk_scale, num_seqs,
                   stride_qt, stride_qh, stride_ot, stride_oh,
                   stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt, stride_lt, stride_lh,
                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PAGE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PASS: tl.constexpr, SHORT_Q: tl.constexpr,
                   SOFTCAP: tl.constexpr = 0.0, WINDOW: tl.constexpr = 0, HAS_SINKS: tl.constexpr = False,
                   NONCAUSAL: tl.constexpr = False, HAS_LSE: tl.constexpr = False):
    """PASS 0: every request. PASS 1: skip requests with q_len <= SHORT_Q (a PASS 2 launch does them).
    PASS 2: grid (B, Hkv), program b does request b if its q_len <= SHORT_Q (== BLOCK_Q of this launch).
    NONCAUSAL: every query sees all its request's keys (any number, 0 included: output 0, LSE -inf). HAS_LSE: each
    row's softmax log-sum-exp (natural log, of the scaled scores) stored to ``Lse`` too."""
    BLOCK_Q: tl.constexpr = BLOCK_M // GROUP        # query tokens per program (any integer >= 1)
    pid = tl.program_id(0)
    kvh = tl.program_id(1)

    if PASS == 2:
        b = pid
        q_start = tl.load(QueryStartLoc + b)
        q_len = tl.load(QueryStartLoc + b + 1) - q_start
        qblk = 0
        if q_len > SHORT_Q:
            return
    else:
        # Request of this program: the last b with qsl[b] // BLOCK_Q + b <= pid (see module docstring).
        lo = 0
        hi = num_seqs
        while lo < hi:
            mid = (lo + hi) // 2
            if tl.load(QueryStartLoc + mid) // BLOCK_Q + mid <= pid:
                lo = mid + 1
            else:
                hi = mid
        b = lo - 1
        q_start = tl.load(QueryStartLoc + b)
        q_len = tl.load(QueryStartLoc + b + 1) - q_start
        qblk = pid - (q_start // BLOCK_Q + b)
        if qblk * BLOCK_Q >= q_len:                # surplus program of the upper-bound grid
            return
        if PASS == 1:
            if q_len <= SHORT_Q:
                return
    seq_len = tl.load(SeqLens + b)
    if NONCAUSAL:
        ctx_len = seq_len                          # the queries placed after every key: they see them all
    else:
        ctx_len = seq_len - q_len                  # cached prefix

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    t = qblk * BLOCK_Q + offs_m // GROUP          # token index within the request's new tokens
    head = kvh * GROUP + offs_m % GROUP
    row_ok = (offs_m < BLOCK_Q * GROUP) & (t < q_len)
    q_pos = ctx_len + t
    tok = (q_start + t).to(tl.int64)
    q = tl.load(Q + tok[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & d_mask[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bt_row = BlockTables + b.to(tl.int64) * stride_bt

    # Keys 0..first_pos are visible to every row: full tiles of them need no mask.
    first_pos = ctx_len + qblk * BLOCK_Q
    kv_end = tl.minimum(first_pos + BLOCK_Q, seq_len)   # one past the block's last query position
    if NONCAUSAL:
        full_end = (seq_len // BLOCK_N) * BLOCK_N   # (first_pos is past seq_len here)
    else:
        full_end = ((first_pos + 1) // BLOCK_N) * BLOCK_N
    lo = 0
    if WINDOW > 0:      # tiles before the block's first row's window hold no key any of its rows sees
        lo = tl.minimum(tl.maximum(first_pos - WINDOW + 1, 0) // BLOCK_N * BLOCK_N, full_end)
    for start in range(lo, full_end, BLOCK_N):
        acc, l_i, m_i = _attend_tile(acc, l_i, m_i, q, qk_scale, K, V, bt_row, start, q_pos, kv_end, kvh,
                                     stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
                                     offs_n, offs_d, d_mask, PAGE=PAGE, CAUSAL=False, BOUNDED=False,
                                     EVEN_D=HEAD_DIM == BLOCK_D, SOFTCAP=SOFTCAP, WINDOW=WINDOW)
    # Diagonal tiles: causal mask (which also bounds by seq_len for valid rows) and masked loads. Non-causal: the
    # last partial tile, masked by seq_len alone (every query position is past it).
    for start in range(full_end, kv_end, BLOCK_N):
        acc, l_i, m_i = _attend_tile(acc, l_i, m_i, q, qk_scale, K, V, bt_row, start, q_pos, kv_end, kvh,
                                     stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
                                     offs_n, offs_d, d_mask, PAGE=PAGE, CAUSAL=not NONCAUSAL, BOUNDED=True,
                                     EVEN_D=HEAD_DIM == BLOCK_D, SOFTCAP=SOFTCAP, WINDOW=WINDOW)
    if HAS_SINKS:
        acc, l_i, m_i = _fold_sink(acc, l_i, m_i, Sinks, head, row_ok)
    # Every row saw key 0 in the first tile, so l_i > 0 (padding rows too: their q_pos >= 0); with a window, its own
    # key in the diagonal tiles (a padding row's l_i may be 0: it is not stored). Non-causal, a request without
    # keys: l_i 0, its output 0.
    if NONCAUSAL:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    else:
        out = acc / l_i[:, None]
    tl.store(Out + tok[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_mask[None, :])
    if HAS_LSE:     # base 2 -> natural log; no key: log2(0) = -inf
        lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
        tl.store(Lse + tok * stride_lt + head * stride_lh, lse, mask=row_ok)


def _extend_config(head_dim: int, group: int, max_query_len: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for the extend kernel."""
    major = torch.cuda.get_device_capability(device)[0] if device.type == "cuda" else 9  # CPU: interpreter
    # H100, Qwen2.5-7B heads, bf16 (benchmarks/kernels/bench_attention.py --sweep), d=128, us for 8x1024 prefill /
    # ShareGPT-like 32 prompts / mixed 64 decodes + 8 prompts-with-prefix (BLOCK_M x BLOCK_N, warps, stages):
    #   64x32 w4 s2: 247 / 191 / 360     128x32 w4 s2: 263 / 214 / 389     128x64 w8 s2: 274 / 239 / 368
    #   64x64 w4 s2: 268 / 222 / 356     128x32 w8 s2: 356 / 290 / 462     128x64 w4 s2: 409 / 326 (spills)
    # (SDPA/FlashAttention on contiguous K/V, 8x1024: 141 us; we lose mostly on softmax not overlapping the MMAs.)
    # Smaller row blocks also give more programs when a few long-prefix extends dominate a batch.
    if head_dim <= 64:
        block_m, block_n, warps, stages = 128, 64, 4, 2      # not tuned separately
    elif head_dim <= 128:
        block_m, block_n, warps, stages = 64, 32, 4, 2
    elif head_dim <= 256:
        block_m, block_n, warps, stages = 64, 32, 8, 2
    else:
        # DeepSeek's latent MLA cache: one KV head of 512 + 64 = 576 dims (BLOCK_D 1024), G = 16 query heads on it.
        # Compiled offline for sm_90 (no GPU; benchmarks/kernels/sass_count.py for registers and the loop's spills,
        # the kernel's metadata.shared for shared memory): 64 x 32 w8 s2 needs 393,216 B of shared memory (an H100
        # block may have 232,448: it would not launch), 255 registers and spills in the K loop; 16 x 16 w8 s2:
        # 98,816 B, 184 registers, no spill. Not timed yet.
        block_m, block_n, warps, stages = 16, 16, 8, 2
    if major < 9:                      # Ampere/Ada: less shared memory per SM
        stages = 1 if head_dim > 128 else 2
        if major == 8 and 64 < head_dim <= 256:
            block_n = 32
    # Few query rows (spec-decode style q_len 2..8, or decode-heavy mixes): shrink the row block, min 16 for mma.
    rows = max_query_len * group
    while block_m > 16 and block_m // 2 >= rows:
        block_m //= 2
    block_m = max(block_m, triton.next_power_of_2(group))   # at least one token per program
    return block_m, block_n, warps, stages


# Head dims over 256 (DeepSeek's latent MLA cache: one KV head of 576, BLOCK_D 1024): a launch packs a KV head's whole
# query group into its row block, and at this width 64 rows need 262,144 B of shared memory in the extend kernel (an
# H100 block may have 232,448) while 16 rows need 98,816 (offline sm_90 compiles, session 35). So the query heads go
# in launches of at most WIDE_MAX_GROUP per KV head: V2 / V3's 128 heads on one GPU take 8 launches a layer.
WIDE_HEAD_DIM, WIDE_MAX_GROUP = 256, 16


def wide_head_chunks(num_heads: int, num_kv_heads: int, head_dim: int) -> list[tuple[int, int, int]] | None:
    """``(kv head, first query head, end)`` launches for a group too wide for one launch at this head dim; None:
    one launch."""
    group = num_heads // num_kv_heads
    if head_dim <= WIDE_HEAD_DIM or group <= WIDE_MAX_GROUP:
        return None
    return [(h, s, min(s + WIDE_MAX_GROUP, (h + 1) * group))
            for h in range(num_kv_heads) for s in range(h * group, (h + 1) * group, WIDE_MAX_GROUP)]


def extend_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
                     scale: float, max_query_len: int, out: torch.Tensor | None = None,
                     _config: tuple[int, int, int, int] | None = None,
                     _two_pass: bool | None = None, soft_cap: float = 0.0, window: int = 0,
                     sinks: torch.Tensor | None = None, causal: bool = True,
                     lse: torch.Tensor | None = None) -> torch.Tensor:
    """Varlen causal attention of ``query`` ``[num_tokens, Hq, D]`` over each request's paged context.

    The new tokens' K/V must already be in the cache (``store_kv`` first). ``max_query_len`` (a host int, an upper
    bound is fine) only picks the tile size; the grid is sized from ``num_tokens`` without reading device data.
    ``_config`` overrides ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` and ``_two_pass`` the short-request
    split below (benchmarks). ``soft_cap``: Gemma 2's logit soft-capping (0: none). ``window``: a sliding window
    (each query sees itself and the ``window - 1`` keys before it; 0: none). ``sinks``: gpt-oss's attention sinks,
    ``[Hq]`` logits (any float dtype) each head adds to its softmax's denominator (None: none). ``causal=False``:
    every query sees all its request's ``seq_lens`` keys (not stored with it: DeepSeek's MLA over a chunk of cached
    context; any count, 0 included). ``lse``: a ``[num_tokens, Hq]`` fp32 tensor the rows' softmax log-sum-exp
    (natural log) is written to (``merge_attn_states``).
    """
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    assert num_heads == group * num_kv_heads
    if out is None:
        out = torch.empty_like(query)
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    chunks = wide_head_chunks(num_heads, num_kv_heads, head_dim)
    if chunks is not None:
        for h, s, e in chunks:
            extend_attention(query[:, s:e], k_cache[:, :, h:h + 1], v_cache[:, :, h:h + 1], query_start_loc, seq_lens,
                             block_tables, scale, max_query_len, out=out[:, s:e], _config=_config,
                             _two_pass=_two_pass, soft_cap=soft_cap, window=window,
                             sinks=None if sinks is None else sinks[s:e], causal=causal,
                             lse=None if lse is None else lse[:, s:e])
        return out
    if query.stride(-1) != 1:
        query = query.contiguous()
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1 and out.stride(-1) == 1
    block_d = triton.next_power_of_2(head_dim)
    assert causal or window == 0, "a sliding window is causal"
    assert lse is None or lse.dtype == torch.float32
    args = (query, k_cache, v_cache, out, query_start_loc, seq_lens, block_tables,
            query if sinks is None else sinks, out if lse is None else lse, scale * _LOG2E, num_seqs,
            query.stride(0), query.stride(1), out.stride(0), out.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
            0 if lse is None else lse.stride(0), 0 if lse is None else lse.stride(1))
    forms = dict(NONCAUSAL=not causal, HAS_LSE=lse is not None)
    block_m, block_n, warps, stages = _config or _extend_config(head_dim, group, max(1, max_query_len),
                                                                query.device)
    # Mixed batches (chunked prefill: decodes + prompt chunks): a decode request in a 64/128-row program uses G of
    # its rows, yet the dots cost the full tile on every key tile of a context that may be thousands long. So
    # requests with at most SHORT_Q tokens go to a second launch with 16-row tiles, one program per request and KV
    # head. H100, 64 decodes + 8 prompts (128x32 tiles): 410 -> 389 us; costs ~1.5% (one launch) on pure prefill.
    short_m = max(16, triton.next_power_of_2(group))
    short_q = short_m // group
    two_pass = num_seqs > 1 and block_m > short_m and max_query_len > short_q
    if _two_pass is not None:
        two_pass = _two_pass and block_m > short_m
    block_q = block_m // group
    grid = (num_tokens // block_q + num_seqs, num_kv_heads)
    _extend_kernel[grid](*args, GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_d, PAGE=k_cache.shape[1],
                         BLOCK_M=block_m, BLOCK_N=block_n, PASS=1 if two_pass else 0, SHORT_Q=short_q,
                         SOFTCAP=soft_cap * _LOG2E, WINDOW=window, HAS_SINKS=sinks is not None, **forms,
                         num_warps=warps, num_stages=stages)
    if two_pass:
        _extend_kernel[(num_seqs, num_kv_heads)](
            *args, GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_d, PAGE=k_cache.shape[1], BLOCK_M=short_m,
            BLOCK_N=64 if head_dim <= 128 else 32, PASS=2, SHORT_Q=short_q, SOFTCAP=soft_cap * _LOG2E,
            WINDOW=window, HAS_SINKS=sinks is not None, **forms, num_warps=4, num_stages=2)
    return out


# ----------------------------------------------------------------------------------------------------------------
# decode (split-KV)
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _rope_factors(Cos, Sin, pos, stride_c, offs_d, HALF: tl.constexpr):
    """cos / sin of position ``pos`` for each dim ``d`` of a head (NeoX layout: dims ``d`` and ``d + HALF`` rotate
    together by angle ``d mod HALF``; dims from ``2 * HALF`` on are not rotated), the partner dim of each, whether
    ``d`` is in the first half, and whether it is rotated at all."""
    in_rot = offs_d < 2 * HALF
    first = offs_d < HALF
    r = tl.where(first, offs_d, offs_d - HALF)
    cos = tl.load(Cos + pos * stride_c + r, mask=in_rot, other=1.0)
    sin = tl.load(Sin + pos * stride_c + r, mask=in_rot, other=0.0)
    partner = tl.where(first, offs_d + HALF, offs_d - HALF)
    return cos, sin, partner, first, in_rot


@triton.jit
def _rope_rotate(x, x_p, cos, sin, first, in_rot):
    """``x`` rotated (fp32 math, rounded once to ``x``'s dtype), written as triton_rotary's kernel writes it
    (``x1 cos - x2 sin`` / ``x2 cos + x1 sin``), so both give the same bits."""
    xf = x.to(tl.float32)
    pf = x_p.to(tl.float32)
    rot = tl.where(first, xf * cos - pf * sin, xf * cos + pf * sin)
    return tl.where(in_rot, rot, xf).to(x.dtype)


@triton.jit(do_not_specialize=["num_splits_grid", "min_chunk", "stride_bt"],
            do_not_specialize_on_alignment=["SeqLens", "BlockTables"])
def _decode_kernel(Q, K, V, Out, PartO, PartLse, Locks, SeqLens, BlockTables, Sinks, qk_scale, num_splits_grid,
                   min_chunk,
                   stride_qb, stride_qh, stride_ob, stride_oh,
                   stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
                   KNew, VNew, Cos, Sin, Pos, SlotMapping, stride_knb, stride_knh, stride_vnb, stride_vnh, stride_c,
                   NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_H: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PAGE: tl.constexpr,
                   BLOCK_N: tl.constexpr, SINGLE: tl.constexpr, ROPE: tl.constexpr, HALF: tl.constexpr,
                   PREFETCH: tl.constexpr, PDL: tl.constexpr, NEW_IN_REGS: tl.constexpr = False,
                   SOFTCAP: tl.constexpr = 0.0, WINDOW: tl.constexpr = 0, HAS_SINKS: tl.constexpr = False):
    # NEW_IN_REGS (with ROPE and PREFETCH): the step's new key and value are folded into the softmax from registers
    # instead of being read back from the cache after the program that writes them stores them. Every key the loop
    # reads is then one an earlier step wrote, so each split's first tile (full or partial, the writer's too) and
    # the rotary factors are read before the PDL wait, and the writer needs no barrier between store and loads.
    if not PREFETCH:
        pdl_wait(PDL)
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(SeqLens + b)
    # This request's split plan: at most num_splits_grid chunks of whole BLOCK_N tiles, each >= min_chunk keys.
    # seq_len 0 (padding) still runs one (empty) split, so its output is written (zeros).
    want = tl.maximum(tl.minimum(num_splits_grid, tl.cdiv(seq_len, min_chunk)), 1)
    chunk = tl.maximum(tl.cdiv(tl.cdiv(seq_len, want), BLOCK_N) * BLOCK_N, BLOCK_N)
    num_splits = tl.maximum(tl.cdiv(seq_len, chunk), 1)
    start = split * chunk
    end = tl.minimum(start + chunk, seq_len)
    if not SINGLE:
        if split >= num_splits:        # this request needs fewer splits: nothing to do, and not counted
            return

    offs_h = tl.arange(0, BLOCK_H)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    bt_row = BlockTables + b * stride_bt
    if PREFETCH:
        # The split's first tile, when it is a full tile of keys older than the step's new one: earlier steps wrote
        # them and the host wrote seq_lens / block tables before the step, so they are read before the PDL wait,
        # while the kernel before (the QKV projection, with ROPE) still runs.
        pos0 = start + offs_n
        if NEW_IN_REGS:
            # Keys [start, old_end) of this split were written by earlier steps (the new one, seq_len - 1, comes
            # from registers below): the first tile is read whole or in part, the writer's included.
            old_end = tl.minimum(end, seq_len - 1)
            old_ok = pos0 < old_end
            pre = start < old_end
            pre_mask = old_ok[:, None] & d_mask[None, :]
            pos = tl.load(Pos + b).to(tl.int64)
            cos, sin, partner, first, in_rot = _rope_factors(Cos, Sin, pos, stride_c, offs_d, HALF)
            slot = tl.load(SlotMapping + b).to(tl.int64)
        else:
            pre = (start + BLOCK_N <= end) & (start + BLOCK_N < seq_len)
            old_ok = pos0 < seq_len
            pre_mask = pre & d_mask[None, :]
        blk0 = tl.load(bt_row + pos0 // PAGE, mask=pre & old_ok, other=0).to(tl.int64)
        row0 = pos0 % PAGE
        k0 = tl.load(K + blk0[:, None] * stride_kb + row0[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :],
                     mask=pre_mask, other=0.0)
        v0 = tl.load(V + blk0[:, None] * stride_vb + row0[:, None] * stride_vt + kvh * stride_vh + offs_d[None, :],
                     mask=pre_mask, other=0.0)
        pdl_wait(PDL)
    h_ok = offs_h < GROUP
    hd_mask = h_ok[:, None] & d_mask[None, :]
    head = kvh * GROUP + offs_h
    q = tl.load(Q + b * stride_qb + head[:, None] * stride_qh + offs_d[None, :], mask=hd_mask, other=0.0)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    if ROPE:
        # decode_rope_attention: q and the new k arrive unrotated from the QKV projection. Rotate q here, and let
        # the program holding the request's last position (the newest key) write the rotated k and v to the cache
        # first, so the loop below reads them back as the rotary + store kernel would have left them.
        if not NEW_IN_REGS:
            pos = tl.load(Pos + b).to(tl.int64)
            cos, sin, partner, first, in_rot = _rope_factors(Cos, Sin, pos, stride_c, offs_d, HALF)
        q_p = tl.load(Q + b * stride_qb + head[:, None] * stride_qh + partner[None, :],
                      mask=hd_mask & in_rot[None, :], other=0.0)
        q = _rope_rotate(q, q_p, cos[None, :], sin[None, :], first[None, :], in_rot[None, :])
        if NEW_IN_REGS:
            if (split == num_splits - 1) & (seq_len > 0):
                k_new = tl.load(KNew + b * stride_knb + kvh * stride_knh + offs_d, mask=d_mask, other=0.0)
                k_p = tl.load(KNew + b * stride_knb + kvh * stride_knh + partner, mask=d_mask & in_rot, other=0.0)
                k_new = _rope_rotate(k_new, k_p, cos, sin, first, in_rot).to(K.dtype.element_ty)
                v_new = tl.load(VNew + b * stride_vnb + kvh * stride_vnh + offs_d, mask=d_mask,
                                other=0.0).to(V.dtype.element_ty)
                if slot >= 0:               # -1: a padding row of a CUDA-graph batch
                    tl.store(K + (slot // PAGE) * stride_kb + (slot % PAGE) * stride_kt + kvh * stride_kh + offs_d,
                             k_new, mask=d_mask)
                    tl.store(V + (slot // PAGE) * stride_vb + (slot % PAGE) * stride_vt + kvh * stride_vh + offs_d,
                             v_new, mask=d_mask)
                # The new key's score and value as the tile loop would have read them back from the cache (in
                # the cache's dtype); it starts the online softmax: m = its score, l = 1, acc = its value.
                m_i = _soft_cap(tl.sum(q.to(tl.float32) * k_new.to(q.dtype).to(tl.float32)[None, :], 1) * qk_scale,
                                SOFTCAP)
                l_i = tl.full([BLOCK_H], 1.0, tl.float32)
                acc = acc + v_new.to(q.dtype).to(tl.float32)[None, :]
        elif split == num_splits - 1:
            slot = tl.load(SlotMapping + b).to(tl.int64)
            if slot >= 0:                   # -1: a padding row of a CUDA-graph batch
                k_new = tl.load(KNew + b * stride_knb + kvh * stride_knh + offs_d, mask=d_mask, other=0.0)
                k_p = tl.load(KNew + b * stride_knb + kvh * stride_knh + partner, mask=d_mask & in_rot, other=0.0)
                k_new = _rope_rotate(k_new, k_p, cos, sin, first, in_rot)
                v_new = tl.load(VNew + b * stride_vnb + kvh * stride_vnh + offs_d, mask=d_mask, other=0.0)
                blk = slot // PAGE
                row = slot % PAGE
                tl.store(K + blk * stride_kb + row * stride_kt + kvh * stride_kh + offs_d,
                         k_new.to(K.dtype.element_ty), mask=d_mask)
                tl.store(V + blk * stride_vb + row * stride_vt + kvh * stride_vh + offs_d,
                         v_new.to(V.dtype.element_ty), mask=d_mask)
                tl.debug_barrier()          # every thread's stores visible to the loads of the loop below

    q_pos = offs_h  # unused (CAUSAL=False)
    if WINDOW > 0:      # (not with ROPE: decode_attention refuses the two together)
        q_pos = tl.zeros([BLOCK_H], tl.int32) + (seq_len - 1).to(tl.int32)     # the one query's position
        start = tl.minimum(tl.maximum(start, tl.maximum(seq_len - WINDOW, 0) // BLOCK_N * BLOCK_N), end)
    full_end = start + ((end - start) // BLOCK_N) * BLOCK_N
    s0 = start
    if PREFETCH:
        if NEW_IN_REGS:
            if pre:     # the first tile of older keys, already in registers, masked past old_end
                scores = _soft_cap(_mma(q, tl.trans(k0.to(q.dtype))) * qk_scale, SOFTCAP)
                scores = tl.where(old_ok[None, :], scores, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(scores, 1))
                alpha = tl.exp2(m_i - m_new)
                p = tl.exp2(scores - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + _mma(p.to(q.dtype), v0.to(q.dtype))
                m_i = m_new
            # The rest of the older keys: whole tiles, then a partial one (the loops below, up to old_end).
            s0 = start + BLOCK_N
            end = tl.maximum(old_end, s0)
            full_end = s0 + ((end - s0) // BLOCK_N) * BLOCK_N
        else:
            if pre:     # _attend_tile's first step, on the tile already in registers (the same ops from m = -inf)
                scores = _soft_cap(_mma(q, tl.trans(k0.to(q.dtype))) * qk_scale, SOFTCAP)
                m_i = tl.max(scores, 1)
                p = tl.exp2(scores - m_i[:, None])
                l_i = tl.sum(p, 1)
                acc = _mma(p.to(q.dtype), v0.to(q.dtype))
            s0 = start + pre.to(tl.int32) * BLOCK_N     # arithmetic, not set inside the branch (a leaner loop)
    for s in range(s0, full_end, BLOCK_N):
        acc, l_i, m_i = _attend_tile(acc, l_i, m_i, q, qk_scale, K, V, bt_row, s, q_pos, end, kvh,
                                     stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
                                     offs_n, offs_d, d_mask, PAGE=PAGE, CAUSAL=False, BOUNDED=False,
                                     EVEN_D=HEAD_DIM == BLOCK_D, SOFTCAP=SOFTCAP, WINDOW=WINDOW)
    if full_end < end:
        acc, l_i, m_i = _attend_tile(acc, l_i, m_i, q, qk_scale, K, V, bt_row, full_end, q_pos, end, kvh,
                                     stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
                                     offs_n, offs_d, d_mask, PAGE=PAGE, CAUSAL=False, BOUNDED=True,
                                     EVEN_D=HEAD_DIM == BLOCK_D, SOFTCAP=SOFTCAP, WINDOW=WINDOW)
    if HAS_SINKS:
        # The sink joins the log-sum-exp once: in split 0's partial (its LSE includes it; the merge below adds the
        # splits' sums as they are), or in the one program's output.
        if split == 0:
            acc, l_i, m_i = _fold_sink(acc, l_i, m_i, Sinks, head, h_ok)
    l_safe = tl.where(l_i > 0, l_i, 1.0)           # empty context (seq_len 0, padding) -> output 0
    o = acc / l_safe[:, None]
    out_ptrs = Out + b * stride_ob + head[:, None] * stride_oh + offs_d[None, :]
    if SINGLE or num_splits == 1:       # the whole context in this program: no partials, no merge
        tl.store(out_ptrs, o.to(Out.dtype.element_ty), mask=hd_mask)
    else:
        # Partials are [B, Hq, S, D] / [B, Hq, S] with S = num_splits_grid.
        base = (b * NUM_HEADS + head) * num_splits_grid
        tl.store(PartO + (base + split)[:, None] * HEAD_DIM + offs_d[None, :], o, mask=hd_mask)
        tl.store(PartLse + base + split, m_i + tl.log2(l_safe), mask=h_ok)
        tl.debug_barrier()          # all threads' partial stores precede the (single-thread, release) atomic
        lock = Locks + b * NUM_KV_HEADS + kvh
        if tl.atomic_add(lock, 1, sem="acq_rel", scope="gpu") == num_splits - 1:
            # Last to arrive: merge the partials in split order (deterministic), reading them past L1 (.cg),
            # where another SM's stores may not be; then reset the counter for the next layer / graph replay.
            m = tl.full([BLOCK_H], float("-inf"), tl.float32)
            den = tl.zeros([BLOCK_H], tl.float32)
            merged = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
            for i in range(0, num_splits):
                lse = tl.load(PartLse + base + i, mask=h_ok, other=float("-inf"), cache_modifier=".cg")
                part = tl.load(PartO + (base + i)[:, None] * HEAD_DIM + offs_d[None, :], mask=hd_mask, other=0.0,
                               cache_modifier=".cg")
                m_new = tl.maximum(m, lse)
                m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)   # all -inf so far: no inf - inf
                alpha = tl.exp2(m - m_ref)
                w = tl.exp2(lse - m_ref)
                den = den * alpha + w
                merged = merged * alpha[:, None] + part * w[:, None]
                m = m_new
            merged = merged / tl.where(den > 0, den, 1.0)[:, None]
            tl.store(out_ptrs, merged.to(Out.dtype.element_ty), mask=hd_mask)
            tl.atomic_xchg(lock, 0, sem="relaxed", scope="gpu")


_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":           # Triton interpreter (TRITON_INTERPRET=1) on CPU tensors: pretend H100
        return 132
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


# Decode tiles. BLOCK_N = keys per loop step; MIN_CHUNK = fewest keys a split may hold; CTAS_PER_SM = how many
# stage-1 programs per SM we aim for before splitting further (more splits = more loads in flight but more
# partials to merge and a longer tail). Chosen on H100, Qwen2.5-7B heads (28/4, d=128), bf16, graph-replay us:
#   B=1 (latency bound): MIN_CHUNK 64 beats 128 / 256 (ctx 2048: 7.5 / 8.3 / 10.8 us; SDPA 7.1);
#   B=32, ctx 2048: 3 splits (CTAS_PER_SM 2) 54.3 us vs 5 splits (4) 58.6 us vs 9 splits (8) 60.1 us;
#   B=256: no split, 365 us = 2.94 TB/s of K+V (copy ceiling 3.0 TB/s); BLOCK_N 32 / 128 and 8 warps are slower,
#   stages 2 vs 3 within noise (2 uses less shared memory).
# TAIL_SPLITS / TAIL_CHUNK: when the batch alone fills the GPU, contexts longer than TAIL_CHUNK are still cut into
# up to TAIL_SPLITS chunks, so that with mixed lengths (ShareGPT) one long request does not leave its SM working
# alone at the end of the kernel (uniform lengths gain nothing from it). TAIL_SPLITS = 1 turns it off.
DECODE_BLOCK_N = 64
DECODE_MIN_CHUNK = 64
DECODE_CTAS_PER_SM = 2
DECODE_WARPS = 4
DECODE_STAGES = 2
DECODE_TAIL_SPLITS = 4
DECODE_TAIL_CHUNK = 512
DEFAULT_MAX_SPLITS = 32


def decode_num_splits(batch: int, num_kv_heads: int, sm_count: int, max_splits: int = DEFAULT_MAX_SPLITS,
                      ctas_per_sm: int = DECODE_CTAS_PER_SM) -> int:
    """Split-grid size S for a batch: enough ``B * Hkv * S`` programs to fill the GPU, capped at ``max_splits``.

    Depends on the batch size only (host int), so it is fixed for a captured CUDA graph.
    """
    return max(1, min(max_splits, -(-ctas_per_sm * sm_count // max(1, batch * num_kv_heads))))


def decode_plan(batch: int, num_kv_heads: int, sm_count: int, max_splits: int = DEFAULT_MAX_SPLITS,
                ctas_per_sm: int = DECODE_CTAS_PER_SM, min_chunk: int = DECODE_MIN_CHUNK,
                tail_splits: int = DECODE_TAIL_SPLITS, tail_chunk: int = DECODE_TAIL_CHUNK) -> tuple[int, int]:
    """(split grid S, fewest keys per split) for a batch size: splits to fill the GPU where the requests alone do
    not, else splits of long contexts only, to balance mixed lengths (see DECODE_TAIL_SPLITS)."""
    fill = decode_num_splits(batch, num_kv_heads, sm_count, max_splits, ctas_per_sm)
    return (fill, min_chunk) if fill > 1 else (max(1, tail_splits), tail_chunk)


@dataclass
class DecodeWorkspace:
    """Preallocated fp32 scratch for the split-KV partials, shared by all layers (they run one after another).

    ``partial_out`` holds ``B * Hq * S * D`` and ``partial_lse`` ``B * Hq * S`` floats for any batch ``B <=
    max_num_seqs``, with ``S = decode_num_splits(B, ...)``; ``locks`` the ``B * Hkv`` arrival counters (zero
    between launches: the kernel resets them). Allocate it before capturing CUDA graphs so every graph reuses
    the same buffers.
    """
    partial_out: torch.Tensor
    partial_lse: torch.Tensor
    locks: torch.Tensor
    max_num_seqs: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_splits: int
    sm_count: int
    ctas_per_sm: int
    tail_splits: int

    @classmethod
    def allocate(cls, max_num_seqs: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 device: torch.device | str = "cuda", max_splits: int = DEFAULT_MAX_SPLITS,
                 ctas_per_sm: int = DECODE_CTAS_PER_SM,
                 tail_splits: int | None = None) -> "DecodeWorkspace":
        device = torch.device(device)
        tail_splits = DECODE_TAIL_SPLITS if tail_splits is None else tail_splits
        sms = _sm_count(device)
        # Largest B * S over the batch sizes this workspace serves (S shrinks as B grows, so this is far below
        # max_num_seqs * max_splits: Qwen2.5-7B, 256 seqs -> 5.6 MB instead of 117 MB).
        rows = max(bs * decode_plan(bs, num_kv_heads, sms, max_splits, ctas_per_sm, tail_splits=tail_splits)[0]
                   for bs in range(1, max_num_seqs + 1))
        return cls(partial_out=torch.empty(rows * num_heads * head_dim, dtype=torch.float32, device=device),
                   partial_lse=torch.empty(rows * num_heads, dtype=torch.float32, device=device),
                   locks=torch.zeros(max_num_seqs * num_kv_heads, dtype=torch.int32, device=device),
                   max_num_seqs=max_num_seqs, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                   max_splits=max_splits, sm_count=sms, ctas_per_sm=ctas_per_sm, tail_splits=tail_splits)


class DecodeRope(NamedTuple):
    """What ``decode_attention`` needs to rotate and store the step's new keys itself (``decode_rope_attention``)."""
    key: torch.Tensor           # [B, Hkv, D], not rotated (a view of the QKV projection's output is fine)
    value: torch.Tensor         # [B, Hkv, D]
    cos: torch.Tensor           # fp32 [max_position, rotary_dim / 2] (RotaryEmbedding's tables)
    sin: torch.Tensor
    positions: torch.Tensor     # [B]
    slot_mapping: torch.Tensor  # [B], -1: skip (padding rows)
    prefetch: bool = False      # read each split's first tile of older keys before the PDL wait
    # With prefetch: the new key / value enter the softmax from registers, not read back from the cache; the first
    # tile is read before the wait in every split, the writer's too (PAGEDLLM_DECODE_ROPE_FUSED=3).
    new_in_regs: bool = False


def decode_rope_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                          v_cache: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                          slot_mapping: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
                          scale: float, workspace: DecodeWorkspace | None = None,
                          out: torch.Tensor | None = None, prefetch: bool = False,
                          new_in_regs: bool = False, soft_cap: float = 0.0,
                          sinks: torch.Tensor | None = None) -> torch.Tensor:
    """``triton_rotary.rotary_store_kv`` then ``decode_attention`` in one kernel, for steps of one new token per
    request: ``query`` ``[B, Hq, D]`` and ``key`` ``[B, Hkv, D]`` unrotated, ``value`` ``[B, Hkv, D]``; the rotated
    key and the value are written to their cache slots and the attention output returned, with the same values as
    the two kernels (``query`` and ``key`` are left unrotated). One launch and one kernel boundary less per layer;
    ``PAGEDLLM_DECODE_ROPE_FUSED`` (default 2: with the prefetch) switches it off for A/Bs. ``prefetch``: each split's first tile of older
    keys is read before the PDL wait, overlapping the QKV projection (keys written by earlier steps only).
    ``new_in_regs`` (with ``prefetch``): the new key and value join the softmax from registers (the cache still
    gets them), so no program reads a key of this step and every split's first tile is read before the wait; the
    output differs from the two kernels' only by rounding (the new key's weight is not rounded to ``query``'s dtype
    before its multiply with the value, and its score is summed in another order)."""
    if new_in_regs and not prefetch:
        raise ValueError("decode_rope_attention: new_in_regs needs prefetch")
    return decode_attention(query, k_cache, v_cache, seq_lens, block_tables, scale, workspace, out=out,
                            rope=DecodeRope(key, value, cos, sin, positions, slot_mapping, prefetch, new_in_regs),
                            soft_cap=soft_cap, sinks=sinks)


def decode_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor,
                     block_tables: torch.Tensor, scale: float, workspace: DecodeWorkspace | None = None,
                     out: torch.Tensor | None = None,
                     _config: tuple[int, ...] | None = None, rope: "DecodeRope | None" = None,
                     soft_cap: float = 0.0, window: int = 0, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of one query token per request, ``query`` ``[B, Hq, D]`` -> ``[B, Hq, D]``; ``soft_cap``,
    ``window``, ``sinks`` as ``extend_attention``'s.

    ``rope`` (``decode_rope_attention``): ``query`` and ``rope.key`` are not rotated yet, and the new keys and values
    are not in the cache yet: the kernel rotates them and stores them first.

    No host sync; CUDA-graph safe when ``workspace`` is given (without one, scratch is allocated per call).
    A request with ``seq_len == 0`` (batch padding) gets zeros. ``_config`` overrides ``(BLOCK_N, MIN_CHUNK,
    ctas_per_sm, num_warps, num_stages[, tail_splits, tail_chunk])`` (benchmarks).
    """
    batch, num_heads, head_dim = query.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    assert num_heads == group * num_kv_heads
    if window and rope is not None:
        raise ValueError("decode_attention: a sliding window is not supported with the fused rotary decode (rope); "
                         "rotate and store first, then attend.")
    if out is None:
        out = torch.empty_like(query)
    if batch == 0:
        return out
    chunks = wide_head_chunks(num_heads, num_kv_heads, head_dim)
    if chunks is not None:      # one launch after another on the same workspace (each needs less of it)
        if rope is not None:    # each launch would rotate and store the shared new key again
            raise ValueError("decode_attention: the fused rotary decode (rope) takes at most "
                             f"{WIDE_MAX_GROUP} query heads per KV head at head dims over {WIDE_HEAD_DIM}; rotate "
                             "and store first, then attend.")
        for h, s, e in chunks:
            decode_attention(query[:, s:e], k_cache[:, :, h:h + 1], v_cache[:, :, h:h + 1], seq_lens, block_tables,
                             scale, workspace, out=out[:, s:e], _config=_config, soft_cap=soft_cap, window=window,
                             sinks=None if sinks is None else sinks[s:e])
        return out
    if query.stride(-1) != 1:
        query = query.contiguous()
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1 and out.stride(-1) == 1
    defaults = (DECODE_BLOCK_N if head_dim <= 128 else 32, DECODE_MIN_CHUNK,
                workspace.ctas_per_sm if workspace is not None else DECODE_CTAS_PER_SM, DECODE_WARPS, DECODE_STAGES,
                workspace.tail_splits if workspace is not None else DECODE_TAIL_SPLITS, DECODE_TAIL_CHUNK)
    given = tuple(_config or ())
    # A 5-entry _config keeps the default tail split.
    block_n, min_chunk, ctas_per_sm, warps, stages, tail_splits, tail_chunk = given + defaults[len(given):]
    max_splits = workspace.max_splits if workspace is not None else DEFAULT_MAX_SPLITS
    sms = workspace.sm_count if workspace is not None else _sm_count(query.device)
    splits, min_chunk = decode_plan(batch, num_kv_heads, sms, max_splits, ctas_per_sm, min_chunk, tail_splits,
                                    tail_chunk)
    need = batch * num_heads * splits
    if splits == 1:
        part_o = part_lse = locks = out     # unused
    elif workspace is not None and workspace.partial_lse.numel() >= need \
            and workspace.partial_out.numel() >= need * head_dim and workspace.locks.numel() >= batch * num_kv_heads:
        part_o, part_lse, locks = workspace.partial_out, workspace.partial_lse, workspace.locks
    else:
        assert workspace is None, "DecodeWorkspace too small for this batch (allocate with a larger max_num_seqs)"
        part_o = torch.empty(need * head_dim, dtype=torch.float32, device=query.device)
        part_lse = torch.empty(need, dtype=torch.float32, device=query.device)
        locks = torch.zeros(batch * num_kv_heads, dtype=torch.int32, device=query.device)
    block_d = triton.next_power_of_2(head_dim)
    if rope is None:
        kn = vn = cos = sin = pos = slots = query       # unused (ROPE=False)
        rope_strides = (0, 0, 0, 0, 0)
        half = 1
    else:
        kn, vn, cos, sin, pos, slots = rope.key, rope.value, rope.cos, rope.sin, rope.positions, rope.slot_mapping
        assert kn.stride(-1) == 1 and vn.stride(-1) == 1 and cos.stride(1) == 1
        rope_strides = (kn.stride(0), kn.stride(1), vn.stride(0), vn.stride(1), cos.stride(0))
        half = cos.shape[1]
    _decode_kernel[(batch, num_kv_heads, splits)](
        query, k_cache, v_cache, out, part_o, part_lse, locks, seq_lens, block_tables,
        query if sinks is None else sinks, scale * _LOG2E, splits, min_chunk,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        kn, vn, cos, sin, pos, slots, *rope_strides,
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim, BLOCK_D=block_d, PAGE=k_cache.shape[1], BLOCK_N=block_n, SINGLE=splits == 1,
        ROPE=rope is not None, HALF=half, PREFETCH=rope is not None and rope.prefetch,
        NEW_IN_REGS=rope is not None and rope.prefetch and rope.new_in_regs, SOFTCAP=soft_cap * _LOG2E,
        WINDOW=window, HAS_SINKS=sinks is not None, num_warps=warps,
        num_stages=stages, **pdl_launch_args(query.device))
    return out


# ----------------------------------------------------------------------------------------------------------------
# dispatcher
# ----------------------------------------------------------------------------------------------------------------
def paged_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
                    scale: float, max_query_len: int, workspace: DecodeWorkspace | None = None,
                    out: torch.Tensor | None = None, num_decodes: int = 0,
                    prefill_query_start_loc: torch.Tensor | None = None, soft_cap: float = 0.0,
                    window: int = 0, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Decode kernel when every request has one new token (``max_query_len == 1``), else the extend kernel.

    Mixed batches (chunked prefill: running decodes plus prompt chunks) whose first ``num_decodes`` requests have
    one new token each (the model runner puts them first) are split: those rows go to the split-KV decode kernel,
    the rest to the extend kernel with ``prefill_query_start_loc`` (the remaining requests' query starts, from 0).
    In the extend kernel a decode row is one program per request and KV head over the whole context, without
    split-KV: with ~100 running ShareGPT-like requests on an H200 (Qwen2.5-7B) a step that carried any prompt
    took ~20 ms against 5 ms without (served run, docs/perf.md)."""
    num_seqs = seq_lens.shape[0]
    if max_query_len == 1 and query.shape[0] == num_seqs:
        return decode_attention(query, k_cache, v_cache, seq_lens, block_tables, scale, workspace, out=out,
                                soft_cap=soft_cap, window=window, sinks=sinks)
    if 0 < num_decodes < num_seqs and prefill_query_start_loc is not None:
        if out is None:
            out = torch.empty_like(query)
        nd = num_decodes
        decode_attention(query[:nd], k_cache, v_cache, seq_lens[:nd], block_tables[:nd], scale, workspace,
                         out=out[:nd], soft_cap=soft_cap, window=window, sinks=sinks)
        extend_attention(query[nd:], k_cache, v_cache, prefill_query_start_loc, seq_lens[nd:], block_tables[nd:],
                         scale, max_query_len, out=out[nd:], soft_cap=soft_cap, window=window, sinks=sinks)
        return out
    return extend_attention(query, k_cache, v_cache, query_start_loc, seq_lens, block_tables, scale,
                            max_query_len, out=out, soft_cap=soft_cap, window=window, sinks=sinks)
