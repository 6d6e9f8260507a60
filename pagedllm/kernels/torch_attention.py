"""Reference attention over the paged KV cache, in plain PyTorch.

This is the correctness reference for every other backend (the Triton kernels are tested against it) and the
backend used on CPU. Layout shared by all backends:

* ``k_cache`` / ``v_cache``: ``[num_blocks, block_size, num_kv_heads, head_dim]`` for one layer.
* ``slot_mapping[t] = block_id * block_size + offset`` is where new token ``t`` is written; ``-1`` means "skip"
  (padding tokens of a CUDA graph batch).
* ``query_start_loc``: ``[B + 1]`` int32 prefix sums of the query (new token) lengths of each request.
* ``seq_lens``: ``[B]`` int32 context length of each request *including* its new tokens.
* ``block_tables``: ``[B, max_blocks]`` int32, block ids of each request in order (unused tail entries arbitrary).

Query token ``i`` of request ``b`` sits at position ``seq_lens[b] - q_len[b] + i`` and attends to keys ``0..position``
(causal over the new tokens, full over the cached prefix).
"""
from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F

from pagedllm.kernels.cpu_threads import on_one_thread


def _raw(t: torch.Tensor) -> torch.Tensor:
    """float8 caches as bytes: index_copy_ / index_select have no float8 kernels on the CPU."""
    return t.view(torch.uint8) if t.element_size() == 1 and t.is_floating_point() else t


def store_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0,
             all_slots_valid: bool | None = None) -> None:
    """Write new keys/values ``[num_tokens, num_kv_heads, head_dim]`` into their cache slots. An fp8 cache
    (kv_cache_dtype) stores ``key / k_scale`` and ``value / v_scale`` (vLLM's per-tensor scales).
    ``all_slots_valid``: whether no slot is -1, when the caller knows it for the step (None: checked here)."""
    num_blocks, block_size = k_cache.shape[:2]
    if all_slots_valid is None:
        all_slots_valid = bool((slot_mapping >= 0).all())
    if not all_slots_valid:
        valid = slot_mapping >= 0
        key, value, slot_mapping = key[valid], value[valid], slot_mapping[valid]
    if k_scale != 1.0:
        key = key / k_scale
    if v_scale != 1.0:
        value = value / v_scale
    _raw(k_cache).view(num_blocks * block_size, *k_cache.shape[2:]).index_copy_(0, slot_mapping,
                                                                               _raw(_as(key, k_cache.dtype)))
    _raw(v_cache).view(num_blocks * block_size, *v_cache.shape[2:]).index_copy_(0, slot_mapping,
                                                                               _raw(_as(value, v_cache.dtype)))


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)`` without the dispatcher call when it is one already (a few us, several times per layer)."""
    return x if x.dtype == dtype else x.to(dtype)


def _dequantize(x: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """Cached keys or values in the query's dtype (an fp8 cache: converted, times its scale)."""
    x = _as(x, dtype)
    return x * scale if scale != 1.0 else x


def _gather_context(cache: torch.Tensor, block_table: torch.Tensor, length: int, which: int = 0) -> torch.Tensor:
    """The first ``length`` cached tokens of one request: ``[length, num_kv_heads, head_dim]``."""
    block_size = cache.shape[1]
    num_blocks = (length + block_size - 1) // block_size
    return _gather_blocks(cache, block_table[:num_blocks], which).flatten(0, 1)[:length]


# CPU scratch for the gathered keys / values, reused by every layer and step: a fresh multi-MB tensor per gather
# costs page faults (a 16-request decode gather measured 0.1 to 1.7 ms instead of 0.05 ms). Key: (dtype, which).
# One set per thread: two CPU engines of one process may run forwards on two threads at once, and a shared buffer
# let one's gather overwrite the other's keys mid-attention (seen with a split decode step, session 13).
_cpu_scratch_local = threading.local()


def _gather_blocks(cache: torch.Tensor, table: torch.Tensor, which: int = 0) -> torch.Tensor:
    """``cache[table]`` (any shape of ``table``) through ``index_select``: whole blocks are copied as rows, 10x
    faster on CPU than advanced indexing (34 vs 310 us for 144 blocks of 16x3x64 fp32); the same values. On CPU
    the result lives in a scratch buffer (``which`` picks one: keys and values need two) that the next gather
    overwrites."""
    shape = (*table.shape, *cache.shape[1:])
    if cache.device.type != "cpu":
        flat = table.reshape(-1)
        return _raw(cache).index_select(0, flat if flat.dtype == torch.long else flat.long()).view(
            cache.dtype).view(shape)
    flat, out = _cpu_gather_plan(cache, table, which)
    torch.index_select(cache, 0, flat, out=out)
    return out.view(shape)


