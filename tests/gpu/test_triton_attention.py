"""Triton paged attention vs the PyTorch reference (``pagedllm.kernels.torch_attention``).

Runs on a CUDA GPU. Without one the module is skipped, unless ``TRITON_INTERPRET=1`` is set: then the kernels run
in Triton's CPU interpreter on CPU tensors (slow; use ``-k`` to pick cases), which is how they were first checked.
"""
from __future__ import annotations

import os
import random
from types import SimpleNamespace

import pytest
import torch

triton = pytest.importorskip("triton")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and not INTERPRET, reason="needs a CUDA GPU")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

from pagedllm.kernels import torch_attention as ref  # noqa: E402
from pagedllm.kernels import triton_attention as tri  # noqa: E402

HEADS = [(28, 4, 128), (12, 2, 64), (9, 3, 64), (32, 32, 128)]   # Qwen2.5-7B, Qwen2.5-1.5B-ish, SmolLM2, MHA
DTYPES = [torch.bfloat16, torch.float16]
# Triton 3.6's interpreter mis-converts fp32 -> bf16 (garbage outputs); under it bf16 cases use fp16 instead.
BF16 = torch.float16 if INTERPRET else torch.bfloat16
BAD_BLOCK = 2 ** 30   # unused block-table tail: reading it would fault (the layout says the tail is arbitrary)


def rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    out, expected = out.double(), expected.double()
    assert torch.isfinite(out).all()
    return ((out - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def make_batch(specs, num_heads, num_kv_heads, head_dim, block_size, dtype, seed=0, spare_blocks=7):
    """Random paged batch. ``specs``: list of (seq_len, q_len). Block ids are a random permutation of the pool
    (non-contiguous, shuffled order) and the unused tail of each block-table row holds an invalid id."""
    if INTERPRET and dtype == torch.bfloat16:
        pytest.skip("bf16 is not supported by the Triton interpreter")
    g = torch.Generator().manual_seed(seed)
    need = [(s + block_size - 1) // block_size for s, _ in specs]
    num_blocks = sum(need) + spare_blocks
    max_blocks = max(need + [1]) + 2
    perm = torch.randperm(num_blocks, generator=g)
    tables = torch.full((len(specs), max_blocks), BAD_BLOCK, dtype=torch.int32)
    used = 0
    for i, n in enumerate(need):
        tables[i, :n] = perm[used:used + n].to(torch.int32)
        used += n
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=g).to(dtype)
    v_cache = torch.randn(shape, generator=g).to(dtype)
    q_lens = [q for _, q in specs]
    qsl = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0).tolist()), dtype=torch.int32)
    query = torch.randn(sum(q_lens), num_heads, head_dim, generator=g).to(dtype)
    seq_lens = torch.tensor([s for s, _ in specs], dtype=torch.int32)
    d = DEVICE
    return (query.to(d), k_cache.to(d), v_cache.to(d), qsl.to(d), seq_lens.to(d), tables.to(d))


def reference(query, k_cache, v_cache, qsl, seq_lens, tables, scale, chunk=8, soft_cap=0.0, window=0, sinks=None):
    # The reference's batched-decode path gathers whole table rows up to the longest request, so it needs valid
    # ids in the tails; the kernels get the poisoned tables. It also materialises [n, max_len, Hkv, D] fp32 copies
    # (4 GiB for 64 x 4096 x 32 x 128), too much with several pytest-xdist workers on one GPU: go `chunk`
    # requests at a time.
    tables = torch.where(tables == BAD_BLOCK, torch.zeros_like(tables), tables)
    k32, v32 = k_cache.float(), v_cache.float()
    starts = qsl.tolist()
    outs = []
    for i in range(0, len(starts) - 1, chunk):
        j = min(i + chunk, len(starts) - 1)
        sub_qsl = (qsl[i:j + 1] - starts[i]).to(qsl.dtype)
        outs.append(ref.paged_attention(query[starts[i]:starts[j]].float(), k32, v32, sub_qsl, seq_lens[i:j],
                                        tables[i:j], scale, soft_cap=soft_cap, window=window, sinks=sinks))
    return torch.cat(outs)


