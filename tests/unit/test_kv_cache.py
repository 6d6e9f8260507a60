"""KV cache manager: exact block ids, ref counts, hashes and eviction order (no model needed)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pagedllm.engine.kv_cache import NONE_HASH, KVCacheManager, hash_block_tokens
from pagedllm.engine.request import Request, RequestStatus
from pagedllm.engine.scheduler import Scheduler
from pagedllm.step_data import ModelRunnerOutput
from pagedllm.sampling_params import SamplingParams

BS = 4


def make_request(rid: str, tokens: list[int], **sp) -> Request:
    return Request(rid, tokens, SamplingParams(temperature=0.0, **sp), eos_token_ids={0})


def schedule_prompt(kv: KVCacheManager, req: Request) -> list[int]:
    """What the scheduler does for a new request: prefix lookup, then allocate the rest."""
    hits, num_hit = kv.get_computed_blocks(req)
    new = kv.allocate_slots(req, req.num_tokens - num_hit, hits)
    assert new is not None
    req.num_computed_tokens = req.num_tokens
    return new


def ids(blocks):
    return [b.block_id for b in blocks]


def test_allocate_in_order_and_hash_full_blocks():
    kv = KVCacheManager(num_blocks=10, block_size=BS)
    req = make_request("a", list(range(1, 11)))   # 10 tokens: 2 full blocks + 2 tokens
    new = schedule_prompt(kv, req)
    assert new == [0, 1, 2]
    assert req.block_ids == [0, 1, 2]
    blocks = kv.pool.blocks
    assert [blocks[i].ref_cnt for i in range(4)] == [1, 1, 1, 0]
    h0 = hash_block_tokens(NONE_HASH, [1, 2, 3, 4])
    h1 = hash_block_tokens(h0, [5, 6, 7, 8])
    assert req.block_hashes == [h0, h1]
    assert blocks[0].block_hash == h0 and blocks[1].block_hash == h1
    assert blocks[2].block_hash is None            # partial block: not shareable yet
    assert kv.num_free_blocks == 7


def test_prefix_hit_shares_blocks_and_last_token_is_recomputed():
    kv = KVCacheManager(num_blocks=10, block_size=BS)
    a = make_request("a", list(range(1, 13)))      # exactly 3 full blocks
    schedule_prompt(kv, a)
    b = make_request("b", list(range(1, 13)))      # same prompt
    hits, num_hit = kv.get_computed_blocks(b)
    # 12 tokens all cached, but the last one must be recomputed for its logits: only 2 blocks may hit.
    assert ids(hits) == [0, 1] and num_hit == 8
    new = kv.allocate_slots(b, 4, hits)
    assert new == [3]
    assert b.block_ids == [0, 1, 3]
    assert [kv.pool.blocks[i].ref_cnt for i in range(4)] == [2, 2, 1, 1]

    c = make_request("c", list(range(1, 9)) + [99, 98, 97])   # shares 2 blocks, diverges in the 3rd
    hits, num_hit = kv.get_computed_blocks(c)
    assert ids(hits) == [0, 1] and num_hit == 8


def test_free_tail_first_and_lru_eviction_order():
    kv = KVCacheManager(num_blocks=6, block_size=BS)
    a = make_request("a", list(range(1, 13)))       # blocks 0,1,2 (all full, hashed)
    schedule_prompt(kv, a)
    kv.free(a)
    # freed tail first: 2 then 1 then 0 are appended after the never-used 3,4,5
    assert list(kv.pool.free_queue) == [3, 4, 5, 2, 1, 0]
    assert all(kv.pool.blocks[i].ref_cnt == 0 for i in range(3))
    # freed blocks keep their hashes: a new identical prompt hits them
    b = make_request("b", list(range(1, 13)))
    hits, num_hit = kv.get_computed_blocks(b)
    assert ids(hits) == [0, 1] and num_hit == 8
    kv.allocate_slots(b, 4, hits)
    assert b.block_ids == [0, 1, 3]                 # the hit blocks leave the free queue, 3 is the LRU one
    assert list(kv.pool.free_queue) == [4, 5, 2]
    kv.free(b)
    assert list(kv.pool.free_queue) == [4, 5, 2, 3, 1, 0]

    # A request needing 4 fresh blocks evicts in LRU order: 4, 5, then 2 (a's cached tail) and 3.
    c = make_request("c", list(range(100, 116)))
    hits, _ = kv.get_computed_blocks(c)
    assert hits == []
    kv.allocate_slots(c, 16)
    assert c.block_ids == [4, 5, 2, 3]
    assert kv.pool.blocks[2].block_hash == c.block_hashes[2]     # re-hashed with c's tokens
    # a's first two blocks are still cached
    d = make_request("d", list(range(1, 10)))
    hits, _ = kv.get_computed_blocks(d)
    assert ids(hits) == [0, 1]


def test_allocation_failure_changes_nothing():
    kv = KVCacheManager(num_blocks=3, block_size=BS)
    a = make_request("a", list(range(1, 9)))
    schedule_prompt(kv, a)
    b = make_request("b", list(range(50, 60)))      # needs 3 blocks, 1 free
    assert kv.allocate_slots(b, 10) is None
    assert kv.num_free_blocks == 1 and b.block_ids == []
    assert "b" not in kv.req_blocks


def test_decode_growth_allocates_one_block_at_boundary():
    kv = KVCacheManager(num_blocks=5, block_size=BS)
    a = make_request("a", [1, 2, 3])
    schedule_prompt(kv, a)
    assert a.block_ids == [0]
    a.append_token(4)                               # block 0 becomes full when token 4 is computed
    assert kv.allocate_slots(a, 1) == []
    a.num_computed_tokens += 1
    assert kv.pool.blocks[0].block_hash == hash_block_tokens(NONE_HASH, [1, 2, 3, 4])
    a.append_token(5)
    assert kv.allocate_slots(a, 1) == [1]
    assert a.block_ids == [0, 1]


def test_cache_salt_separates_prefixes():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    a = Request("a", list(range(1, 10)), SamplingParams(), cache_salt="user-1")
    schedule_prompt(kv, a)
    b = Request("b", list(range(1, 10)), SamplingParams(), cache_salt="user-2")
    assert kv.get_computed_blocks(b) == ([], 0)
    c = Request("c", list(range(1, 10)), SamplingParams(), cache_salt="user-1")
    assert ids(kv.get_computed_blocks(c)[0]) == [0, 1]


def test_prompt_logprobs_requests_get_no_hits():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    schedule_prompt(kv, make_request("a", list(range(1, 10))))
    b = make_request("b", list(range(1, 10)), prompt_logprobs=1)
    assert kv.get_computed_blocks(b) == ([], 0)


def test_disabled_caching_never_hits_or_hashes_blocks():
    kv = KVCacheManager(num_blocks=8, block_size=BS, enable_caching=False)
    a = make_request("a", list(range(1, 10)))
    schedule_prompt(kv, a)
    assert all(b.block_hash is None for b in kv.pool.blocks)
    assert kv.get_computed_blocks(make_request("b", list(range(1, 10)))) == ([], 0)


def test_reset_prefix_cache_only_when_idle():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    a = make_request("a", list(range(1, 10)))
    schedule_prompt(kv, a)
    assert kv.reset_prefix_cache() is False
    kv.free(a)
    assert kv.reset_prefix_cache() is True
    assert kv.get_computed_blocks(make_request("b", list(range(1, 10)))) == ([], 0)


# ---- block hashes: sha256 chain -----------------------------------------------------------------------------------

def test_block_hashes_are_32_byte_digests_chained_from_none_hash():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    req = make_request("a", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    kv.update_block_hashes(req)
    assert isinstance(NONE_HASH, bytes) and len(NONE_HASH) == 32
    assert [type(h) for h in req.block_hashes] == [bytes, bytes] and {len(h) for h in req.block_hashes} == {32}
    h0 = hash_block_tokens(NONE_HASH, [1, 2, 3, 4])
    assert req.block_hashes == [h0, hash_block_tokens(h0, [5, 6, 7, 8])]
    # The chain carries the prefix: the same block after another parent hashes differently.
    assert hash_block_tokens(NONE_HASH, [5, 6, 7, 8]) != req.block_hashes[1]


_HASHES_OF_A_SALTED_PROMPT = """
from pagedllm.engine.kv_cache import KVCacheManager
from pagedllm.engine.request import Request, RequestStatus
from pagedllm.sampling_params import SamplingParams
req = Request("a", list(range(100, 113)), SamplingParams(), cache_salt="tenant-7")
KVCacheManager(num_blocks=8, block_size=4).update_block_hashes(req)
print(",".join(h.hex() for h in req.block_hashes))
"""


def test_block_hashes_are_the_same_in_another_process():
    # Another process with another str-hash seed: the salt is a str, whose built-in hash() differs per process.
    env = dict(os.environ, PYTHONHASHSEED="4242", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run([sys.executable, "-c", _HASHES_OF_A_SALTED_PROMPT], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout.strip()
    req = Request("a", list(range(100, 113)), SamplingParams(), cache_salt="tenant-7")
    KVCacheManager(num_blocks=8, block_size=BS).update_block_hashes(req)
    assert len(req.block_hashes) == 3
    assert out == ",".join(h.hex() for h in req.block_hashes)


def test_cache_salt_changes_every_block_hash():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    chains = []
    for salt in (None, "user-1", "user-2"):
        req = Request(f"r-{salt}", list(range(1, 14)), SamplingParams(), cache_salt=salt)
        kv.update_block_hashes(req)
        assert len(req.block_hashes) == 3
        chains.append(req.block_hashes)
    # The salt is in block 0's extra keys only; chaining carries it to every later block.
    assert len({h for chain in chains for h in chain}) == 9


@pytest.mark.parametrize("a, b", [
    (([1, 23], ()), ([12, 3], ())),                      # token boundaries: fixed-width ids
    (([1, 2], ()), ([1, 2, 0], ())),                     # a trailing 0 token is a token, not padding
    (([1], (2,)), ([1, 2], ())),                         # an int key is not a token
    (([1], (1,)), ([1], ("1",))),                        # int vs str key
    (([1], ("1",)), ([1], (b"1",))),                     # str vs bytes key
    (([1], (1,)), ([1], (True,))),                       # bool vs int key
    (([1], (-1,)), ([1], (255,))),                       # signed ints: same low byte
    (([1], ("ab", "c")), ([1], ("a", "bc"))),            # key boundaries: length prefixes
    (([1], ("ab", "c")), ([1], (("ab", "c"),))),         # a tuple key is not its items
    (([1], ("",)), ([1], ())),                           # an empty salt is still a key
])
def test_block_hash_encoding_is_unambiguous(a, b):
    assert hash_block_tokens(NONE_HASH, *a) != hash_block_tokens(NONE_HASH, *b)
    assert hash_block_tokens(NONE_HASH, *a) == hash_block_tokens(NONE_HASH, *a)


def test_unsupported_extra_key_is_rejected():
    with pytest.raises(TypeError, match="float"):
        hash_block_tokens(NONE_HASH, [1], (1.5,))


# ---- scheduler ------------------------------------------------------------------------------------------------

def make_scheduler(num_blocks=16, max_tokens=64, max_seqs=8, chunked=True):
    kv = KVCacheManager(num_blocks, BS)
    return Scheduler(kv, max_num_seqs=max_seqs, max_num_batched_tokens=max_tokens, max_model_len=256,
                     enable_chunked_prefill=chunked), kv


def step(sched, sampled_token=7):
    out = sched.schedule()
    # The step as the workers see it: ids and token counts; every request that reaches its end samples a token.
    sampled = {rid: sampled_token for rid in out.num_scheduled_tokens if rid not in out.partial_req_ids}
    sched.update_from_output(out, ModelRunnerOutput(sampled=sampled))
    return list(out.num_scheduled_tokens.items()), out


def test_chunked_prefill_and_mixed_steps():
    sched, _ = make_scheduler(max_tokens=10)
    a = make_request("a", list(range(1, 5)))      # 4 tokens
    b = make_request("b", list(range(20, 40)))    # 20 tokens
    sched.add_request(a)
    sched.add_request(b)
    got, _ = step(sched)
    assert got == [("a", 4), ("b", 6)]            # b's prompt is chunked by the budget
    assert a.num_output_tokens == 1 and b.num_output_tokens == 0
    got, _ = step(sched)
    assert got == [("a", 1), ("b", 9)]            # a decodes while b keeps prefilling in the same step
    got, _ = step(sched)
    assert got == [("a", 1), ("b", 5)]
    assert b.num_output_tokens == 1 and b.num_computed_tokens == 20


def test_no_chunking_waits_for_budget():
    sched, _ = make_scheduler(max_tokens=10, chunked=False)
    sched.add_request(make_request("a", list(range(1, 5))))
    sched.add_request(make_request("b", list(range(20, 28))))
    got, _ = step(sched)
    assert got == [("a", 4)]                      # b (8 tokens) does not fit in the 6 left: waits whole
    got, _ = step(sched)
    assert got == [("a", 1), ("b", 8)]


def test_max_num_seqs_limits_running():
    sched, _ = make_scheduler(max_seqs=2)
    for i in range(3):
        sched.add_request(make_request(f"r{i}", [1, 2, 3]))
    got, _ = step(sched)
    assert [rid for rid, _ in got] == ["r0", "r1"]
    assert sched.num_running == 2 and sched.num_waiting == 1


def test_preemption_by_recompute_frees_blocks_of_latest_request():
    sched, kv = make_scheduler(num_blocks=4, max_tokens=64)
    a = make_request("a", list(range(1, 9)))      # 8 tokens -> 2 full blocks
    b = make_request("b", list(range(20, 28)))    # 8 tokens -> 2 full blocks
    sched.add_request(a)
    sched.add_request(b)
    step(sched)                                   # both prefilled, 9 tokens each now, 4 blocks used
    assert kv.num_free_blocks == 0
    got, out = step(sched)                        # each needs a 3rd block: b (latest) is preempted
    assert got == [("a", 1)]
    assert out.preempted_req_ids == {"b"}
    assert b.num_computed_tokens == 0 and b.block_ids == [] and b.num_preemptions == 1
    assert sched.num_waiting == 1 and b.output_token_ids == [7]   # its sampled token is kept
    # b's blocks were freed tail-first, so a's new block evicted b's 2nd block and b's 1st is still cached.
    assert a.block_ids[2] == 3 and kv.pool.blocks[2].block_hash == b.block_hashes[0]
    # When a finishes, b is recomputed: its first block hits the prefix cache, the other 5 tokens are recomputed.
    sched.finish_request(a, a.status.__class__.FINISHED_STOPPED)
    got, _ = step(sched)
    assert got == [("b", 5)]
    assert b.block_ids[0] == 2
    # Prefix-cache counters: the two first admissions (8 tokens each, no hits); b's resumed lookup (8 prompt + 1
    # output tokens, 4 hit) is counted apart, as vLLM's preempted_* stats.
    assert (kv.pool.query_tokens, kv.pool.hit_tokens) == (16, 0)
    assert (kv.pool.preempted_query_tokens, kv.pool.preempted_hit_tokens) == (9, 4)


def test_priority_orders_waiting_and_chooses_victim():
    sched, _ = make_scheduler(num_blocks=4, max_seqs=1)
    low = Request("low", [1, 2, 3], SamplingParams(), priority=5, arrival_time=1.0)
    high = Request("high", [4, 5, 6], SamplingParams(), priority=0, arrival_time=2.0)
    sched.add_request(low)
    sched.add_request(high)
    got, _ = step(sched)
    assert got == [("high", 3)]                   # lower value = higher priority, despite arriving later


@pytest.mark.parametrize("status_name", ["FINISHED_ABORTED", "FINISHED_STOPPED"])
def test_finish_waiting_request_frees_everything(status_name):
    sched, kv = make_scheduler(max_seqs=1)
    a, b = make_request("a", [1, 2, 3]), make_request("b", [4, 5])
    sched.add_request(a)
    sched.add_request(b)
    step(sched)
    status = type(a.status)[status_name]
    sched.finish_request(b, status)               # still waiting
    sched.finish_request(a, status)               # running
    assert not sched.has_unfinished() and kv.num_free_blocks == 16


def test_prefix_cache_counters_count_a_waiting_request_once_on_admission():
    sched, kv = make_scheduler(num_blocks=4)
    a = make_request("a", list(range(1, 13)))                  # 12 tokens: 3 of the 4 blocks
    sched.add_request(a)
    assert step(sched)[0] == [("a", 12)]
    assert (kv.pool.query_tokens, kv.pool.hit_tokens) == (12, 0)
    b = make_request("b", [1, 2, 3, 4] + list(range(50, 58)))  # shares a's first block; needs 2 more, 1 is free
    sched.add_request(b)
    for _ in range(3):                                         # b is looked up each step but does not fit
        assert step(sched)[0] == [("a", 1)]
        assert sched.num_waiting == 1 and b.block_ids == []
        assert (kv.pool.query_tokens, kv.pool.hit_tokens) == (12, 0)
    sched.finish_request(a, a.status.__class__.FINISHED_STOPPED)
    assert step(sched)[0] == [("b", 8)]                        # admitted: block 0 hit, 8 tokens computed
    assert b.block_ids[0] == 0 and b.num_cached_tokens == 4
    assert (kv.pool.query_tokens, kv.pool.hit_tokens) == (24, 4)
    step(sched)                                                # decoding adds no lookups
    assert (kv.pool.query_tokens, kv.pool.hit_tokens) == (24, 4)
    assert (kv.pool.preempted_query_tokens, kv.pool.preempted_hit_tokens) == (0, 0)


def test_preemption_is_logged_as_a_warning_first_then_every_50th(monkeypatch):
    import logging
    import pagedllm.engine.scheduler as scheduler_module
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("pagedllm.engine.scheduler")
    log.addHandler(handler)
    monkeypatch.setattr(scheduler_module, "PREEMPTION_LOG_EVERY", 2)
    try:
        sched, kv = make_scheduler(num_blocks=4, max_tokens=64)
        reqs = [make_request("a", list(range(1, 9))), make_request("b\nINFO forged line", list(range(20, 28)))]
        for r in reqs:
            sched.add_request(r)
        step(sched)
        step(sched)                                # b preempted: the 1st preemption, logged
        assert sched.num_preemptions == 1
        warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "total_num_cumulative_preemption=1" in warnings[0]
        assert "\n" not in warnings[0] and "b\\nINFO forged line" in warnings[0]
    finally:
        log.removeHandler(handler)


def test_long_prefill_token_threshold_caps_each_prompt_chunk():
    """A long prompt takes at most long_prefill_token_threshold tokens a step, so a short request arriving behind it
    is prefilled and decodes in the first steps instead of waiting for the whole long prompt."""
    kv = KVCacheManager(32, BS)
    sched = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256, long_prefill_token_threshold=8)
    sched.add_request(make_request("long", list(range(1, 21))))     # 20 tokens
    sched.add_request(make_request("short", [30, 31, 32]))
    got, _ = step(sched)
    assert got == [("long", 8), ("short", 3)]                        # without the cap: long 20 alone fits the budget
    got, _ = step(sched)
    assert got == [("long", 8), ("short", 1)]
    got, _ = step(sched)
    assert got == [("long", 4), ("short", 1)]


def test_max_num_seqs_per_request_admits_an_n_request_a_few_sequences_at_a_time():
    """The n sequences of one request hold at most max_num_seqs_per_request seats; a short request arriving behind a
    huge n is scheduled in the very next step, and a finished sequence's seat goes to its next sibling."""
    kv = KVCacheManager(64, BS)
    sched = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256, max_num_seqs_per_request=2)
    for i in range(6):                                             # n=6: six sequences of one request
        child = make_request(f"{i}_big", [1, 2, 3], max_tokens=2)
        child.parent_request_id = "big"
        sched.add_request(child)
    assert sched.num_waiting == 6
    got, _ = step(sched)
    assert got == [("0_big", 3), ("1_big", 3)]                      # two seats; the other four are held back
    sched.add_request(make_request("short", [9, 9], max_tokens=2))
    got, _ = step(sched)                                            # 0_big and 1_big sample their 2nd token: done
    assert got == [("0_big", 1), ("1_big", 1), ("short", 2)]
    got, _ = step(sched)                                            # their seats went to the next two siblings
    assert got == [("short", 1), ("2_big", 3), ("3_big", 3)]
    assert sched.num_running == 2 and sched.num_waiting == 2
    # Aborting the request frees its held sequences too (they hold no blocks, no seats).
    done = sched.finish_requests([f"{i}_big" for i in range(6)], RequestStatus.FINISHED_ABORTED)
    assert sorted(r.request_id for r in done) == ["2_big", "3_big", "4_big", "5_big"]
    assert not sched.has_unfinished() and sched.num_waiting == 0
    assert kv.num_free_blocks == 64