def _cpu_gather_plan(cache: torch.Tensor, table: torch.Tensor, which: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The int64 block ids of ``table`` and the scratch rows ``[blocks, *cache.shape[1:]]`` that the CPU gather of
    ``cache[table]`` writes into."""
    flat = table.reshape(-1)
    if flat.dtype != torch.long:
        flat = flat.long()
    n = flat.numel() * math.prod(cache.shape[1:])
    scratch = _cpu_scratch_local.__dict__.setdefault("bufs", {})
    buf = scratch.get((cache.dtype, which))
    if buf is None or buf.numel() < n:
        buf = scratch[(cache.dtype, which)] = torch.empty(n, dtype=cache.dtype)
    return flat, buf[:n].view(flat.numel(), *cache.shape[1:])


def _decode_keys_values(k_cache: torch.Tensor, v_cache: torch.Tensor, tables: torch.Tensor, max_len: int,
                        step_cache: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values ``[D, Hkv, L, hd]`` of a padded decode batch (``tables`` ``[D, blocks]``, ``L = max_len``).
    On the CPU both gathers land in this thread's scratch buffers, so the block ids, the buffers and the views of
    them are the same for every layer of a step: made by the first layer (``step_cache``), each later one only
    runs the two ``index_select`` calls (14 view and index ops a layer fewer; 85 -> 53 us a layer for 16 requests
    x 150 keys, bf16, one thread; docs/perf.md, issue 19, session 14)."""
    if k_cache.device.type != "cpu":
        return (_gather_blocks(k_cache, tables).flatten(1, 2)[:, :max_len].transpose(1, 2),
                _gather_blocks(v_cache, tables, 1).flatten(1, 2)[:, :max_len].transpose(1, 2))
    key = ("decode_gather", k_cache.dtype, v_cache.dtype, tuple(k_cache.shape[1:]), tuple(v_cache.shape[1:]))
    plan = step_cache.get(key) if step_cache is not None else None
    if plan is None:
        planned = []
        for which, cache in enumerate((k_cache, v_cache)):
            flat, out = _cpu_gather_plan(cache, tables, which)
            view = out.view(*tables.shape, *cache.shape[1:]).flatten(1, 2)[:, :max_len].transpose(1, 2)
            planned.append((flat, out, view))
        plan = tuple(planned)
        if step_cache is not None:
            step_cache[key] = plan
    for cache, (flat, out, _) in zip((k_cache, v_cache), plan):
        torch.index_select(cache, 0, flat, out=out)
    return plan[0][2], plan[1][2]


# A padded decode of at most this many key vectors (requests x longest context x KV heads) runs on one CPU thread:
# SDPA splits its few rows over the threads, and waking the second (OMP_WAIT_POLICY=PASSIVE, envs.configure_openmp)
# costs more than it saves. 16 requests x 3 KV heads (SmolLM2), 2 threads vs 1, idle 2-core machine: 395 vs 170 us
# at 40 keys, 783 vs 502 at 150, 1,041 vs 1,553 at 400 (docs/perf.md, issue 19, session 7). Same result either way:
# each output row is computed by one thread, in the same order.
_ONE_THREAD_MAX_KEYS = 16 * 256 * 3


def _decode_mask(lens: list[int], max_len: int, dtype: torch.dtype, device: torch.device,
                 window: int = 0) -> torch.Tensor:
    """The padded decode batch's mask, additive (0 for a request's keys, -inf past its length and, with a
    ``window``, before its last ``window`` keys) ``[B, 1, 1, L]``: SDPA turns a boolean mask into this same float
    mask on every call (bitwise the same result), which cost half of a 16-request decode's SDPA on the CPU (245 vs
    123 us at 40 keys)."""
    ctx = torch.tensor(lens, device=device)
    pos = torch.arange(max_len, device=device)[None, :]
    hidden = pos >= ctx[:, None]
    if window:
        hidden |= pos < ctx[:, None] - window
    return torch.zeros(len(lens), 1, 1, max_len, dtype=dtype, device=device).masked_fill_(
        hidden[:, None, None, :], float("-inf"))


# A bf16 padded decode of many requests on the CPU as two batched matmuls and a softmax instead of SDPA: SDPA's CPU
# flash kernel packs each head's keys and values for its bf16 GEMMs, a cost not shared by the G (here 3) query rows of
# a decode; the matmuls have a larger fixed cost. SmolLM2's heads (3 KV heads x 3 query heads, head 64), one thread,
# µs, SDPA vs matmuls (benchmarks/cpu_session11/decode_attn.py, 2-core AVX512-BF16 EPYC): 16 requests 113 / 158 / 209
# / 384 vs 113 / 129 / 152 / 231 at 20 / 40 / 60 / 140 keys; 8 requests 60 / 80 / 106 / 195 vs 82 / 91 / 108 / 150;
# 4 requests 49 / 56 / 100 vs 133 / 81 / 106 at 20 / 60 / 140; 1 request 13 / 27 / 31 vs 108 / 69 / 77 (docs/perf.md,
# issue 19, session 11). So the matmuls from 8 requests and 512 padded keys (requests x longest context) up. fp32
# keeps SDPA: there the two are even at 16 requests (132 vs 128 µs at 40 keys, 331 vs 379 at 140), and SDPA is what
# the fp32 parity with HF transformers was established with.
BMM_MIN_REQUESTS, BMM_MIN_KEYS = 8, 512


def _decode_bmm(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None, scale: float,
                step_cache: dict | None, mask_key: str = "decode_mask") -> torch.Tensor:
    """SDPA of ``q`` ``[D, Hkv, G, hd]`` over ``keys`` / ``values`` ``[D, Hkv, L, hd]`` with the additive ``mask``
    ``[D, 1, 1, L]`` (or None): ``softmax(q k^T * scale + mask) v`` as ``baddbmm``, ``softmax``, ``bmm`` (softmax
    in fp32 inside, as SDPA's). The mask expanded to the matmuls' batch is kept in ``step_cache`` for the next
    layers."""
    d, hkv, g, hd = q.shape
    length = keys.shape[2]
    q3, k3, v3 = q.reshape(d * hkv, g, hd), keys.reshape(d * hkv, length, hd), values.reshape(d * hkv, length, hd)
    if mask is None:
        scores = torch.bmm(q3, k3.transpose(1, 2)).mul_(scale)
    else:
        wide = step_cache.get(mask_key + "_bmm") if step_cache is not None else None
        if wide is None or wide.shape != (d * hkv, g, length):
            wide = mask.expand(d, hkv, g, length).reshape(d * hkv, g, length)
            if step_cache is not None:
                step_cache[mask_key + "_bmm"] = wide
        scores = torch.baddbmm(wide, q3, k3.transpose(1, 2), alpha=scale)
    return torch.bmm(torch.softmax(scores, dim=-1), v3).view(d, hkv, g, hd)


def _soft_capped_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                           scale: float, cap: float, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA with Gemma 2's logit soft-capping (``cap`` 0: none) and gpt-oss's attention sinks, in HF's eager order:
    ``scores = q k^T * scale``, then ``tanh(scores / cap) * cap``, the mask (boolean: True = attend; or additive),
    softmax in fp32 over the scores and, with ``sinks``, one more logit per row (``sinks`` broadcasts to the scores'
    ``[..., rows, 1]``: each head's learned sink, which only adds to the denominator), times v."""
    scores = torch.matmul(q, keys.transpose(-1, -2)) * scale
    if cap:
        scores = torch.tanh(scores / cap) * cap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    if sinks is None:
        return torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), values)
    sink = sinks.to(scores.dtype).expand(*scores.shape[:-1], 1)
    probs = torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1, dtype=torch.float32)[..., :-1]
    return torch.matmul(probs.to(q.dtype), values)