# ------------------------------------------------------------------------------------------------ store_kv
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("num_kv_heads,head_dim,block_size", [(4, 128, 16), (3, 64, 32), (2, 80, 8)])
def test_store_kv_exact(dtype, num_kv_heads, head_dim, block_size):
    torch.manual_seed(0)
    num_blocks, num_tokens = 40, 100
    slots = torch.randperm(num_blocks * block_size)[:num_tokens]
    slots[torch.randperm(num_tokens)[:13]] = -1                 # padding tokens
    key = torch.randn(num_tokens, num_kv_heads, head_dim).to(dtype).to(DEVICE)
    value = torch.randn(num_tokens, num_kv_heads, head_dim).to(dtype).to(DEVICE)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k0 = torch.randn(shape).to(dtype).to(DEVICE)
    v0 = torch.randn(shape).to(dtype).to(DEVICE)
    k1, v1, k2, v2 = k0.clone(), v0.clone(), k0.clone(), v0.clone()
    slots = slots.to(DEVICE)
    ref.store_kv(key, value, k1, v1, slots)
    tri.store_kv(key, value, k2, v2, slots)
    assert torch.equal(k1, k2) and torch.equal(v1, v2)
    # Strided inputs (k and v as views of one fused qkv tensor) and int32 slots.
    qkv = torch.randn(num_tokens, 3, num_kv_heads, head_dim).to(dtype).to(DEVICE)
    ref.store_kv(qkv[:, 1], qkv[:, 2], k1, v1, slots)
    tri.store_kv(qkv[:, 1], qkv[:, 2], k2, v2, slots.to(torch.int32))
    assert torch.equal(k1, k2) and torch.equal(v1, v2)


# ------------------------------------------------------------------------------------------------ extend
def mixed_specs(rng: random.Random, long: bool):
    """Prefills (q == seq), extends over a cached prefix, decodes, short and long."""
    specs = [(1, 1), (17, 17), (300, 300), (530, 37), (129, 1), (64, 64), (33, 2), (100, 5), (101, 6), (50, 16),
             (51, 17), (20, 3), (40, 4)]   # q_len around the short-request pass threshold (16 // G)
    if long:
        specs += [(1024, 1024), (4096, 96), (4096, 1), (2000, 700)]
    specs += [(rng.randint(1, 600), 1) for _ in range(5)]
    specs += [(s, rng.randint(1, s)) for s in (rng.randint(2, 900) for _ in range(4))]
    rng.shuffle(specs)
    return specs


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", HEADS)
def test_extend_mixed(num_heads, num_kv_heads, head_dim, block_size, dtype):
    rng = random.Random(num_heads * 1000 + block_size)
    specs = mixed_specs(rng, long=not INTERPRET)
    batch = make_batch(specs, num_heads, num_kv_heads, head_dim, block_size, dtype, seed=block_size)
    scale = head_dim ** -0.5
    max_q = max(q for _, q in specs)
    out = tri.extend_attention(*batch, scale, max_q)
    assert out.dtype == dtype
    assert rel_err(out, reference(*batch, scale)) < 1e-2
    # The dispatcher takes the same path for q_len > 1.
    out2 = tri.paged_attention(*batch, scale, max_q)
    assert torch.equal(out, out2)
    # Single launch (no separate pass for short requests) agrees too.
    out3 = tri.extend_attention(*batch, scale, max_q, _two_pass=False)
    assert rel_err(out3, reference(*batch, scale)) < 1e-2


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(28, 4, 128), (12, 2, 64)])
@pytest.mark.parametrize("num_decodes", [1, 9, 64])
def test_mixed_batch_decodes_through_decode_kernel(num_heads, num_kv_heads, head_dim, num_decodes):
    """A mixed batch with its one-token requests first (the model runner's order): the dispatcher sends those to
    the split-KV decode kernel and the rest to the extend kernel; together they match the reference, and each
    group equals what its kernel gives alone."""
    if INTERPRET and num_decodes > 9:
        pytest.skip("slow under the interpreter")
    rng = random.Random(num_decodes)
    decodes = [(rng.randint(1, 3000 if not INTERPRET else 300), 1) for _ in range(num_decodes)]
    prompts = [(300, 300), (530, 37), (33, 2), (2000, 700)] if not INTERPRET else [(40, 40), (53, 7), (9, 2)]
    specs = decodes + prompts
    query, k_cache, v_cache, qsl, seq_lens, tables = make_batch(specs, num_heads, num_kv_heads, head_dim, 16, BF16)
    scale = head_dim ** -0.5
    max_q = max(q for _, q in specs)
    nd = num_decodes
    prefill_qsl = (qsl[nd:] - qsl[nd]).to(torch.int32)
    workspace = tri.DecodeWorkspace.allocate(128, num_heads, num_kv_heads, head_dim, query.device)
    out = tri.paged_attention(query, k_cache, v_cache, qsl, seq_lens, tables, scale, max_q, workspace=workspace,
                              num_decodes=nd, prefill_query_start_loc=prefill_qsl)
    assert rel_err(out, reference(query, k_cache, v_cache, qsl, seq_lens, tables, scale)) < 1e-2
    alone = tri.decode_attention(query[:nd], k_cache, v_cache, seq_lens[:nd], tables[:nd], scale, workspace)
    assert torch.equal(out[:nd], alone)
    rest = tri.extend_attention(query[nd:], k_cache, v_cache, prefill_qsl, seq_lens[nd:], tables[nd:], scale, max_q)
    assert torch.equal(out[nd:], rest)


