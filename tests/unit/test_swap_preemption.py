"""Preemption by swap (swap_space, preemption_mode): with a KV pool too small for every request, swapping preempted
requests' KV to CPU blocks and back, or recomputing it, gives the greedy tokens of a run that never preempts; the
preemptions really happen, and every device and CPU block is back in its pool at the end."""
from __future__ import annotations

import re

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.engine.kv_cache import KVCacheManager
from pagedllm.engine.request import Request
from tiny_models import save_tiny_llama

VOCAB = 128
# Eight prompts of 40..75 tokens; each request grows to prompt + 40 tokens (up to 8 blocks of 16).
PROMPTS = [{"prompt_token_ids": [(7 * i + 3 * j) % (VOCAB - 3) + 3 for j in range(40 + 5 * i)]} for i in range(8)]
GREEDY = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
SMALL = dict(num_gpu_blocks_override=16, max_num_seqs=8, max_num_batched_tokens=64)   # 2 full requests' worth


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama_swap")
    save_tiny_llama(path, VOCAB, seed=5)
    return str(path)


def llm(tiny_dir, **kwargs) -> LLM:
    return LLM(tiny_dir, skip_tokenizer_init=True, dtype="float32", max_model_len=128, block_size=16, seed=0,
               **kwargs)


def tokens(engine: LLM) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in engine.generate(PROMPTS, GREEDY, use_tqdm=False)]


@pytest.fixture(scope="module")
def expected(tiny_dir):
    return tokens(llm(tiny_dir, num_gpu_blocks_override=8 * 8 + 1, max_num_seqs=8))   # room for all: no preemption


def assert_pools_whole(engine: LLM) -> None:
    kv = engine.llm_engine.kv_cache
    assert kv.pool.num_free_blocks == kv.pool.num_blocks
    assert kv.req_blocks == {} and kv.req_swapped == {}
    if kv.swap_pool is not None:
        assert kv.swap_pool.num_free_blocks == kv.swap_pool.num_blocks
    scheduler = engine.llm_engine.scheduler
    assert not scheduler.has_unfinished() and scheduler.swapped == []


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_swap_preemption_gives_the_unpreempted_tokens(tiny_dir, expected, async_scheduling):
    engine = llm(tiny_dir, swap_space=0.001, preemption_mode="swap", async_scheduling=async_scheduling, **SMALL)
    assert engine.llm_engine.kv_cache.swap_pool.num_blocks == int(0.001 * (1 << 30)) // (2 * 2 * 16 * 2 * 16 * 4)
    assert tokens(engine) == expected
    scheduler = engine.llm_engine.scheduler
    assert scheduler.num_swap_outs > 0 and scheduler.num_swap_ins == scheduler.num_swap_outs
    assert scheduler.num_preemptions == scheduler.num_swap_outs      # every preemption swapped
    # Swap-in takes a block whose hash is still on the device without a copy: never more copies in than out.
    assert 0 < scheduler.num_blocks_swapped_in <= scheduler.num_blocks_swapped_out
    # The same counters reach the engine snapshot and /metrics (the server's EngineMetrics).
    snapshot = engine.llm_engine.core.snapshot()
    assert (snapshot.blocks_swapped_out, snapshot.blocks_swapped_in) == (scheduler.num_blocks_swapped_out,
                                                                       scheduler.num_blocks_swapped_in)
    assert snapshot.num_swapped == 0 and snapshot.swap_free_blocks == snapshot.swap_num_blocks > 0
    if not async_scheduling:
        from pagedllm.engine.messages import EngineSnapshot
        from pagedllm.engine.scheduler import StepStats
        from pagedllm.metrics import EngineMetrics
        metrics = EngineMetrics("tiny", log_stats=False)
        metrics.attach(lambda: EngineSnapshot())
        metrics.on_step(StepStats(), [], snapshot, 0.0)
        text = metrics.render().decode()
        assert f'swapped_out_blocks_total{{model_name="tiny"}} {float(snapshot.blocks_swapped_out)}' in text
        assert f'cpu_swap_free_blocks{{model_name="tiny"}} 0.0' in text      # the attached (empty) snapshot
    assert_pools_whole(engine)


def test_recompute_preemption_gives_the_unpreempted_tokens(tiny_dir, expected):
    engine = llm(tiny_dir, swap_space=0.001, preemption_mode="recompute", **SMALL)
    assert tokens(engine) == expected
    scheduler = engine.llm_engine.scheduler
    assert scheduler.num_preemptions > 0 and scheduler.num_swap_outs == 0
    assert_pools_whole(engine)


