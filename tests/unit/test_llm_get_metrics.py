"""``LLM.get_metrics()`` (vLLM's, over pagedllm/metrics.py's Prometheus series): Counter / Gauge / Histogram objects
with the values the engine counted, on a tiny random Llama with the SmolLM2 tokenizer."""
from __future__ import annotations

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.metrics_reader import Counter, Gauge, Histogram


def test_get_metrics_counts_what_generate_did(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01, disable_log_stats=False)
    outs = llm.generate(["Hello there", "The capital of France is"],
                        SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    metrics = llm.get_metrics()
    by_name: dict[str, list] = {}
    for m in metrics:
        by_name.setdefault(m.name, []).append(m)
    model = {"model_name": tiny_llama_dir}
    (generated,) = by_name["pagedllm:generation_tokens"]
    assert isinstance(generated, Counter) and generated.labels == model and generated.value == 8
    (prompt,) = by_name["pagedllm:prompt_tokens"]
    assert prompt.value == sum(len(o.prompt_token_ids) for o in outs)
    (success,) = by_name["pagedllm:request_success"]
    assert success.labels == {**model, "finished_reason": "length"} and success.value == 2
    (running,) = by_name["pagedllm:num_requests_running"]
    assert isinstance(running, Gauge) and running.value == 0
    (e2e,) = by_name["pagedllm:e2e_request_latency_seconds"]
    assert isinstance(e2e, Histogram) and e2e.count == 2 and e2e.buckets["+Inf"] == 2 and e2e.sum > 0
    (ttft,) = by_name["pagedllm:time_to_first_token_seconds"]
    assert ttft.count == 2 and 0 < ttft.sum <= e2e.sum
    (gen_hist,) = by_name["pagedllm:request_generation_tokens"]
    assert gen_hist.count == 2 and gen_hist.sum == 8
    # One inter-token latency per token after each request's first (vLLM's), although generate() gets each request's
    # output only at its finish: 2 requests x 3.
    (itl,) = by_name["pagedllm:inter_token_latency_seconds"]
    assert itl.count == 6 and 0 < itl.sum <= e2e.sum
    # vLLM's cache_config_info: a gauge at 1 labelled with the cache config (the KV cache's block count among them).
    (info,) = by_name["pagedllm:cache_config_info"]
    cache = llm.llm_engine.vllm_config.cache_config
    assert isinstance(info, Gauge) and info.value == 1 and info.labels["num_gpu_blocks"] == str(cache.num_gpu_blocks)


def test_get_metrics_needs_log_stats(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01)
    with pytest.raises(ValueError, match=r"create the LLM with disable_log_stats=False"):
        llm.get_metrics()