@pytest.mark.parametrize("head_dim", [32, 256, 80])
def test_extend_other_head_dims(head_dim):
    specs = [(200, 200), (77, 5), (300, 1), (40, 40)]
    batch = make_batch(specs, 8, 2, head_dim, 16, BF16, seed=head_dim)
    out = tri.extend_attention(*batch, 0.1, 200)
    assert rel_err(out, reference(*batch, 0.1)) < 1e-2


@pytest.mark.parametrize("block_size", [8, 64])
def test_extend_fp32_cache_and_block_sizes(block_size):
    specs = [(150, 150), (90, 30), (70, 1)]
    batch = make_batch(specs, 12, 4, 64, block_size, torch.float32, seed=block_size)
    out = tri.extend_attention(*batch, 0.125, 150)
    assert rel_err(out, reference(*batch, 0.125)) < 1e-2


def test_extend_max_query_len_upper_bound_and_out():
    """max_query_len only picks tiles: an over-estimate is fine; ``out`` is written in place."""
    specs = [(50, 20), (10, 10), (300, 3)]
    batch = make_batch(specs, 28, 4, 128, 16, BF16, seed=3)
    out = torch.full_like(batch[0], float("nan"))
    tri.extend_attention(*batch, 0.08, 4096, out=out)
    assert rel_err(out, reference(*batch, 0.08)) < 1e-2


# ------------------------------------------------------------------------------------------------ decode
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", HEADS)
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_decode(num_heads, num_kv_heads, head_dim, block_size, dtype, batch_size):
    rng = random.Random(batch_size * 7 + block_size)
    top = 600 if INTERPRET else 4096
    lens = [rng.choice([1, 2, 15, 16, 17, 127, 128, 129, 511, 2048, top, rng.randint(1, top)])
            for _ in range(batch_size)]
    if batch_size == 1:
        lens = [top - 3]
    specs = [(s, 1) for s in lens]
    batch = make_batch(specs, num_heads, num_kv_heads, head_dim, block_size, dtype, seed=batch_size)
    query, k_cache, v_cache, qsl, seq_lens, tables = batch
    scale = head_dim ** -0.5
    ws = tri.DecodeWorkspace.allocate(64, num_heads, num_kv_heads, head_dim, device=DEVICE)
    out = tri.decode_attention(query, k_cache, v_cache, seq_lens, tables, scale, ws)
    expected = reference(*batch, scale)
    assert rel_err(out, expected) < 1e-2
    # Without a workspace (scratch per call) and through the dispatcher.
    assert torch.equal(tri.decode_attention(query, k_cache, v_cache, seq_lens, tables, scale), out)
    assert torch.equal(tri.paged_attention(*batch, scale, 1, workspace=ws), out)


def test_decode_split_counts_agree():
    """Each batch size picks a different split grid; all must agree with the reference."""
    lens = [1, 64, 129, 1000, 3000, 4096, 257, 513]
    specs = [(s, 1) for s in lens]
    batch = make_batch(specs, 28, 4, 128, 16, BF16, seed=11)
    query, k_cache, v_cache, qsl, seq_lens, tables = batch
    expected = reference(*batch, 0.1)
    for cfg in [(64, 128, 4, 4, 3), (32, 32, 64, 4, 2), (64, 64, 1, 4, 2), (128, 128, 8, 8, 2)]:
        out = tri.decode_attention(query, k_cache, v_cache, seq_lens, tables, 0.1, _config=cfg)
        assert rel_err(out, expected) < 1e-2, cfg