def test_by_cost_swaps_long_requests_and_falls_back_without_room(tiny_dir, expected):
    engine = llm(tiny_dir, swap_space=0.001, **SMALL)        # default: by cost
    assert tokens(engine) == expected
    scheduler = engine.llm_engine.scheduler
    assert scheduler.num_swap_outs > 0
    assert_pools_whole(engine)
    # Swap space for 3 blocks only: a victim holding more does not fit and recomputes instead.
    tight = llm(tiny_dir, swap_space=3 * 8192 / (1 << 30), preemption_mode="swap", **SMALL)
    assert tight.llm_engine.kv_cache.swap_pool.num_blocks == 3
    assert tokens(tight) == expected
    assert tight.llm_engine.scheduler.num_preemptions > tight.llm_engine.scheduler.num_swap_outs
    assert_pools_whole(tight)


def test_swap_mode_without_swap_space_is_rejected(tiny_dir):
    with pytest.raises(ValueError, match=r"preemption_mode='swap' needs swap space: set swap_space"):
        llm(tiny_dir, preemption_mode="swap")


# ---- the block manager alone: exact block ids ------------------------------------------------------------------
def request(rid: str, n: int) -> Request:
    return Request(rid, list(range(1, n + 1)), SamplingParams(max_tokens=8), frozenset(), 0.0)


def test_swap_out_and_in_block_ids_and_prefix_hits():
    kv = KVCacheManager(num_blocks=6, block_size=4, num_swap_blocks=4)
    r = request("a", 10)
    assert kv.allocate_slots(r, 10) == [0, 1, 2]             # blocks 0, 1 full (hashed), 2 partial
    r.num_computed_tokens = 10
    copies = kv.swap_out(r)
    assert copies == [(0, 0), (1, 1), (2, 2)]
    assert kv.pool.num_free_blocks == 6 and kv.swap_pool.num_free_blocks == 1
    assert list(kv.pool.free_queue)[-3:] == [2, 1, 0]        # freed tail-first, hashes kept
    other = request("b", 4)
    assert kv.allocate_slots(other, 4) == [3]
    # Blocks 0 and 1 still carry the request's hashes: taken back as hits, only the partial block is copied.
    assert kv.swap_in(r, 1) == [(2, 4)]
    assert r.block_ids == [0, 1, 4] and r.num_cached_blocks == 2
    # Its CPU blocks stay held until the step is described: no other copy of the step may overwrite them first.
    assert kv.swap_pool.num_free_blocks == 1
    assert kv.take_copies() == ([(0, 0), (1, 1), (2, 2)], [(2, 4)])      # the step's copies, device -> CPU first
    assert kv.swap_pool.num_free_blocks == 4
    kv.free(r)
    kv.free(other)
    assert kv.pool.num_free_blocks == 6


def test_swap_in_waits_for_room_and_abort_frees_swap_blocks():
    kv = KVCacheManager(num_blocks=3, block_size=4, enable_caching=False, num_swap_blocks=3)
    r = request("a", 12)
    kv.allocate_slots(r, 12)
    r.num_computed_tokens = 11
    assert kv.swap_out(r) == [(0, 0), (1, 1), (2, 2)]
    hog = request("b", 4)
    kv.allocate_slots(hog, 4)
    assert kv.swap_in(r, 1) is None                           # 3 copies, 2 free blocks: nothing changes
    assert kv.pool.num_free_blocks == 2 and kv.swap_pool.num_free_blocks == 0
    kv.free(r)                                                # aborted while swapped
    assert kv.swap_pool.num_free_blocks == 3 and kv.req_swapped == {}


