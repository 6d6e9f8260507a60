"""kv_cache_dtype="fp8" / "fp8_e4m3" / "fp8_e5m2": the KV cache is stored as float8 (per-tensor scale 1.0, vLLM's
default when a checkpoint has none), so the same memory holds twice the blocks of a bf16 cache, and greedy decoding
follows the model-dtype cache (the torch backend dequantizes on read)."""
from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.kernels import torch_attention
from tiny_models import save_tiny_llama

VOCAB = 128
PROMPTS = [{"prompt_token_ids": [(7 * i + 3 * j) % (VOCAB - 3) + 3 for j in range(20 + 5 * i)]} for i in range(4)]
# Room for 64 fp32 blocks of the tiny llama (2 layers x K,V x 16 tokens x 2 heads x 16 dims x 4 bytes).
MEMORY = 64 * 2 * 2 * 16 * 2 * 16 * 4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama_fp8")
    save_tiny_llama(path, VOCAB, seed=5)
    return str(path)


def llm(tiny_dir, kv_cache_dtype: str, dtype: str = "float32") -> LLM:
    return LLM(tiny_dir, skip_tokenizer_init=True, dtype=dtype, max_model_len=128, max_num_seqs=64,
               kv_cache_dtype=kv_cache_dtype, kv_cache_memory_bytes=MEMORY)


def test_fp8_doubles_the_blocks_of_a_bf16_cache(tiny_dir):
    bf16 = llm(tiny_dir, "auto", dtype="bfloat16").llm_engine
    fp8 = llm(tiny_dir, "fp8", dtype="bfloat16").llm_engine
    assert bf16.kv_cache.pool.num_blocks == 128
    assert fp8.kv_cache.pool.num_blocks == 2 * bf16.kv_cache.pool.num_blocks
    assert fp8.core.runner.kv_caches[0].dtype == torch.float8_e4m3fn


@pytest.mark.parametrize("kv_cache_dtype, torch_dtype", [("fp8", torch.float8_e4m3fn),
                                                          ("fp8_e4m3", torch.float8_e4m3fn),
                                                          ("fp8_e5m2", torch.float8_e5m2)])
def test_fp8_greedy_follows_the_model_dtype_cache(tiny_dir, kv_cache_dtype, torch_dtype):
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=0)
    reference = llm(tiny_dir, "auto").generate(PROMPTS, params, use_tqdm=False)
    engine = llm(tiny_dir, kv_cache_dtype)
    assert engine.llm_engine.core.runner.kv_caches[0].dtype == torch_dtype
    assert engine.llm_engine.kv_cache.pool.num_blocks == 4 * 64       # fp32 -> 1 byte: four times the blocks
    got = engine.generate(PROMPTS, params, use_tqdm=False)
    # The random tiny model's next-token distribution is nearly flat (top logprob about -4.4, log(1/128) = -4.85),
    # so a near-tie can flip a later token; the first four of every prompt are clear enough and must match, and
    # the chosen tokens' logprobs move by the rounding of K/V (e4m3: 2^-4 relative, e5m2: 2^-3, averaged over the
    # head dim and the context: measured at most 0.005 and 0.01 here), well inside 0.05.
    for ref, out in zip(reference, got):
        assert out.outputs[0].token_ids == ref.outputs[0].token_ids
        for ref_lp, lp, token in zip(ref.outputs[0].logprobs, out.outputs[0].logprobs, ref.outputs[0].token_ids):
            assert lp[token].logprob == pytest.approx(ref_lp[token].logprob, abs=0.05)


def test_bfloat16_cache_halves_a_float32_models_and_follows_it(tiny_dir):
    """kv_cache_dtype="bfloat16" (vLLM's name): on the CPU's float32 model, twice the blocks in the same memory, and
    greedy decoding follows the float32 cache (bf16 rounds K/V by 2^-8 relative)."""
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=0)
    reference = llm(tiny_dir, "auto").generate(PROMPTS, params, use_tqdm=False)
    engine = llm(tiny_dir, "bfloat16")
    assert engine.llm_engine.core.runner.kv_caches[0].dtype == torch.bfloat16
    assert engine.llm_engine.kv_cache.pool.num_blocks == 2 * 64
    for ref, out in zip(reference, engine.generate(PROMPTS, params, use_tqdm=False)):
        assert out.outputs[0].token_ids == ref.outputs[0].token_ids
        for ref_lp, lp, token in zip(ref.outputs[0].logprobs, out.outputs[0].logprobs, ref.outputs[0].token_ids):
            assert lp[token].logprob == pytest.approx(ref_lp[token].logprob, abs=0.01)


@torch.inference_mode()     # as the model runs it (the kernel's CPU scratch buffers are inference tensors)
def test_torch_reference_scales_and_dequantizes():
    torch.manual_seed(0)
    k_cache = torch.zeros(2, 4, 1, 8, dtype=torch.float8_e4m3fn)
    v_cache = torch.zeros_like(k_cache)
    key, value = torch.randn(3, 1, 8) * 4, torch.randn(3, 1, 8)
    torch_attention.store_kv(key, value, k_cache, v_cache, torch.tensor([0, 5, -1]), k_scale=2.0, v_scale=0.5)
    stored = k_cache.view(8, 1, 8)
    assert torch.equal(stored[0].float(), (key[0] / 2.0).to(torch.float8_e4m3fn).float())
    assert torch.equal(v_cache.view(8, 1, 8)[5].float(), (value[1] / 0.5).to(torch.float8_e4m3fn).float())
    assert stored[[1, 2, 3, 4, 6, 7]].float().abs().sum() == 0                # slot -1 skipped
    query = torch.randn(1, 2, 8)
    out = torch_attention.paged_attention(query, k_cache, v_cache, torch.tensor([0, 1]), torch.tensor([1]),
                                          torch.tensor([[0]]), 0.35, k_scale=2.0, v_scale=0.5)
    # One key: the output is its value, dequantized (stored / 0.5 * 0.5 = the value rounded to e4m3).
    expected = (value[0] / 0.5).to(torch.float8_e4m3fn).float() * 0.5
    assert torch.allclose(out[0], expected.expand(2, 8))
