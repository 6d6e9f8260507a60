"""Async scheduling (step N+1 scheduled and launched before the host sees step N's tokens) must give exactly the
outputs of the synchronous engine: same tokens, text, finish reasons, with stops, preemption, chunked prefill,
seeded sampling and the synchronous fallback for logprobs/penalties. It is the CUDA default; on the CPU it is forced
here (the logic is the same, only nothing overlaps)."""
from __future__ import annotations

import pytest

from pagedllm import LLM, SamplingParams
from tiny_models import save_tiny_llama

PROMPTS = ["The capital of France is", "Hello, my name is", "Once upon a time, in a small village far away,",
           "def fibonacci(n):", "1, 2, 3, 4,", "Water boils at"]


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama_async")
    save_tiny_llama(path, len(tokenizer), seed=3, bos_token_id=1, eos_token_id=2)
    tokenizer.save_pretrained(path)
    return str(path)


def engines(model_dir, **kwargs):
    common = dict(dtype="float32", seed=0, **{"max_model_len": 256, **kwargs})
    return LLM(model_dir, async_scheduling=False, **common), LLM(model_dir, async_scheduling=True, **common)


def summary(outputs):
    return [[(c.token_ids, c.text, c.finish_reason, c.stop_reason, c.cumulative_logprob) for c in o.outputs]
            for o in outputs]


def assert_engine_idle(llm):
    engine = llm.llm_engine
    assert not engine.has_unfinished_requests()
    assert not engine.scheduler.has_unfinished()
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.pool.num_blocks
    assert all(r.num_placeholders == 0 for r in engine.scheduler.running + engine.scheduler.waiting)


def test_greedy_varied_lengths_and_stops(model_dir, tokenizer):
    sync, asyn = engines(model_dir)
    # Stop on a token the greedy continuation really produces, so some requests stop early (the async engine has
    # then already computed one more step for them, which must not show).
    probe = sync.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False)
    stop_id = probe[0].outputs[0].token_ids[5]
    stop_text = tokenizer.decode(probe[1].outputs[0].token_ids[3:5])
    params = [SamplingParams(temperature=0, max_tokens=3 + 5 * i, ignore_eos=True) for i in range(len(PROMPTS))]
    params[0] = SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[stop_id])
    params[1] = SamplingParams(temperature=0, max_tokens=20, stop=[stop_text])
    params[2] = SamplingParams(temperature=0, max_tokens=20, min_tokens=8, stop_token_ids=[stop_id])
    expected = summary(sync.generate(PROMPTS, params, use_tqdm=False))
    got = summary(asyn.generate(PROMPTS, params, use_tqdm=False))
    assert got == expected
    assert expected[0][0][2] == "stop" and expected[0][0][3] == stop_id
    assert expected[1][0][2] == "stop" and expected[1][0][3] == stop_text
    assert [len(o[0][0]) for o in expected[3:]] == [3 + 5 * i for i in range(3, len(PROMPTS))]
    assert_engine_idle(asyn)


def test_seeded_sampling_n_and_mixed_sync_fallback(model_dir):
    sync, asyn = engines(model_dir)
    params = [SamplingParams(temperature=0.9, top_p=0.9, top_k=20, seed=7, n=2, max_tokens=16),
              SamplingParams(temperature=1.0, min_p=0.05, seed=11, max_tokens=10),
              SamplingParams(temperature=0.0, max_tokens=14, logprobs=2),            # host needs logprobs
              SamplingParams(temperature=0.8, seed=5, repetition_penalty=1.3, max_tokens=12),  # needs history
              SamplingParams(temperature=0.0, max_tokens=9, frequency_penalty=0.5),
              SamplingParams(temperature=0.7, seed=1, max_tokens=18)]
    expected = summary(sync.generate(PROMPTS, params, use_tqdm=False))
    got = summary(asyn.generate(PROMPTS, params, use_tqdm=False))
    assert got == expected
    assert_engine_idle(asyn)


def test_chunked_prefill_prefix_cache_and_preemption(model_dir):
    # A KV cache of 12 blocks of 16 tokens and a 32-token budget: prompts are chunked, requests are preempted
    # and recomputed, and the shared prefix hits the cache.
    kwargs = dict(num_gpu_blocks_override=12, block_size=16, max_num_batched_tokens=32, max_num_seqs=6,
                  max_model_len=128)
    sync, asyn = engines(model_dir, **kwargs)
    shared = "In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole, "
    prompts = [shared + p for p in PROMPTS]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    expected = summary(sync.generate(prompts, params, use_tqdm=False))
    got_outputs = asyn.generate(prompts, params, use_tqdm=False)
    assert summary(got_outputs) == expected
    assert asyn.llm_engine.scheduler.num_preemptions > 0
    assert sum(o.num_cached_tokens for o in got_outputs) > 0
    assert_engine_idle(asyn)


def test_abort_while_in_flight(model_dir):
    _, asyn = engines(model_dir)
    engine = asyn.llm_engine
    sp = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    engine.add_request("a", "The capital of France is", sp)
    engine.add_request("b", "Hello, my name is", sp)
    engine.step()                       # prefill of both, in flight
    engine.step()                       # first tokens come back, second step in flight
    assert engine.core._in_flight is not None
    engine.abort_request("a")
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
    assert list(finished) == ["b"] and len(finished["b"].outputs[0].token_ids) == 30
    assert_engine_idle(asyn)