# ---- kv_offloading_size: the prefix cache's CPU tier ------------------------------------------------------------
def test_cpu_tier_keeps_evicted_prefix_blocks_and_copies_them_back():
    kv = KVCacheManager(num_blocks=4, block_size=4, num_swap_blocks=4, offload_to_cpu=True)
    a = request("a", 9)                                       # blocks 0, 1 full (hashed), 2 partial
    kv.allocate_slots(a, 9)
    a.num_computed_tokens = 9
    kv.free(a)
    b = Request("b", list(range(50, 66)), SamplingParams(max_tokens=1))
    assert kv.allocate_slots(b, 16) == [3, 2, 1, 0]            # evicts a's cached blocks 1 and 0 (2 had no hash)
    stores, loads = kv.take_copies()
    assert len(stores) == 2 and [dev for dev, _ in stores] == [1, 0] and loads == []
    assert kv.num_blocks_offloaded == 2
    b.num_computed_tokens = 16
    kv.free(b)
    again = request("a2", 9)                                  # a's tokens: its two full blocks hit in the CPU tier
    hits, num_hit_tokens = kv.get_computed_blocks(again)
    assert num_hit_tokens == 8 and all(h.on_cpu for h in hits)
    assert [h.block_id for h in hits] == [cpu for _, cpu in reversed(stores)]     # a's block 0, then block 1
    new_blocks = kv.allocate_slots(again, 1, hits)
    assert len(new_blocks) == 1 and again.block_ids[2:] == new_blocks        # the loaded blocks, then the new one
    assert again.num_cached_blocks == 2 and kv.num_offload_hit_blocks == 2
    stores, loads = kv.take_copies()
    # Loading took three of b's device blocks (b's evicted full blocks go to the two CPU blocks not being read);
    # the copies back read the CPU blocks of a's hashes into the request's first two blocks.
    assert [cpu for cpu, _ in loads] == [h.block_id for h in hits]
    assert [dev for _, dev in loads] == again.block_ids[:2]
    assert {cpu for _, cpu in stores}.isdisjoint(cpu for cpu, _ in loads)
    assert kv.swap_pool.num_free_blocks == 4                  # the read blocks are released with the step
    # The loaded device blocks are cached under a's hashes: a third request hits them on the device.
    third = request("a3", 9)
    hits, _ = kv.get_computed_blocks(third)
    assert [h.block_id for h in hits] == again.block_ids[:2] and not any(h.on_cpu for h in hits)


def test_offloaded_prefix_gives_the_recomputed_tokens(tiny_dir):
    """A small device cache evicts a prompt's blocks; with kv_offloading_size the prompt's second run takes them
    back from the CPU tier (copies, no recompute) and its greedy tokens equal a run that recomputes them."""
    first = PROMPTS[0]["prompt_token_ids"] * 2                 # 80 tokens: 5 full blocks of 16
    others = [p["prompt_token_ids"] + [5] * 40 for p in PROMPTS[1:4]]
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)

    def run(engine):
        out = [engine.generate([{"prompt_token_ids": first}], sp, use_tqdm=False)[0].outputs[0].token_ids]
        for p in others:                                     # each fills most of the 12 blocks: first's go
            engine.generate([{"prompt_token_ids": p}], sp, use_tqdm=False)
        out.append(engine.generate([{"prompt_token_ids": first}], sp, use_tqdm=False)[0].outputs[0].token_ids)
        return [list(t) for t in out]
    small = dict(num_gpu_blocks_override=12, max_num_seqs=2, max_num_batched_tokens=128)
    plain = llm(tiny_dir, **small)
    want = run(plain)
    assert plain.llm_engine.kv_cache.pool.hit_tokens == 0        # evicted: the second run recomputed them
    assert want[0] == want[1]
    offloaded = llm(tiny_dir, kv_offloading_size=0.01, **small)
    assert run(offloaded) == want
    kv = offloaded.llm_engine.kv_cache
    assert kv.num_blocks_offloaded >= 5 and kv.num_offload_hit_blocks == 4     # 79 tokens can hit: 4 blocks
    assert kv.pool.hit_tokens == 64
    assert_pools_whole(offloaded)
    # The counters reach the engine snapshot and /metrics.
    from pagedllm.engine.messages import EngineSnapshot
    from pagedllm.engine.scheduler import StepStats
    from pagedllm.metrics import EngineMetrics
    snapshot = offloaded.llm_engine.core.snapshot()
    assert (snapshot.blocks_offloaded, snapshot.offload_hit_blocks) == (kv.num_blocks_offloaded, 4)
    metrics = EngineMetrics("tiny", log_stats=False)
    metrics.attach(lambda: EngineSnapshot())
    metrics.on_step(StepStats(), [], snapshot, 0.0)
    text = metrics.render().decode()
    assert 'kv_offload_hit_blocks_total{model_name="tiny"} 4.0' in text
    assert f'kv_offload_stored_blocks_total{{model_name="tiny"}} {float(kv.num_blocks_offloaded)}' in text
    assert offloaded.llm_engine.vllm_config.cache_config.num_cpu_blocks > 0