def test_decode_zero_length_padding():
    """seq_len 0 (a padded CUDA-graph row) gives zeros, not NaN, and leaves the others right."""
    specs = [(100, 1), (1, 1), (700, 1)]
    query, k_cache, v_cache, qsl, seq_lens, tables = make_batch(specs, 12, 2, 64, 16, BF16)
    expected = reference(query, k_cache, v_cache, qsl, seq_lens, tables, 0.125)
    pad_q = torch.cat([query, query[:1]])
    pad_lens = torch.cat([seq_lens, seq_lens.new_zeros(1)])
    pad_tables = torch.cat([tables, tables.new_full((1, tables.shape[1]), BAD_BLOCK)])
    for cfg in [None, (64, 128, 1, 4, 2)]:   # split and single-pass paths
        out = tri.decode_attention(pad_q, k_cache, v_cache, pad_lens, pad_tables, 0.125, _config=cfg)
        assert rel_err(out[:3], expected) < 1e-2
        assert torch.equal(out[3], torch.zeros_like(out[3]))


def test_decode_tail_splits_mixed_lengths():
    """A batch that fills the GPU by itself still cuts long contexts into up to TAIL_SPLITS chunks (merged by the
    last program of each request and head): same result as the reference and as no tail split, and the
    workspace's arrival counters are all back to zero afterwards (so the next layer / replay starts clean)."""
    rng = random.Random(5)
    n, top = (24, 600) if INTERPRET else (300, 3000)
    lens = [rng.choice([1, 63, 64, 65, 257, top, rng.randint(1, top)]) for _ in range(n)]
    batch = make_batch([(s, 1) for s in lens], 28, 4, 128, 16, BF16, seed=5)
    query, k_cache, v_cache, qsl, seq_lens, tables = batch
    expected = reference(*batch, 0.1)
    # ctas_per_sm 0: "the batch alone fills the GPU" at any size, so the tail plan applies.
    ws = tri.DecodeWorkspace.allocate(n, 28, 4, 128, device=DEVICE, ctas_per_sm=0, tail_splits=4)
    assert tri.decode_plan(n, 4, ws.sm_count, ctas_per_sm=0, tail_splits=4, tail_chunk=64) == (4, 64)
    outs = {}
    for tail in (1, 4):
        for _ in range(2):       # twice: the second call must find the counters reset
            outs[tail] = tri.decode_attention(query, k_cache, v_cache, seq_lens, tables, 0.1, ws,
                                              _config=(64, 64, 0, 4, 2, tail, 64))
        assert rel_err(outs[tail], expected) < 1e-2, tail
    assert rel_err(outs[4], outs[1]) < 1e-2
    assert int(ws.locks.abs().sum()) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(28, 4, 128), (9, 3, 64)])
def test_decode_cuda_graph_replay(num_heads, num_kv_heads, head_dim):
    """Capture once, replay with new seq_lens / block tables / queries: split counts change on the device."""
    block_size, batch_size, max_blocks = 16, 8, 4096 // 16 + 1
    num_blocks = batch_size * max_blocks
    dtype = torch.bfloat16
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, device="cuda", dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    ws = tri.DecodeWorkspace.allocate(256, num_heads, num_kv_heads, head_dim)
    s_query = torch.zeros(batch_size, num_heads, head_dim, device="cuda", dtype=dtype)
    s_lens = torch.ones(batch_size, device="cuda", dtype=torch.int32)
    s_tables = torch.zeros(batch_size, max_blocks, device="cuda", dtype=torch.int32)
    s_out = torch.empty_like(s_query)
    scale = head_dim ** -0.5

    def step():
        tri.decode_attention(s_query, k_cache, v_cache, s_lens, s_tables, scale, ws, out=s_out)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()                                   # compile + warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    rng = random.Random(5)
    for trial in range(4):
        lens = [rng.choice([1, 5, 16, 100, 1000, 4096, rng.randint(1, 4096)]) for _ in range(batch_size)]
        if trial == 3:
            lens[-2:] = [0, 0]                   # padded rows
        tables = torch.full((batch_size, max_blocks), BAD_BLOCK, dtype=torch.int32)
        perm = torch.randperm(num_blocks)
        used = 0
        for i, s in enumerate(lens):
            n = (s + block_size - 1) // block_size
            tables[i, :n] = perm[used:used + n].to(torch.int32)
            used += n
        s_query.copy_(torch.randn(batch_size, num_heads, head_dim).to(dtype))
        s_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        s_tables.copy_(tables)
        s_out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        live = [i for i, s in enumerate(lens) if s > 0]
        idx = torch.tensor(live, device="cuda")
        qsl = torch.arange(len(live) + 1, dtype=torch.int32, device="cuda")
        expected = reference(s_query[idx], k_cache, v_cache, qsl, s_lens[idx], s_tables[idx], scale)
        assert rel_err(s_out[idx], expected) < 1e-2
        for i, s in enumerate(lens):
            if s == 0:
                assert torch.equal(s_out[i], torch.zeros_like(s_out[i]))