def test_max_num_seqs_per_request_zero_means_no_cap():
    kv = KVCacheManager(64, BS)
    sched = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256)
    for i in range(4):
        child = make_request(f"{i}_big", [1, 2, 3], max_tokens=2)
        child.parent_request_id = "big"
        sched.add_request(child)
    got, _ = step(sched)
    assert [rid for rid, _ in got] == ["0_big", "1_big", "2_big", "3_big"]


def test_short_request_is_not_starved_by_a_long_prompt_and_a_huge_n():
    """The served CPU defaults (a 64-token prompt-chunk cap, 256 // 16 = 16 sequences per request): while an
    8000-token prompt is prefilled and an n=256 request decodes, every step stays small (at most 64 prompt tokens of
    the long prompt + 16 decodes + the short request), and a 2-token request is scheduled in the step after it
    arrives and finishes two steps later."""
    kv = KVCacheManager(4096, 16)
    sched = Scheduler(kv, max_num_seqs=256, max_num_batched_tokens=2048, max_model_len=8192,
                      long_prefill_token_threshold=64, max_num_seqs_per_request=16)
    sched.add_request(make_request("long", list(range(1, 8001)), max_tokens=64))
    for i in range(256):
        child = make_request(f"{i}_big", [5, 6, 7, 8], max_tokens=1000, ignore_eos=True)
        child.parent_request_id = "big"
        sched.add_request(child)
    for _ in range(5):
        got, _ = step(sched)
        assert dict(got)["long"] == 64 and len(got) == 17 and sum(n for _, n in got) <= 64 + 16 * 4
    sched.add_request(make_request("short", [9, 10, 11], max_tokens=2))
    got, _ = step(sched)
    assert dict(got)["short"] == 3 and sum(n for _, n in got) == 64 + 16 + 3
    got, _ = step(sched)
    assert dict(got)["short"] == 1
    assert "short" not in sched.requests                  # finished: 2 tokens, two steps after it arrived
    assert sched.num_running == 17 and sched.num_waiting == 240