def test_kv_offloading_size_is_the_total_over_tensor_parallel_ranks(tiny_dir):
    """vLLM's kv_offloading_size is the CPU tier's size summed over the ranks (its CacheConfig): with TP=2 each rank
    keeps half of it, for its half of each block's KV heads, so the tier holds as many blocks as with one rank (it
    held twice as many, taking twice the CPU memory asked for)."""
    def cpu_blocks(tp: int) -> int:
        engine = llm(tiny_dir, kv_offloading_size=0.001, num_gpu_blocks_override=16, tensor_parallel_size=tp)
        try:
            return engine.llm_engine.vllm_config.cache_config.num_cpu_blocks
        finally:
            engine.llm_engine.core.shutdown()
    one = cpu_blocks(1)
    # K, V x 2 layers x 2 heads x 16 tokens x 16 fp32 values
    assert one == int(0.001 * (1 << 30)) // (2 * 2 * 2 * 16 * 16 * 4)
    assert cpu_blocks(2) == one


def test_reset_prefix_cache_leaves_the_cpu_tier_as_vllms_leaves_its_connector(tiny_dir):
    """vLLM's CPU-offloading check: run a prompt, run it again (device hits), reset_prefix_cache(), run it again:
    its blocks now come from the CPU tier (vLLM's reset leaves the offloading connector's cache; reset_connector /
    the dev route's reset_external clears it). The reset used to clear the tier too, so the third run recomputed
    the prompt. Without a tier, reset_connector=True warns and returns False, as vLLM's without a connector."""
    prompt = [{"prompt_token_ids": PROMPTS[0]["prompt_token_ids"] * 2}]     # 80 tokens: 4 full blocks can hit
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    engine = llm(tiny_dir, kv_offloading_size=0.01, num_gpu_blocks_override=16)
    kv = engine.llm_engine.kv_cache

    def run():
        (out,) = engine.generate(prompt, sp, use_tqdm=False)
        return list(out.outputs[0].token_ids), out.num_cached_tokens
    cold, cached = run()
    assert cached == 0 and run() == (cold, 64) and kv.num_offload_hit_blocks == 0
    assert engine.reset_prefix_cache() is True
    assert run() == (cold, 64) and kv.num_offload_hit_blocks == 4       # copied back from CPU memory
    assert engine.reset_prefix_cache(reset_connector=True) is True
    assert run() == (cold, 0)                                            # both tiers forgotten: computed again
    assert_pools_whole(engine)
    plain = llm(tiny_dir, num_gpu_blocks_override=16)
    assert plain.reset_prefix_cache() is True and plain.reset_prefix_cache(reset_connector=True) is False


def test_swap_space_beyond_the_hosts_memory_is_vllms_error(monkeypatch, caplog):
    """vLLM's check of the CPU memory the swap space takes (per rank): above 70% of the host's memory a ValueError
    at start-up, above 40% a warning. The CPU tier (which vLLM does not check) is an error only beyond the host's
    memory, a warning above 70%. Before: the allocator's RuntimeError ('can't allocate memory: you tried to allocate
    107374182400000 bytes') or, below the overcommit limit, a host out of memory."""
    import logging

    from pagedllm import config
    from pagedllm.config import EngineArgs, verify_engine_args
    monkeypatch.setattr(config, "total_cpu_memory", lambda: 10 * 2 ** 30)
    with pytest.raises(ValueError, match=re.escape("Too large swap space. 8.00 GiB out of the 10.00 GiB total CPU "
                                                   "memory is allocated for the swap space.")):
        verify_engine_args(EngineArgs(model="no/such-model", swap_space=4, tensor_parallel_size=2))
    with pytest.raises(ValueError, match=re.escape("Too large kv_offloading_size. 11.00 GiB out of the 10.00 GiB "
                                                   "total CPU memory is allocated for the prefix cache's CPU tier "
                                                   "(kv_offloading_size) and the swap space.")):
        verify_engine_args(EngineArgs(model="no/such-model", kv_offloading_size=8, swap_space=3))
    with caplog.at_level(logging.WARNING, logger="pagedllm.config"):
        verify_engine_args(EngineArgs(model="no/such-model", swap_space=5))
        verify_engine_args(EngineArgs(model="no/such-model", kv_offloading_size=7.5))
    assert "Possibly too large swap space. 5.00 GiB out of the 10.00 GiB total CPU memory is allocated for the swap " \
           "space." in caplog.text
    assert "Possibly too large kv_offloading_size. 7.50 GiB out of the 10.00 GiB total CPU memory" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pagedllm.config"):
        verify_engine_args(EngineArgs(model="no/such-model", swap_space=1, kv_offloading_size=5))    # fine
    assert "too large" not in caplog.text