# ------------------------------------------------------------------------------------ decode_rope_attention
def _rope_step(lens, num_heads, num_kv_heads, head_dim, rotary_dim, cfg, seed):
    """One decode step for the fused kernel: the paged cache (last request a padding row: seq_len 0, slot -1), the
    step's fused QKV rows, positions, slots, rotary tables, and the unfused result (rotary_store_kv then
    decode_attention) with the cache it leaves."""
    from pagedllm.kernels.triton_rotary import rotary_store_kv
    specs = [(max(s, 1), 1) for s in lens]
    query, k_cache, v_cache, _, seq_lens, tables = make_batch(specs, num_heads, num_kv_heads, head_dim, 16, BF16,
                                                               seed=seed)
    seq_lens[-1] = 0
    g = torch.Generator().manual_seed(seed % 7)
    b = len(lens)
    # One fused QKV row per request, as the model hands them over: q / k / v are strided views of it.
    qkv = torch.randn(b, (num_heads + 2 * num_kv_heads) * head_dim, generator=g).to(BF16).to(DEVICE)
    hq, hk = num_heads * head_dim, num_kv_heads * head_dim
    positions = (seq_lens.long() - 1).clamp_min(0)
    slots = torch.tensor([int(tables[i, (s - 1) // 16]) * 16 + (s - 1) % 16 if s > 0 else -1
                          for i, s in enumerate(seq_lens.tolist())], dtype=torch.long, device=DEVICE)
    inv = 1.0 / (10000.0 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
    freqs = torch.outer(torch.arange(4096).float(), inv)
    cos, sin = freqs.cos().to(DEVICE), freqs.sin().to(DEVICE)
    scale = head_dim ** -0.5
    ws = tri.DecodeWorkspace.allocate(64, num_heads, num_kv_heads, head_dim, device=DEVICE) if cfg is None else None

    def views(t):
        return (t[:, :hq].view(b, num_heads, head_dim), t[:, hq:hq + hk].view(b, num_kv_heads, head_dim),
                t[:, hq + hk:].view(b, num_kv_heads, head_dim))

    kc1, vc1, qkv1 = k_cache.clone(), v_cache.clone(), qkv.clone()
    q1, k1, v1 = views(qkv1)
    rotary_store_kv(positions, q1, k1, v1, cos, sin, kc1, vc1, slots)
    expected = tri.decode_attention(q1, kc1, vc1, seq_lens, tables, scale, ws, _config=cfg)
    return SimpleNamespace(k_cache=k_cache, v_cache=v_cache, qkv=qkv, views=views, positions=positions, slots=slots,
                           cos=cos, sin=sin, scale=scale, ws=ws, seq_lens=seq_lens, tables=tables, q1=q1, kc1=kc1,
                           vc1=vc1, expected=expected)


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,rotary_dim", [(28, 4, 128, 128), (9, 3, 64, 64),
                                                                        (12, 2, 64, 32)])
@pytest.mark.parametrize("cfg", [None, (64, 64, 1, 4, 2), (16, 16, 16, 4, 2)], ids=["default", "single", "splits"])
@pytest.mark.parametrize("prefetch", [False, True], ids=["after-wait", "prefetch"])
def test_decode_rope_attention_equals_rotary_store_then_decode(num_heads, num_kv_heads, head_dim, rotary_dim, cfg,
                                                               prefetch):
    """The fused kernel leaves the same rotated K and V in the cache and returns the same output as
    rotary_store_kv followed by decode_attention (the engine's unfused path), for every split plan, a partial
    rotary (rotary_dim < head_dim) and a padding row (slot -1, seq_len 0); with each split's first tile of older
    keys read before the wait or not."""
    t = _rope_step([1, 70, 300, 17, 0], num_heads, num_kv_heads, head_dim, rotary_dim, cfg, head_dim + rotary_dim)
    kc2, vc2, qkv2 = t.k_cache.clone(), t.v_cache.clone(), t.qkv.clone()
    q2, k2, v2 = t.views(qkv2)
    out = tri.decode_attention(q2, kc2, vc2, t.seq_lens, t.tables, t.scale, t.ws, _config=cfg,
                               rope=tri.DecodeRope(k2, v2, t.cos, t.sin, t.positions, t.slots, prefetch))
    assert torch.equal(kc2, t.kc1) and torch.equal(vc2, t.vc1)
    assert torch.equal(qkv2, t.qkv)                # the inputs are left unrotated
    torch.testing.assert_close(out, t.expected, rtol=0, atol=0)
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))
    fused = tri.decode_rope_attention(q2, k2, v2, t.k_cache.clone(), t.v_cache.clone(), t.cos, t.sin, t.positions,
                                      t.slots, t.seq_lens, t.tables, t.scale, t.ws, prefetch=prefetch)
    assert torch.equal(fused, tri.decode_attention(t.q1, t.kc1, t.vc1, t.seq_lens, t.tables, t.scale, t.ws))


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,rotary_dim", [(28, 4, 128, 128), (12, 2, 64, 32)])
@pytest.mark.parametrize("cfg", [None, (64, 64, 1, 4, 2), (16, 16, 16, 4, 2)], ids=["default", "single", "splits"])
def test_decode_rope_attention_new_key_from_registers(num_heads, num_kv_heads, head_dim, rotary_dim, cfg):
    """PAGEDLLM_DECODE_ROPE_FUSED=3: the new key / value join the softmax from registers. The cache gets the same
    bits as rotary_store_kv writes, and the output matches rotary_store_kv + decode_attention up to rounding, for
    contexts whose new key opens a tile (65, 129 with tiles of 64 / 16), ends one (64), sits alone (1) or in a split
    of several tiles (300), and a padding row (seq_len 0: zeros)."""
    t = _rope_step([1, 64, 65, 129, 300, 17, 0], num_heads, num_kv_heads, head_dim, rotary_dim, cfg, 7 + head_dim)
    kc2, vc2, qkv2 = t.k_cache.clone(), t.v_cache.clone(), t.qkv.clone()
    q2, k2, v2 = t.views(qkv2)
    out = tri.decode_attention(q2, kc2, vc2, t.seq_lens, t.tables, t.scale, t.ws, _config=cfg,
                               rope=tri.DecodeRope(k2, v2, t.cos, t.sin, t.positions, t.slots, True, True))
    assert torch.equal(kc2, t.kc1) and torch.equal(vc2, t.vc1)
    assert torch.equal(qkv2, t.qkv)
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))
    torch.testing.assert_close(out.float(), t.expected.float(), rtol=2e-2, atol=2e-2)
    # The one-key row is exactly the new value (softmax over one key), rotated q or not.
    torch.testing.assert_close(out[0].float(), v2[0].float().repeat_interleave(num_heads // num_kv_heads, 0),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="new_in_regs needs prefetch"):
        tri.decode_rope_attention(q2, k2, v2, kc2, vc2, t.cos, t.sin, t.positions, t.slots, t.seq_lens, t.tables,
                                  t.scale, t.ws, prefetch=False, new_in_regs=True)


# ------------------------------------------------------------------------------------------------ soft-capping
CAP = 2.0     # Gemma 2's is 50; a small cap changes these random scores (|s| ~ 1-4) a lot, so a kernel that
              # ignored it would fail


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(8, 4, 256), (9, 3, 64)])   # Gemma 2's head dim
def test_soft_capped_extend_decode_and_fused_rope_decode(num_heads, num_kv_heads, head_dim):
    """Gemma 2's logit soft-capping in every kernel path against the reference's HF-order math: extend (mixed
    prefills, extends, decodes), split-KV decode, and the fused rotary decode (with the first tile prefetched and
    the new key from registers)."""
    specs = [(1, 1), (17, 17), (130, 40), (70, 1), (33, 2), (200, 1)]
    batch = make_batch(specs, num_heads, num_kv_heads, head_dim, 16, torch.float16, seed=3)
    scale = 0.35            # larger than head_dim ** -0.5: scores big enough for the cap to bite
    expected = reference(*batch, scale, soft_cap=CAP)
    assert rel_err(reference(*batch, scale), expected) > 0.05           # the cap changes the answer
    out = tri.paged_attention(*batch, scale, 40, soft_cap=CAP)
    assert rel_err(out, expected) < 1e-2
    decodes = make_batch([(s, 1) for s in (1, 70, 200, 17)], num_heads, num_kv_heads, head_dim, 16, torch.float16,
                         seed=4)
    query, k_cache, v_cache, qsl, seq_lens, tables = decodes
    ws = tri.DecodeWorkspace.allocate(8, num_heads, num_kv_heads, head_dim, device=DEVICE)
    for cfg in (None, (16, 16, 16, 4, 2)):          # default plan, and several splits per request
        out = tri.decode_attention(query, k_cache, v_cache, seq_lens, tables, scale, ws if cfg is None else None,
                                   _config=cfg, soft_cap=CAP)
        assert rel_err(out, reference(*decodes, scale, soft_cap=CAP)) < 1e-2
    t = _rope_step([1, 64, 65, 129, 17], num_heads, num_kv_heads, head_dim, head_dim, None, 11)
    unfused = tri.decode_attention(t.q1, t.kc1, t.vc1, t.seq_lens, t.tables, scale, t.ws, soft_cap=CAP)
    assert rel_err(unfused, tri.decode_attention(t.q1, t.kc1, t.vc1, t.seq_lens, t.tables, scale, t.ws)) > 0.05
    _assert_fused_rope_decode_gives(unfused, t, scale, soft_cap=CAP)


