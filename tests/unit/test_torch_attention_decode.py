"""The torch backend's padded decode batch (kernels/torch_attention.py): requests of different lengths attended in
one SDPA call over keys padded to the longest, the padding masked. What a user would see if it were wrong: a
request's tokens change with the other requests in its batch. Each request's output equals the same request
attended alone (no padding, no mask) to fp32 rounding (SDPA's blocked softmax sums a padded row in another order);
the additive mask, built by the step's first layer and reused by the next (``step_cache``), gives bitwise the same
result on every layer of a step, and the result of SDPA with the boolean mask it replaced to fp32 rounding (bitwise
on some CPUs, not on all: SDPA's CPU kernels pick their blocking by ISA and thread count, so CI asserts a tolerance)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedllm.kernels import torch_attention

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 6, 2, 16, 4


def _paged_batch(lens: list[int], q_lens: list[int], seed: int = 0):
    """A random cache holding each request's ``lens[i]`` keys/values in shuffled blocks, and its queries."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_req = [-(-n // BLOCK) for n in lens]
    num_blocks = sum(blocks_per_req) + 3
    k_cache = torch.randn(num_blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=g)
    v_cache = torch.randn(num_blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=g)
    order = torch.randperm(num_blocks, generator=g)
    tables = torch.zeros(len(lens), max(blocks_per_req), dtype=torch.int32)
    first = 0
    for i, nb in enumerate(blocks_per_req):
        tables[i, :nb] = order[first:first + nb]
        first += nb
    query = torch.randn(sum(q_lens), HEADS, HEAD_DIM, generator=g)
    starts = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32)
    return query, k_cache, v_cache, starts, torch.tensor(lens, dtype=torch.int32), tables


def _alone(query, k_cache, v_cache, starts, seq_lens, tables, i: int) -> torch.Tensor:
    s, e = int(starts[i]), int(starts[i + 1])
    return torch_attention.paged_attention(query[s:e], k_cache, v_cache, torch.tensor([0, e - s], dtype=torch.int32),
                                           seq_lens[i:i + 1], tables[i:i + 1], 0.25)


@torch.inference_mode()     # as the model runs it (the kernel's CPU scratch buffers are inference tensors)
def test_padded_decode_batch_equals_each_request_alone():
    lens = [1, 7, 16, 9, 33]
    batch = _paged_batch(lens, [1] * len(lens))
    together = torch_attention.paged_attention(*batch, 0.25)
    for i in range(len(lens)):
        torch.testing.assert_close(together[i:i + 1], _alone(*batch, i), rtol=0, atol=1e-6,
                                   msg=f"request {i} (length {lens[i]})")


