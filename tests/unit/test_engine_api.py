"""The engine-level API as vLLM's scripts call it: ``LLMEngine.add_request`` in vLLM's argument order (llm_engine_example.py
style), ``AsyncLLMEngine.generate`` / ``encode`` with vLLM's keywords, and the helper methods those scripts use."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import pytest
import torch

from pagedllm import AsyncEngineArgs, AsyncLLMEngine, EngineArgs, LLMEngine, SamplingParams
from pagedllm.usage.usage_lib import UsageContext

torch.set_num_threads(1)

GREEDY = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tiny_llama_dir):
    return LLMEngine.from_engine_args(EngineArgs(model=tiny_llama_dir, max_model_len=64, kv_cache_memory_gb=0.02,
                                                 disable_log_stats=False),
                                      usage_context=UsageContext.ENGINE_CONTEXT)


def run_all(engine) -> dict:
    finished = {}
    while engine.has_unfinished_requests():
        finished.update({out.request_id: out for out in engine.step() if out.finished})
    return finished


def test_add_request_in_vllms_positional_order(engine):
    # vLLM: add_request(request_id, prompt, params, arrival_time, lora_request, tokenization_kwargs, trace_headers,
    # priority). Before, the 5th positional argument was taken as the priority.
    engine.add_request("pos", "Hello, my name is", GREEDY, time.time(), None, None, None, 0)
    engine.add_request("kw", "Hello, my name is", GREEDY, arrival_time=None, lora_request=None,
                       tokenization_kwargs=None, trace_headers=None, priority=0)
    out = run_all(engine)
    assert out["pos"].outputs[0].token_ids == out["kw"].outputs[0].token_ids
    assert len(out["pos"].outputs[0].token_ids) == 3


def test_add_request_tokenization_kwargs(engine):
    prompt = "one two three four five six seven eight"
    engine.add_request("full", prompt, GREEDY)
    engine.add_request("cut", prompt, GREEDY, tokenization_kwargs={"truncation": True, "max_length": 4})
    engine.add_request("plain", prompt, GREEDY, tokenization_kwargs={"add_special_tokens": False})
    out = run_all(engine)
    assert out["cut"].prompt_token_ids == out["full"].prompt_token_ids[-4:]
    assert out["plain"].prompt_token_ids == engine.get_tokenizer().encode(prompt, add_special_tokens=False)
    with pytest.raises(ValueError, match="max_length"):
        engine.add_request("long", prompt, GREEDY, tokenization_kwargs={"max_length": 2})
    with pytest.raises(ValueError, match="padding"):
        engine.add_request("bad", prompt, GREEDY, tokenization_kwargs={"padding": True})
    assert not engine.has_unfinished_requests()


def test_supported_tasks_and_log_stats(engine, caplog):
    assert engine.vllm_config.args.usage_context is UsageContext.ENGINE_CONTEXT
    assert engine.get_supported_tasks() == ("generate",)
    engine.add_request("s", "Hello", GREEDY)
    run_all(engine)
    with caplog.at_level(logging.INFO, logger="pagedllm"):
        engine.do_log_stats()
    assert "Avg generation throughput" in caplog.text


def test_async_engine_with_vllms_keywords(tiny_llama_dir, caplog):
    args = AsyncEngineArgs(model=tiny_llama_dir, max_model_len=64, kv_cache_memory_gb=0.02)
    engine = AsyncLLMEngine.from_engine_args(args, usage_context=UsageContext.ENGINE_CONTEXT)
    assert engine.vllm_config.args.usage_context is UsageContext.ENGINE_CONTEXT      # picks vLLM's defaults
    assert args.usage_context is UsageContext.LLM_CLASS
    prompt = "one two three four five six seven eight"

    async def run(rid, **kw):
        return [o async for o in engine.generate(prompt, GREEDY, rid, **kw)][-1]

    async def main():
        full = await run("full")
        cut = await run("cut", lora_request=None, tokenization_kwargs={"truncation": True, "max_length": 4},
                        trace_headers=None, priority=0)
        with pytest.raises(ValueError, match="padding"):
            await run("bad", tokenization_kwargs={"padding": True})
        assert await engine.get_supported_tasks() == ("generate",)
        assert (await engine.get_model_config()).max_model_len == 64
        with caplog.at_level(logging.INFO, logger="pagedllm"):
            await engine.do_log_stats()
        assert "Avg generation throughput" in caplog.text        # statistics are on (disable_log_stats=False)
        await engine.check_health()
        assert await engine.is_sleeping() is False
        assert await engine.is_tracing_enabled() is False
        return full, cut

    try:
        full, cut = asyncio.run(main())
        assert cut.prompt_token_ids == full.prompt_token_ids[-4:]
        assert cut.outputs[0].token_ids and engine.model_config.max_model_len == 64
        assert engine.get_tokenizer() is not None and engine.is_running and not engine.errored
    finally:
        engine.shutdown()


def test_async_engine_args_enable_log_requests(tiny_llama_dir, caplog):
    # vLLM's AsyncEngineArgs field (off by default); before, AsyncEngineArgs(enable_log_requests=True) was a TypeError.
    assert AsyncEngineArgs(model=tiny_llama_dir).enable_log_requests is False
    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(model=tiny_llama_dir, max_model_len=64,
                                                             kv_cache_memory_gb=0.02, enable_log_requests=True,
                                                             disable_log_stats=True))

    async def main():
        await engine.add_request("logged", "Hello", SamplingParams(max_tokens=50, ignore_eos=True))
        await engine.abort("logged")
        await engine.do_log_stats()

    try:
        with caplog.at_level(logging.INFO, logger="pagedllm"):
            asyncio.run(main())
        assert "Aborted request logged." in caplog.text
        assert "Avg generation throughput" not in caplog.text and engine.metrics is None     # disable_log_stats
    finally:
        engine.shutdown()
    with pytest.raises(TypeError, match="enable_log_requests"):     # vLLM's LLM has no such argument either
        EngineArgs.from_kwargs(tiny_llama_dir, enable_log_requests=True)
    # ... but vLLM's LLM(**dataclasses.asdict(engine_args)) hands every field over, at its default here.
    assert EngineArgs.from_kwargs(**dataclasses.asdict(EngineArgs(model=tiny_llama_dir))).model == tiny_llama_dir


def test_async_engine_logs_stats_without_a_metrics_object(tiny_llama_dir, caplog, monkeypatch):
    # vLLM's AsyncLLM keeps statistics unless disable_log_stats (off by default in AsyncEngineArgs): the throughput /
    # KV-cache line while requests run, with no server around the engine, every VLLM_LOG_STATS_INTERVAL seconds.
    monkeypatch.delenv("PAGEDLLM_LOG_STATS_INTERVAL", raising=False)
    monkeypatch.setenv("VLLM_LOG_STATS_INTERVAL", "0.05")
    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(model=tiny_llama_dir, max_model_len=256,
                                                             kv_cache_memory_gb=0.02))

    async def main():
        params = SamplingParams(temperature=0.0, max_tokens=150, ignore_eos=True)
        return [o async for o in engine.generate("one two three", params, "stats")][-1]

    try:
        with caplog.at_level(logging.INFO, logger="pagedllm"):
            out = asyncio.run(main())
        lines = [r.getMessage() for r in caplog.records if "Avg generation throughput" in r.getMessage()]
        assert len(out.outputs[0].token_ids) == 150 and lines, caplog.text
        assert "Running: 1 reqs" in lines[0] and "GPU KV cache usage" in lines[0]
    finally:
        engine.shutdown()


def test_stats_interval_is_vllms_log_stats_interval(monkeypatch):
    from pagedllm.metrics import EngineMetrics
    monkeypatch.delenv("PAGEDLLM_LOG_STATS_INTERVAL", raising=False)
    monkeypatch.delenv("VLLM_LOG_STATS_INTERVAL", raising=False)
    assert EngineMetrics("m").log_interval_s == 10.0                   # vLLM's default
    monkeypatch.setenv("VLLM_LOG_STATS_INTERVAL", "2.5")
    assert EngineMetrics("m").log_interval_s == 2.5
    monkeypatch.setenv("VLLM_LOG_STATS_INTERVAL", "0")                 # not above 0: the default, as vLLM
    assert EngineMetrics("m").log_interval_s == 10.0
    monkeypatch.setenv("PAGEDLLM_LOG_STATS_INTERVAL", "1")            # ours first
    assert EngineMetrics("m").log_interval_s == 1.0
    monkeypatch.setenv("PAGEDLLM_LOG_STATS_INTERVAL", "soon")
    with pytest.raises(ValueError, match="PAGEDLLM_LOG_STATS_INTERVAL must be a number of seconds, got 'soon'"):
        EngineMetrics("m")
