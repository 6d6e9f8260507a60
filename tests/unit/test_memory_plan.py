"""The start-up memory plan (worker/memory_plan.py): its arithmetic and its messages, word for word on the numbers of
a tiny memory budget, and the engine's use of it (the error when one max_model_len sequence does not fit, the plan in
the start-up log)."""
from __future__ import annotations

import logging

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.worker.memory_plan import GIB, plan_kv_cache
from tiny_models import save_tiny_llama

MIB = 1 << 20
# A 1 GiB device at gpu_memory_utilization=0.5, blocks of 1 MiB (16 tokens), max_model_len 4096 (256 blocks).
GPU = dict(total_bytes=GIB, gpu_memory_utilization=0.5, bytes_per_block=MIB, block_size=16, max_model_len=4096,
           max_num_seqs=8)


def test_plan_sizes_the_kv_cache_from_what_the_budget_leaves():
    plan = plan_kv_cache(weights_bytes=100 * MIB, activation_peak_bytes=50 * MIB, non_torch_bytes=10 * MIB, **GPU)
    assert plan.num_blocks == 512 - 100 - 50 - 10 == 352
    assert (plan.num_tokens, plan.kv_cache_bytes) == (352 * 16, 352 * MIB)
    assert plan.max_concurrency == pytest.approx(352 * 16 / 4096)
    assert plan.describe() == [
        "device 1.00 GiB, budget 0.50 GiB (gpu_memory_utilization)",
        "weights 0.10 GiB",
        "activation peak 0.05 GiB",
        "other (CUDA context, other processes) 0.01 GiB",
        "KV cache 0.34 GiB (model dtype; sized by gpu_memory_utilization=0.5): 352 blocks x 16 = 5632 tokens; "
        "max concurrency at max_model_len=4096: 1.38x (max_num_seqs 8)"]


def test_plan_caps_the_cache_at_max_num_seqs_full_sequences():
    plan = plan_kv_cache(weights_bytes=0, **{**GPU, "max_num_seqs": 1})
    assert plan.num_blocks == 256 + 1
    # The log says why a cache is smaller than the memory asked for.
    plan = plan_kv_cache(weights_bytes=0, kv_cache_memory_bytes=GIB, bytes_per_block=MIB, block_size=16,
                         max_model_len=256, max_num_seqs=4)
    assert plan.num_blocks == 4 * 16 + 1
    assert plan.describe()[-1].startswith(f"KV cache 0.06 GiB (model dtype; sized by kv_cache_memory_bytes={GIB}, "
                                          f"capped at what max_num_seqs=4 sequences of max_model_len=256 can use): "
                                          f"65 blocks x 16")


def test_block_override_and_kv_cache_memory_bytes_take_precedence():
    assert plan_kv_cache(weights_bytes=0, num_gpu_blocks_override=300, kv_cache_memory_bytes=GIB, **GPU).num_blocks == 300
    plan = plan_kv_cache(weights_bytes=0, kv_cache_memory_bytes=400 * MIB, bytes_per_block=MIB, block_size=16,
                         max_model_len=4096, max_num_seqs=8)
    assert plan.num_blocks == 400 and plan.sized_by == f"kv_cache_memory_bytes={400 * MIB}"
    assert plan.describe()[:2] == ["weights 0.00 GiB",
                                   "activation peak not measured (no profiling forward on this device)"]


def test_weights_that_do_not_fit_say_by_how_much():
    with pytest.raises(ValueError) as info:
        plan_kv_cache(weights_bytes=640 * MIB, **GPU)
    assert str(info.value) == (
        "The model's weights need 0.62 GiB, more than the 0.50 GiB that gpu_memory_utilization=0.5 allows of the "
        "device's 1.00 GiB: 0.12 GiB short, before any activation or KV cache. Keep part of the weights in CPU "
        "memory with cpu_offload_gb (at least 0.1, more to leave room for the KV cache), load a quantized "
        "checkpoint (quantization), or raise gpu_memory_utilization.")


def test_no_memory_left_after_weights_and_activations():
    with pytest.raises(ValueError) as info:
        plan_kv_cache(weights_bytes=300 * MIB, activation_peak_bytes=200 * MIB, non_torch_bytes=22 * MIB, **GPU)
    assert str(info.value) == (
        "No available memory for the cache blocks: of the 0.50 GiB that gpu_memory_utilization=0.5 allows, the "
        "weights take 0.29 GiB, the activation peak of the profiling forward 0.20 GiB and other memory 0.02 GiB "
        "(0.01 GiB short). Try increasing gpu_memory_utilization, lowering max_num_batched_tokens (a smaller "
        "activation peak), or shrinking the weights (quantization, cpu_offload_gb).")


def test_kv_cache_smaller_than_one_sequence_names_the_length_that_fits():
    with pytest.raises(ValueError) as info:
        plan_kv_cache(weights_bytes=300 * MIB, activation_peak_bytes=100 * MIB, non_torch_bytes=12 * MIB, **GPU)
    assert str(info.value) == (
        "To serve at least one request with the model's max seq len (4096), 0.25 GiB KV cache is needed, which is "
        "larger than the available KV cache memory (0.10 GiB, 100 blocks of 16 tokens). Based on the available "
        "memory, the estimated maximum model length is 1600. Try increasing gpu_memory_utilization or decreasing "
        "max_model_len when initializing the engine, store the KV cache in kv_cache_dtype='fp8' (half the bytes "
        "per token), or shrink the weights (quantization, cpu_offload_gb).")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama_plan")
    save_tiny_llama(path, 128, seed=0)
    return str(path)


