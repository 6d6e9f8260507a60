"""vLLM's sleep mode offline (``LLM.sleep`` / ``wake_up`` / ``is_sleeping``, worker/sleep_mode.py) on the CPU: the KV
cache (level 1) and the weights too (level 2) are given back and taken again, and the model answers with the same
greedy tokens afterwards. On a tiny random Llama with the SmolLM2 tokenizer."""
from __future__ import annotations

import logging

import pytest

from pagedllm import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
PROMPT = "The capital of France is the city of Paris, which lies on the river Seine and has many old bridges and"


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(tiny_llama_dir, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01, enable_sleep_mode=True)


def kv_bytes(llm) -> int:
    return sum(t.numel() * t.element_size() for t in llm.llm_engine.runner.kv_caches)


def tokens(llm) -> list[int]:
    return list(llm.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids)


def test_level_1_frees_the_kv_cache_and_wakes_to_the_same_tokens(llm, caplog):
    before = tokens(llm)
    again = llm.generate(PROMPT, GREEDY, use_tqdm=False)[0]
    assert again.num_cached_tokens > 0          # the prefix cache holds the prompt
    kv = kv_bytes(llm)
    assert kv > 0 and not llm.is_sleeping()
    with caplog.at_level(logging.INFO, logger="pagedllm"):
        llm.sleep(level=1)
    assert llm.is_sleeping()
    assert kv_bytes(llm) == 0
    freed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Sleep mode freed")]
    assert freed == [f"Sleep mode freed {kv / 2**30:.2f} GiB memory, "
                     f"{llm.llm_engine.runner.weights_bytes / 2**30:.2f} GiB memory is still in use."]
    with pytest.raises(ValueError, match=r"The engine is sleeping \(LLM.sleep\(\)\): call LLM.wake_up\(\)"):
        llm.generate(PROMPT, GREEDY, use_tqdm=False)
    llm.sleep(level=1)          # already asleep: a no-op, as vLLM's
    llm.wake_up()
    assert not llm.is_sleeping() and kv_bytes(llm) == kv
    out = llm.generate(PROMPT, GREEDY, use_tqdm=False)[0]
    assert list(out.outputs[0].token_ids) == before
    assert out.num_cached_tokens == 0           # the prefix cache was reset


def test_level_2_drops_the_weights_and_reloads_them(llm):
    before = tokens(llm)
    runner = llm.llm_engine.runner
    assert runner.weights_bytes > 0
    llm.sleep(level=2)
    assert runner.model is None and kv_bytes(llm) == 0
    with pytest.raises(ValueError, match=r"dropped by sleep\(level=2\): call wake_up\(\) first"):
        llm.apply_model(lambda model: 0)
    llm.wake_up(tags=["weights"])        # vLLM's RLHF order: the weights first ...
    assert llm.is_sleeping() and runner.weights_bytes > 0 and kv_bytes(llm) == 0
    llm.wake_up(tags=["kv_cache"])       # ... then the KV cache
    assert not llm.is_sleeping() and kv_bytes(llm) > 0
    assert tokens(llm) == before


def test_sleep_after_a_partial_wake_up_puts_back_what_woke(llm):
    before = tokens(llm)
    runner = llm.llm_engine.runner
    llm.sleep(level=2)
    llm.wake_up(tags=["weights"])
    llm.sleep(level=2)                   # the weights that woke up are dropped again
    assert runner.model is None and runner.asleep == {"weights", "kv_cache"}
    llm.wake_up()
    assert tokens(llm) == before


def test_level_0_pauses_scheduling_only(llm):
    kv = kv_bytes(llm)
    llm.sleep(level=0)
    assert llm.is_sleeping() and kv_bytes(llm) == kv
    llm.wake_up(tags=["scheduling"])
    assert not llm.is_sleeping()


def test_wrong_arguments_are_errors(llm, tiny_llama_dir):
    with pytest.raises(ValueError, match="sleep level must be 0 .*got 3"):
        llm.sleep(level=3)
    with pytest.raises(ValueError, match="sleep mode must be one of abort, wait, keep"):
        llm.sleep(mode="later")
    with pytest.raises(ValueError, match=r"Unknown wake_up tag\(s\) \['weight'\]"):
        llm.wake_up(tags=["weight"])
    plain = LLM(tiny_llama_dir, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01)
    with pytest.raises(ValueError, match=r"Sleep mode is not enabled: create the engine with enable_sleep_mode=True"):
        plain.sleep()
    assert not plain.is_sleeping()


def test_mode_keep_resumes_requests_in_flight_after_wake_up(llm):
    expected = tokens(llm)
    engine = llm.llm_engine
    engine.add_request("kept", PROMPT, GREEDY.clone())
    engine.step()
    engine.step()                           # the prompt and a token or two are in
    llm.sleep(level=1, mode="keep")
    assert engine.has_unfinished_requests() and kv_bytes(llm) == 0
    llm.wake_up()
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            final = out
    assert list(final.outputs[0].token_ids) == expected     # its KV was computed again; the tokens go on


def test_mode_abort_ends_requests_in_flight(llm):
    engine = llm.llm_engine
    engine.add_request("dropped", PROMPT, GREEDY.clone())
    engine.step()
    llm.sleep(level=1)
    assert not engine.has_unfinished_requests()
    llm.wake_up()
    assert tokens(llm) == tokens(llm)


def test_sleep_and_wake_up_on_two_tensor_parallel_ranks(tmp_path):
    pytest.importorskip("cloudpickle")      # the lambda below reaches the worker processes with it
    from tiny_models import save_tiny_llama
    save_tiny_llama(tmp_path, 1024)
    llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", tensor_parallel_size=2,
              max_model_len=128, kv_cache_memory_gb=0.01, enable_sleep_mode=True)
    prompt = {"prompt_token_ids": [11, 12, 13, 14, 15, 16, 17]}
    before = llm.generate(prompt, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    for level in (1, 2):
        llm.sleep(level=level)
        assert llm.collective_rpc(lambda worker: len(worker.kv_caches)) == [0, 0]      # each rank gave its KV back
        llm.wake_up()
        assert llm.generate(prompt, GREEDY, use_tqdm=False)[0].outputs[0].token_ids == before


def test_reset_prefix_cache_of_running_requests(llm):
    expected = tokens(llm)
    engine = llm.llm_engine
    engine.add_request("running", PROMPT, GREEDY.clone())
    engine.step()
    assert llm.reset_prefix_cache() is False                  # a request holds blocks (vLLM's rule)
    assert llm.reset_prefix_cache(reset_running_requests=True) is True
    assert engine.kv_cache.pool.cached == {}
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            final = out
    assert list(final.outputs[0].token_ids) == expected      # it went on from the queue


def test_reset_mm_cache_and_reset_encoder_cache_exist_as_vllms(llm):
    # vLLM's LLM methods (AttributeError before): pagedllm keeps neither cache across requests, nothing to clear.
    assert llm.reset_mm_cache() is None and llm.reset_encoder_cache() is None
    assert len(tokens(llm)) == GREEDY.max_tokens


def test_a_worker_that_refuses_to_sleep_leaves_the_engine_awake(llm, monkeypatch):
    def refuse(level):
        raise ValueError("sleep() is not supported with cpu_offload_gb yet")
    monkeypatch.setattr(llm.llm_engine.runner, "sleep", refuse)
    with pytest.raises(ValueError, match="cpu_offload_gb"):
        llm.sleep(level=1)
    assert not llm.is_sleeping()
    assert len(tokens(llm)) == GREEDY.max_tokens