def _boolean_mask_reference(query, k_cache, v_cache, starts, seq_lens, tables, scale: float) -> torch.Tensor:
    """The padded decode as it was before the additive mask: gather, boolean mask, SDPA."""
    lens = seq_lens.tolist()
    max_len = max(lens)
    keys = k_cache[tables.long()].flatten(1, 2)[:, :max_len].transpose(1, 2)
    values = v_cache[tables.long()].flatten(1, 2)[:, :max_len].transpose(1, 2)
    q = query.view(len(lens), KV_HEADS, HEADS // KV_HEADS, HEAD_DIM)
    mask = (torch.arange(max_len)[None, :] < seq_lens[:, None])[:, None, None, :]
    o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
    return o.reshape(len(lens), HEADS, HEAD_DIM)


@torch.inference_mode()
def test_step_cache_reuses_the_decode_mask_with_the_same_result():
    lens = [5, 12, 3, 12]
    batch = _paged_batch(lens, [1] * len(lens), seed=1)
    step_cache: dict = {}
    first = torch_attention.paged_attention(*batch, 0.25, step_cache=step_cache)
    mask = step_cache["decode_mask"]
    assert mask.shape == (4, 1, 1, 12)
    # Keys past each request's length are masked with -inf, the others get 0 (added to the scores).
    assert torch.equal(torch.isinf(mask).flatten(1).sum(1), torch.tensor([7, 0, 9, 0]))
    second = torch_attention.paged_attention(*batch, 0.25, step_cache=step_cache)   # the next layer: reused
    assert step_cache["decode_mask"] is mask
    assert torch.equal(first, second)
    assert torch.equal(first, torch_attention.paged_attention(*batch, 0.25))
    torch.testing.assert_close(first, _boolean_mask_reference(*batch, 0.25), rtol=0, atol=1e-6)


@torch.inference_mode()
def test_decodes_mixed_with_a_prompt_equal_each_request_alone():
    lens, q_lens = [9, 20, 6], [1, 1, 6]     # two decodes, then a 6-token prompt
    batch = _paged_batch(lens, q_lens, seed=2)
    step_cache: dict = {}
    for _ in range(2):      # two layers of one step
        together = torch_attention.paged_attention(*batch, 0.25, step_cache=step_cache)
        starts = batch[3].tolist()
        for i in range(len(lens)):
            torch.testing.assert_close(together[starts[i]:starts[i + 1]], _alone(*batch, i), rtol=0, atol=1e-6,
                                       msg=f"request {i}")


@torch.inference_mode()
def test_layers_of_one_step_each_attend_over_their_own_cache():
    """The first layer of a step plans the decode gather (block ids, scratch rows, views) for the others: every
    later layer must still read its own cache. Two layers (two caches) of a step with two decodes and a prompt whose
    longer gather grows the scratch between the layers' decodes; each layer equals its cache attended without any
    step cache, and the plan was made once."""
    lens, q_lens = [9, 20, 60], [1, 1, 60]       # decodes: 2 x 5 blocks; the prompt: 15 blocks
    layer0 = _paged_batch(lens, q_lens, seed=5)
    layer1 = _paged_batch(lens, q_lens, seed=6)
    layer1 = (layer1[0], layer1[1], layer1[2], *layer0[3:])            # another cache, the step's same metadata
    step_cache: dict = {}
    for batch in (layer0, layer1, layer0):
        together = torch_attention.paged_attention(*batch, 0.25, step_cache=step_cache)
        assert torch.equal(together, torch_attention.paged_attention(*batch, 0.25))
    assert sum(1 for key in step_cache if isinstance(key, tuple) and key[0] == "decode_gather") == 1
    assert not torch.equal(torch_attention.paged_attention(*layer0, 0.25), torch_attention.paged_attention(*layer1, 0.25))


@torch.inference_mode()
def test_small_decode_runs_on_one_thread_and_restores_the_thread_count(monkeypatch):
    batch = _paged_batch([5, 12, 3, 12], [1] * 4, seed=3)
    threads = torch.get_num_threads()
    seen = []
    real_sdpa = F.scaled_dot_product_attention

    def spying_sdpa(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spying_sdpa)
    try:
        torch.set_num_threads(2)
        two = torch_attention.paged_attention(*batch, 0.25)
        assert seen == [1] and torch.get_num_threads() == 2
        torch.set_num_threads(1)
        assert torch.equal(two, torch_attention.paged_attention(*batch, 0.25))   # one thread or two: same result
    finally:
        torch.set_num_threads(threads)


@torch.inference_mode()
def test_bf16_padded_decode_of_many_requests_is_two_matmuls_and_a_softmax_close_to_sdpa(monkeypatch):
    """A bf16 padded decode of many requests on the CPU goes through baddbmm / softmax / bmm instead of SDPA (faster
    there): its output is SDPA's on the same bf16 inputs to bf16 rounding, each request's output does not depend on
    the others in its batch beyond that rounding; fewer requests, and fp32, still take SDPA."""
    lens = [1, 7, 16, 9, 33, 70, 2, 40]        # 8 requests x 70 keys: over both thresholds
    assert len(lens) >= torch_attention.BMM_MIN_REQUESTS and len(lens) * max(lens) >= torch_attention.BMM_MIN_KEYS
    batch32 = _paged_batch(lens, [1] * len(lens), seed=4)
    batch = tuple(t.to(torch.bfloat16) if t.is_floating_point() else t for t in batch32)
    routes = []
    real_bmm, real_sdpa = torch_attention._decode_bmm, F.scaled_dot_product_attention
    monkeypatch.setattr(torch_attention, "_decode_bmm", lambda *a: routes.append("bmm") or real_bmm(*a))
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: routes.append("sdpa") or real_sdpa(*a, **k))
    step_cache: dict = {}
    together = torch_attention.paged_attention(*batch, 0.25, step_cache=step_cache)
    again = torch_attention.paged_attention(*batch, 0.25, step_cache=step_cache)     # the next layer: mask reused
    assert routes == ["bmm", "bmm"] and torch.equal(together, again)
    assert step_cache["decode_mask_bmm"].shape == (len(lens) * KV_HEADS, HEADS // KV_HEADS, max(lens))
    fp32 = torch_attention.paged_attention(*batch32, 0.25)
    monkeypatch.setattr(torch_attention, "BMM_MIN_REQUESTS", len(lens) + 1)
    sdpa = torch_attention.paged_attention(*batch, 0.25)
    assert routes == ["bmm", "bmm", "sdpa", "sdpa"]
    # |values| < 2.7, where bf16's spacing is up to 1/64; the two round the scores differently (bf16 here, fp32
    # inside SDPA). Measured on the AVX512-BF16 EPYC: 0.008 from SDPA, 0.011 from fp32, 0.008 from each request alone
    # (one request: SDPA, so another rounding).
    torch.testing.assert_close(together.float(), sdpa.float(), rtol=0, atol=3e-2)
    torch.testing.assert_close(together.float(), fp32, rtol=0, atol=3e-2)
    for i in range(len(lens)):
        torch.testing.assert_close(together[i:i + 1].float(), _alone(*batch, i).float(), rtol=0, atol=2e-2,
                                   msg=f"request {i} (length {lens[i]})")


def test_gather_scratch_is_per_thread():
    """Two engines of one process attending on two threads: a gather on one thread leaves the keys another thread
    gathered (into its CPU scratch) unchanged. One shared scratch buffer let the second overwrite the first."""
    import threading
    _, k_cache, _, _, _, tables = _paged_batch([9, 5], [1, 1])
    with torch.inference_mode():      # as the engine runs (the scratch may come from an earlier inference-mode gather)
        mine = torch_attention._gather_blocks(k_cache, tables)
    expected = k_cache[tables.long()].clone()
    other_cache = torch.randn_like(k_cache)
    seen = {}

    def other_engine():
        with torch.inference_mode():
            seen["out"] = torch_attention._gather_blocks(other_cache, tables)
    worker = threading.Thread(target=other_engine)
    worker.start()
    worker.join()
    assert torch.equal(seen["out"], other_cache[tables.long()])
    assert torch.equal(mine, expected)