def _assert_fused_rope_decode_gives(unfused, t, scale, **extras):
    """The fused rotary decode (after the PDL wait, first tile prefetched, new key from registers) of ``_rope_step``
    ``t`` with ``extras`` (soft_cap, sinks) equals ``unfused`` up to rounding."""
    for prefetch, in_regs in ((False, False), (True, False), (True, True)):
        q2, k2, v2 = t.views(t.qkv.clone())
        fused = tri.decode_rope_attention(q2, k2, v2, t.k_cache.clone(), t.v_cache.clone(), t.cos, t.sin,
                                          t.positions, t.slots, t.seq_lens, t.tables, scale, t.ws, prefetch=prefetch,
                                          new_in_regs=in_regs, **extras)
        torch.testing.assert_close(fused.float(), unfused.float(), rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------------------------------------ sliding window
@pytest.mark.parametrize("window", [1, 24, 100])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(8, 4, 256), (9, 3, 64)])
def test_sliding_window_extend_and_decode(num_heads, num_kv_heads, head_dim, window):
    """A sliding window (each query sees itself and the window - 1 keys before it) in the extend kernel (prefills,
    extends whose chunk starts past the window, decodes in mixed batches) and the split-KV decode kernel (splits
    wholly before the window, one split, several), against the reference; with a soft cap too (Gemma 2's
    windowed layers). The window changes the answer (a kernel that ignored it would fail)."""
    specs = [(1, 1), (17, 17), (130, 40), (70, 1), (33, 2), (200, 1), (300, 90)]
    batch = make_batch(specs, num_heads, num_kv_heads, head_dim, 16, torch.float16, seed=5)
    scale = head_dim ** -0.5
    expected = reference(*batch, scale, window=window)
    assert rel_err(reference(*batch, scale), expected) > 0.05
    assert rel_err(tri.paged_attention(*batch, scale, 90, window=window), expected) < 1e-2
    capped = reference(*batch, scale, soft_cap=CAP, window=window)
    assert rel_err(tri.paged_attention(*batch, scale, 90, soft_cap=CAP, window=window), capped) < 1e-2
    decodes = make_batch([(s, 1) for s in (1, 20, 70, 200, 333)], num_heads, num_kv_heads, head_dim, 16,
                         torch.float16, seed=6)
    query, k_cache, v_cache, qsl, seq_lens, tables = decodes
    ws = tri.DecodeWorkspace.allocate(8, num_heads, num_kv_heads, head_dim, device=DEVICE)
    for cfg in (None, (16, 16, 16, 4, 2), (64, 64, 1, 4, 2)):     # default plan, several splits, one
        out = tri.decode_attention(query, k_cache, v_cache, seq_lens, tables, scale, ws if cfg is None else None,
                                   _config=cfg, window=window)
        assert rel_err(out, reference(*decodes, scale, window=window)) < 1e-2
    with pytest.raises(ValueError, match="sliding window is not supported with the fused rotary decode"):
        tri.decode_attention(query, k_cache, v_cache, seq_lens, tables, scale, ws, window=window,
                             rope=tri.DecodeRope(query, query, None, None, None, None, False, False))