OFFLOADING_CONNECTOR = {"kv_connector": "OffloadingConnector", "kv_role": "kv_both",
                        "kv_connector_extra_config": {"cpu_bytes_to_use": 2 ** 20}}


def test_kv_transfer_config_with_vllms_offloading_connector_is_the_cpu_tier(tiny_dir):
    """vLLM's kv_transfer_config for its native CPU offloading (what its kv_offloading_size becomes: the
    OffloadingConnector with cpu_bytes_to_use), offline and as --kv-transfer-config, builds the same CPU tier as
    kv_offloading_size (it was 'unexpected keyword argument' / 'unrecognized arguments')."""
    import json

    from pagedllm.config import EngineArgs, verify_engine_args
    from pagedllm.entrypoints.cli import make_parser
    engine = llm(tiny_dir, kv_transfer_config=OFFLOADING_CONNECTOR, num_gpu_blocks_override=16)
    assert engine.llm_engine.kv_cache.offload
    cache_config = engine.llm_engine.vllm_config.cache_config
    assert cache_config.num_cpu_blocks == 2 ** 20 // (2 * 2 * 2 * 16 * 16 * 4)
    assert (cache_config.kv_offloading_size, cache_config.kv_offloading_backend) == (2 ** 20 / 2 ** 30, "native")
    flags = make_parser().parse_args(["serve", tiny_dir, "--kv-transfer-config", json.dumps(OFFLOADING_CONNECTOR)])
    args = EngineArgs.from_cli_args(flags)
    verify_engine_args(args)
    assert args.kv_offloading_size == 2 ** 20 / 2 ** 30
    # Given both, kv_offloading_size sets the size, as vLLM's writes it into cpu_bytes_to_use.
    both = EngineArgs(model=tiny_dir, kv_transfer_config=json.dumps(OFFLOADING_CONNECTOR), kv_offloading_size=0.5)
    verify_engine_args(both)
    assert both.kv_offloading_size == 0.5


def _connector(**changes):
    extra = {**OFFLOADING_CONNECTOR["kv_connector_extra_config"], **changes.pop("extra", {})}
    return {**OFFLOADING_CONNECTOR, "kv_connector_extra_config": extra, **changes}


@pytest.mark.parametrize("config, match", [
    ({"kv_connector": "NixlConnector", "kv_role": "kv_both"}, "kv_connector='NixlConnector' is not supported by "
                                                              "pagedllm: only vLLM's native CPU offloading"),
    (_connector(kv_connector="LMCacheConnectorV1"), "LMCache and MultiConnector are not integrated"),
    (_connector(kv_role="kv_producer"), "kv_role must be 'kv_both' for OffloadingConnector"),
    (_connector(extra={"cpu_bytes_to_use": None, "num_cpu_blocks": 1000}), "num_cpu_blocks (vLLM 0.11-0.13's form)"),
    (_connector(extra={"cpu_bytes_to_use": 0}), "cpu_bytes_to_use must be a positive number of bytes"),
    (_connector(extra={"eviction_policy": "arc"}), "least recently used blocks only"),
    (_connector(extra={"spec_name": "X"}), "key(s) ['spec_name'] are not supported"),
    (_connector(kv_connector_module_path="my.mod"), "unknown or unsupported key(s) ['kv_connector_module_path']"),
    ('["OffloadingConnector"]', "kv_transfer_config must be a dict"),
])
def test_kv_transfer_config_errors_name_what_is_not_supported(config, match):
    from pagedllm.config import EngineArgs, verify_engine_args
    with pytest.raises(ValueError, match=re.escape(match)):
        verify_engine_args(EngineArgs(model="no/such-model", kv_transfer_config=config))


@pytest.mark.parametrize("kwargs, match", [
    (dict(kv_offloading_size=0), "kv_offloading_size must be a positive number of GiB"),
    (dict(kv_offloading_size=1, enable_prefix_caching=False), "needs enable_prefix_caching"),
    (dict(kv_offloading_size=1, kv_offloading_backend="lmcache"), "LMCache is not integrated"),
])
def test_kv_offloading_arguments_are_checked(tiny_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        llm(tiny_dir, **kwargs)