def paged_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
                    scale: float, query_start_loc_cpu: list[int] | None = None,
                    seq_lens_cpu: list[int] | None = None, k_scale: float = 1.0,
                    v_scale: float = 1.0, step_cache: dict | None = None, soft_cap: float = 0.0,
                    window: int = 0, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of ``query`` ``[num_tokens, num_heads, head_dim]`` over each request's paged context.

    The keys/values of the new tokens must already be in the cache (``store_kv`` first). ``*_cpu`` are optional
    host copies of the metadata that spare a device sync. ``step_cache``: an empty dict per step, shared by the
    step's layers (same metadata, same query dtype), that keeps what depends only on the metadata (the decode
    mask) for the next layer. ``soft_cap``: Gemma 2's logit soft-capping (0: none). ``window``: a sliding window,
    each query sees itself and the ``window - 1`` keys before it (0: the whole context). ``sinks``: gpt-oss's
    attention sinks, ``[num_heads]`` learned logits each head adds to its softmax's denominator. Returns
    ``[num_tokens, num_heads, head_dim]``.
    """
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    starts = query_start_loc_cpu if query_start_loc_cpu is not None else query_start_loc.tolist()
    lens = seq_lens_cpu if seq_lens_cpu is not None else seq_lens.tolist()
    num_reqs = len(lens)
    q_lens = [starts[i + 1] - starts[i] for i in range(num_reqs)]

    # Decode requests (one new token each) are done as one padded batch: on CPU the per-request loop costs more
    # than the attention itself for small models. The G query heads sharing a KV head play the role of SDPA's
    # query length, so no KV head is repeated.
    decode = [i for i in range(num_reqs) if q_lens[i] == 1]
    done = set()
    if decode:
        max_len = max(lens[i] for i in decode)
        block_size = k_cache.shape[1]
        nblk = (max_len + block_size - 1) // block_size
        # Pure decode batch (the common case): rows, tables and the output need no indexing at all.
        pure = len(decode) == num_reqs and starts[num_reqs] == num_reqs and query.shape[0] == num_reqs
        if pure:
            tables = block_tables[:, :nblk]
            q = query.view(num_reqs, num_kv_heads, group, head_dim)             # [D, Hkv, G, hd]
        else:
            idx = torch.tensor(decode, dtype=torch.long, device=query.device)
            tables = block_tables[idx, :nblk]
            q_rows = torch.tensor([starts[i] for i in decode], dtype=torch.long, device=query.device)
            q = query[q_rows].view(len(decode), num_kv_heads, group, head_dim)
        # Windowed and full layers of one step mask differently: one cached mask each.
        mask_key = f"decode_mask_w{window}" if window else "decode_mask"
        mask = step_cache.get(mask_key) if step_cache is not None else None
        # All lengths equal (one request) and no key outside a window: nothing to mask.
        if mask is None and (any(lens[i] != max_len for i in decode) or (window and max_len > window)):
            mask = _decode_mask([lens[i] for i in decode], max_len, query.dtype, query.device, window)
            if step_cache is not None:
                step_cache[mask_key] = mask

        def gather_and_attend() -> torch.Tensor:
            keys, values = _decode_keys_values(k_cache, v_cache, tables, max_len, step_cache)   # [D, Hkv, L, hd]
            keys, values = _dequantize(keys, q.dtype, k_scale), _dequantize(values, q.dtype, v_scale)
            if soft_cap or sinks is not None:      # sinks [Hq] -> [Hkv, G, 1], q's [D, Hkv, G, hd] rows
                return _soft_capped_attention(q, keys, values, mask, scale, soft_cap,
                                              None if sinks is None else sinks.view(num_kv_heads, group, 1))
            if q.dtype == torch.bfloat16 and q.device.type == "cpu" and len(decode) >= BMM_MIN_REQUESTS \
                    and len(decode) * max_len >= BMM_MIN_KEYS:
                return _decode_bmm(q, keys, values, mask, scale, step_cache, mask_key)
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
        small = query.device.type == "cpu" and len(decode) * max_len * num_kv_heads <= _ONE_THREAD_MAX_KEYS
        o = on_one_thread(gather_and_attend) if small else gather_and_attend()
        if pure:
            return o.reshape(num_reqs, num_heads, head_dim)
        out = torch.empty_like(query)
        out[q_rows] = o.reshape(len(decode), num_heads, head_dim)
        done = set(decode)
    else:
        out = torch.empty_like(query)

    for i in range(num_reqs):
        if i in done or q_lens[i] == 0:
            continue
        s, e, ctx_len = starts[i], starts[i + 1], lens[i]
        q_len = e - s
        keys = _gather_context(k_cache, block_tables[i], ctx_len).transpose(0, 1)     # [Hkv, ctx, hd]
        values = _gather_context(v_cache, block_tables[i], ctx_len, 1).transpose(0, 1)
        q = query[s:e].view(q_len, num_kv_heads, group, head_dim).permute(1, 2, 0, 3)   # [Hkv, G, q_len, hd]
        q = q.reshape(num_kv_heads, group * q_len, head_dim)
        # Causal over the new tokens, full over the cached prefix: query row r (token r % q_len) sees keys
        # 0 .. ctx_len - q_len + r % q_len.
        q_pos = torch.arange(ctx_len - q_len, ctx_len, device=query.device).repeat(group)
        key_pos = torch.arange(ctx_len, device=query.device)[None, :]
        mask = key_pos <= q_pos[:, None]                                                # [G*q_len, ctx]
        if window:
            mask &= key_pos > q_pos[:, None] - window
        keys, values = _dequantize(keys, q.dtype, k_scale), _dequantize(values, q.dtype, v_scale)
        if soft_cap or sinks is not None:      # sinks [Hq] -> [Hkv, G * q_len, 1], q's rows (head-major)
            row_sinks = None if sinks is None else sinks.view(num_kv_heads, group, 1).repeat_interleave(q_len, 1)
            o = _soft_capped_attention(q, keys, values, mask, scale, soft_cap, row_sinks)
        else:
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
        out[s:e] = o.view(num_kv_heads, group, q_len, head_dim).permute(2, 0, 1, 3).reshape(q_len, num_heads,
                                                                                              head_dim)
    return out


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, scale: float, cu_seqlens_q_cpu: list[int] | None = None,
                     cu_seqlens_k_cpu: list[int] | None = None, causal: bool = True,
                     return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of ``q`` ``[Tq, Hq, D]`` over keys / values given as tensors, ``k`` ``[Tk, Hkv, D]``,
    ``v`` ``[Tk, Hkv, Dv]``, requests back to back (``cu_seqlens_*``: ``[B + 1]`` prefix sums; ``*_cpu``: their
    host copies). Request ``b``'s queries are its last keys' positions: query ``i`` sees keys
    ``0 .. len_k - len_q + i``. ``causal=False``: every query sees all its request's keys (any number of them, 0
    included: output 0, LSE -inf). Returns ``[Tq, Hq, Dv]``, with ``return_lse`` also each row's softmax
    log-sum-exp ``[Tq, Hq]`` fp32 (natural log, of the scaled scores: merge_attn_states)
    (AttentionBackend.varlen_attention)."""
    q_starts = cu_seqlens_q_cpu if cu_seqlens_q_cpu is not None else cu_seqlens_q.tolist()
    k_starts = cu_seqlens_k_cpu if cu_seqlens_k_cpu is not None else cu_seqlens_k.tolist()
    group = q.shape[1] // k.shape[1]
    out = q.new_zeros(q.shape[0], q.shape[1], v.shape[2])
    lse = q.new_full(q.shape[:2], float("-inf"), dtype=torch.float32) if return_lse else None
    for b in range(len(q_starts) - 1):
        s, e, ks, ke = q_starts[b], q_starts[b + 1], k_starts[b], k_starts[b + 1]
        if s == e or (ks == ke and not causal):
            continue
        qb, kb, vb = q[s:e].transpose(0, 1), k[ks:ke].transpose(0, 1), v[ks:ke].transpose(0, 1)   # [H, len, D]
        if group > 1:
            kb, vb = kb.repeat_interleave(group, 0), vb.repeat_interleave(group, 0)
        ctx = (ke - ks) - (e - s)                    # keys before the first query: seen by every query
        mask = None
        if causal and ctx:
            pos = torch.arange(ke - ks, device=q.device)
            mask = pos[None, :] <= pos[ctx:, None]                          # [len_q, len_k]: True = attend
        if return_lse:
            # Written out (SDPA gives no LSE): scores in fp32, as the kernels keep them.
            scores = torch.matmul(qb.float(), kb.float().transpose(1, 2)) * scale
            if causal:
                if mask is None:
                    mask = torch.ones(e - s, ke - ks, dtype=torch.bool, device=q.device).tril()
                scores = scores.masked_fill(~mask, float("-inf"))
            lse[s:e] = torch.logsumexp(scores, dim=-1).transpose(0, 1)
            o = torch.matmul(torch.softmax(scores, dim=-1), vb.float()).to(out.dtype)
        else:
            o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, is_causal=causal and not ctx, scale=scale)
        out[s:e] = o.transpose(0, 1)
    return (out, lse) if return_lse else out


def merge_attn_states(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor,
                      lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention over two disjoint key sets from each one's output ``[T, H, Dv]`` and softmax log-sum-exp
    ``[T, H]`` (fp32, natural log; -inf: no key): each output weighted by its share of the whole softmax's
    denominator, ``exp(lse_x - lse)``, with ``lse = logaddexp(lse_a, lse_b)`` (vLLM's merge_attn_states). Returns
    the merged output (``out_a``'s dtype) and LSE; a row with no key in either stays 0 / -inf."""
    top = torch.maximum(lse_a, lse_b)
    top = torch.where(torch.isinf(top) & (top < 0), torch.zeros_like(top), top)   # no key either side: no NaN
    w_a, w_b = torch.exp(lse_a - top), torch.exp(lse_b - top)
    total = w_a + w_b
    lse = top + torch.log(total)
    denom = torch.where(total > 0, total, torch.ones_like(total))
    # One fp32 temporary of the outputs' size (the GPU runs this over a step's whole prompt rows, per chunk).
    out = out_a.float().mul_((w_a / denom)[..., None]).addcmul_(out_b, (w_b / denom)[..., None])
    return out.to(out_a.dtype), lse