# ------------------------------------------------------------------------------------------------ attention sinks
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(64, 8, 64), (9, 3, 64)])    # gpt-oss's heads
def test_attention_sinks_in_every_path(num_heads, num_kv_heads, head_dim):
    """gpt-oss's attention sinks (a learned logit per head in each softmax's denominator) in every kernel path
    against the reference: extend (prefills, extends, decodes in a mixed batch, the short-request pass), split-KV
    decode with one split and several (the sink in the log-sum-exp once: a second count would fail), with a sliding
    window, and the fused rotary decode (prefetch, new key from registers). The sinks change the answer."""
    g = torch.Generator().manual_seed(7)
    sinks = (3.0 + 2.0 * torch.randn(num_heads, generator=g)).to(torch.float16).to(DEVICE)    # ~ log(keys)
    specs = [(1, 1), (17, 17), (130, 40), (70, 1), (33, 2), (200, 1), (300, 90)]
    batch = make_batch(specs, num_heads, num_kv_heads, head_dim, 16, torch.float16, seed=8)
    scale = head_dim ** -0.5
    expected = reference(*batch, scale, sinks=sinks)
    assert rel_err(reference(*batch, scale), expected) > 0.05
    assert rel_err(tri.paged_attention(*batch, scale, 90, sinks=sinks), expected) < 1e-2
    windowed = reference(*batch, scale, window=24, sinks=sinks)
    assert rel_err(tri.paged_attention(*batch, scale, 90, window=24, sinks=sinks), windowed) < 1e-2
    # decodes first, then the rest: the backend's split of a mixed batch
    mixed = make_batch([(70, 1), (200, 1), (17, 17), (130, 40)], num_heads, num_kv_heads, head_dim, 16,
                       torch.float16, seed=9)
    query, k_cache, v_cache, qsl, seq_lens, tables = mixed
    ws = tri.DecodeWorkspace.allocate(8, num_heads, num_kv_heads, head_dim, device=DEVICE)
    out = tri.paged_attention(*mixed, scale, 40, workspace=ws, num_decodes=2,
                              prefill_query_start_loc=(qsl[2:] - qsl[2]).contiguous(), sinks=sinks)
    assert rel_err(out, reference(*mixed, scale, sinks=sinks)) < 1e-2
    decodes = make_batch([(s, 1) for s in (1, 20, 70, 200, 333)], num_heads, num_kv_heads, head_dim, 16,
                         torch.float16, seed=10)
    query, k_cache, v_cache, qsl, seq_lens, tables = decodes
    for window in (0, 24):
        expected = reference(*decodes, scale, window=window, sinks=sinks)
        for cfg in (None, (16, 16, 16, 4, 2), (64, 64, 1, 4, 2)):     # default plan, several splits, one
            out = tri.decode_attention(query, k_cache, v_cache, seq_lens, tables, scale, ws if cfg is None else None,
                                       _config=cfg, window=window, sinks=sinks)
            assert rel_err(out, expected) < 1e-2, (window, cfg)
    t = _rope_step([1, 64, 65, 129, 17], num_heads, num_kv_heads, head_dim, head_dim, None, 13)
    unfused = tri.decode_attention(t.q1, t.kc1, t.vc1, t.seq_lens, t.tables, scale, t.ws, sinks=sinks)
    assert rel_err(unfused, tri.decode_attention(t.q1, t.kc1, t.vc1, t.seq_lens, t.tables, scale, t.ws)) > 0.05
    _assert_fused_rope_decode_gives(unfused, t, scale, sinks=sinks)