# The tiny llama's block: 2 layers x K,V x 16 tokens x 2 KV heads x head dim 16 x 4 bytes (fp32).
TINY_BLOCK_BYTES = 2 * 2 * 16 * 2 * 16 * 4


def test_engine_rejects_a_kv_cache_below_one_sequence(tiny_dir):
    with pytest.raises(ValueError, match=r"the model's max seq len \(256\), 0.00 GiB KV cache is needed, which is "
                                         r"larger than the available KV cache memory \(0.00 GiB, 10 blocks of 16 "
                                         r"tokens\). Based on the available memory, the estimated maximum model "
                                         r"length is 160. Try increasing kv_cache_memory_gb / kv_cache_memory_bytes "
                                         r"or decreasing max_model_len"):
        LLM(tiny_dir, skip_tokenizer_init=True, dtype="float32", max_model_len=256,
            kv_cache_memory_bytes=10 * TINY_BLOCK_BYTES)


def test_max_model_len_auto_fits_the_kv_cache(tiny_dir, caplog):
    """vLLM's max_model_len='auto' (-1): the model's own length where the KV cache holds it, else the longest it
    holds, with a warning; requests past it get the context-length error. It was 'not supported yet'."""
    assert plan_kv_cache(weights_bytes=300 * MIB, activation_peak_bytes=100 * MIB, non_torch_bytes=12 * MIB,
                         fit_max_model_len=True, **GPU).max_model_len == 1600     # 100 blocks of 16 tokens
    with caplog.at_level(logging.WARNING, logger="pagedllm"):
        llm = LLM(tiny_dir, skip_tokenizer_init=True, dtype="float32", max_model_len="auto",
                  kv_cache_memory_bytes=10 * TINY_BLOCK_BYTES)
    assert llm.llm_engine.model_config.max_model_len == 160
    assert "max_model_len='auto': the model's 512 tokens do not fit in the KV cache (10 blocks of 16 tokens); " \
           "max_model_len is 160." in caplog.text
    with pytest.raises(ValueError, match="maximum context length is 160 tokens"):
        llm.generate({"prompt_token_ids": [1] * 161})
    assert llm.generate({"prompt_token_ids": [1] * 150}, SamplingParams(max_tokens=20))[0].outputs[0].finish_reason \
        == "length"
    fits = LLM(tiny_dir, skip_tokenizer_init=True, dtype="float32", max_model_len=-1, max_num_seqs=2,
               kv_cache_memory_bytes=80 * TINY_BLOCK_BYTES)
    assert fits.llm_engine.model_config.max_model_len == 512         # the model's own


def test_engine_logs_the_plan(tiny_dir, caplog):
    with caplog.at_level(logging.INFO, logger="pagedllm"):
        llm = LLM(tiny_dir, skip_tokenizer_init=True, dtype="float32", max_model_len=256, max_num_seqs=4,
                  kv_cache_memory_bytes=40 * TINY_BLOCK_BYTES)
    assert llm.llm_engine.kv_cache.pool.num_blocks == 40
    block = next(r.getMessage() for r in caplog.records if "memory plan" in r.getMessage())
    assert (f"KV cache 0.00 GiB (model dtype; sized by kv_cache_memory_bytes={40 * TINY_BLOCK_BYTES}): 40 blocks x "
            f"16 = 640 tokens; max concurrency at max_model_len=256: 2.50x (max_num_seqs 4)") in block
    assert "activation peak not measured" in block


@pytest.mark.parametrize("name", ["PAGEDLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_KVCACHE_SPACE"])
def test_cpu_kv_cache_space_not_above_zero_names_the_variable(tiny_dir, monkeypatch, name):
    """0 or a negative size from the CPU variable is a ValueError naming it, as kv_cache_memory_gb's; it was the
    KV-cache-too-small error with '-1.00 GiB, -131072 blocks' and an 'estimated maximum model length' of -2097152."""
    for variable in ("PAGEDLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_KVCACHE_SPACE"):
        monkeypatch.delenv(variable, raising=False)
    for value in ("0", "-1"):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=f"{name}={value}: the CPU KV cache's size in GiB must be positive"):
            LLM(tiny_dir, skip_tokenizer_init=True, dtype="float32", max_model_len=64, max_num_seqs=2)


@pytest.mark.parametrize("env, kwargs, source", [
    ({}, {}, "the CPU default of 4 GiB, capped at"),                 # nothing given: not 'kv_cache_memory_bytes='
    ({"PAGEDLLM_CPU_KVCACHE_SPACE": "0.5"}, {}, "PAGEDLLM_CPU_KVCACHE_SPACE=0.5, capped at"),
    ({"VLLM_CPU_KVCACHE_SPACE": "0.5"}, {}, "VLLM_CPU_KVCACHE_SPACE=0.5, capped at"),     # vLLM's CPU variable
    ({}, {"kv_cache_memory_gb": 0.25}, "kv_cache_memory_gb=0.25, capped at")])
def test_engine_log_names_where_the_cpu_cache_size_came_from(tiny_dir, caplog, monkeypatch, env, kwargs, source):
    for name in ("PAGEDLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_KVCACHE_SPACE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.INFO, logger="pagedllm"):
        LLM(tiny_dir, skip_tokenizer_init=True, dtype="float32", max_model_len=64, max_num_seqs=2, **kwargs)
    block = next(r.getMessage() for r in caplog.records if "memory plan" in r.getMessage())
    assert f"(model dtype; sized by {source} what max_num_seqs=2 sequences" in block
