"""Sliding-window models (Mistral v0.1's sliding_window, Gemma 2's and Qwen2's windowed layer_types): the windowed
layers attend through their window (each token sees itself and the window - 1 keys before it), in both attention
backends (the Triton kernels under tests/gpu), so the whole context is usable and tokens equal HF's past the window.
vLLM's disable_sliding_window runs full attention instead, max_model_len capped at the window (a longer one asked
for is an error)."""
from __future__ import annotations

import pytest
import torch
import transformers

from pagedllm import LLM, SamplingParams
from pagedllm import config as cfg_mod
from pagedllm.config import EngineArgs, EngineConfig, ResolvedModel, layer_sliding_windows, sliding_window

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=128, max_position_embeddings=512)


def _build(monkeypatch, hf, **kwargs) -> EngineConfig:
    monkeypatch.setattr(cfg_mod, "_pick_device", lambda name: torch.device("cpu"))
    return EngineConfig.build(EngineArgs(model="m", **kwargs), ResolvedModel("m", hf, None))


def test_which_configs_and_layers_have_a_window():
    assert sliding_window(transformers.MistralConfig(**COMMON, sliding_window=64)) == 64
    assert sliding_window(transformers.MistralConfig(**COMMON, sliding_window=None)) is None
    # Gemma 2: every other layer windowed (layer_types), 4,096 by default.
    gemma2 = transformers.Gemma2Config(**COMMON)
    assert sliding_window(gemma2) == 4096
    assert layer_sliding_windows(gemma2, 2) == [4096, 0]
    assert layer_sliding_windows(gemma2, 2, disabled=True) == [0, 0]
    assert layer_sliding_windows(transformers.MistralConfig(**COMMON, sliding_window=64), 2) == [64, 64]
    assert sliding_window(transformers.Qwen2Config(**COMMON, sliding_window=64, use_sliding_window=False)) is None
    assert sliding_window(transformers.Qwen2Config(**COMMON, sliding_window=64, use_sliding_window=True,
                                                   max_window_layers=1)) == 64
    assert sliding_window(transformers.LlamaConfig(**COMMON)) is None


def test_the_whole_context_unless_disable_sliding_window_caps_it(monkeypatch, caplog):
    hf = transformers.MistralConfig(**COMMON, sliding_window=64)
    assert _build(monkeypatch, hf).max_model_len == 512
    assert _build(monkeypatch, hf, max_model_len=128).max_model_len == 128
    with caplog.at_level("WARNING"):
        assert _build(monkeypatch, hf, disable_sliding_window=True).max_model_len == 64
    assert "disable_sliding_window=True: this model's windowed layers attend to the whole context, so " \
           "max_model_len is 64" in caplog.text
    assert _build(monkeypatch, hf, disable_sliding_window=True, max_model_len=48).max_model_len == 48
    with pytest.raises(ValueError, match=r"max_model_len=128 is longer than this model's sliding attention window "
                                         r"\(sliding_window=64 in its config.json\), and disable_sliding_window=True"):
        _build(monkeypatch, hf, max_model_len=128, disable_sliding_window=True)


@pytest.mark.parametrize("chunk", [None, 16], ids=["whole-prefill", "chunked-prefill"])
def test_tokens_past_the_window_equal_hf_windowed_attention(tmp_path, chunk):
    """A tiny Mistral with an 8-token window, prompts of 5..40 tokens and 16 new ones (the window slides over the
    prompt, over decode steps, and over prefill chunks that start past it): greedy tokens equal HF's, batched and
    with prefix-cache hits. disable_sliding_window caps the context at the window instead."""
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(**COMMON, sliding_window=8, initializer_range=0.2)
    hf = transformers.MistralForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 128, (n,), generator=gen).tolist() for n in (5, 17, 40)]
    extra = {} if chunk is None else {"max_num_batched_tokens": chunk}
    llm = LLM(model=str(tmp_path), dtype="float32", skip_tokenizer_init=True, kv_cache_memory_gb=0.01, **extra)
    assert llm.llm_engine.config.max_model_len == 512
    sp = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, detokenize=False)
    refs = [hf.generate(torch.tensor([p]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                        pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    for _ in range(2):              # the second time over cached prefixes
        ours = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        assert [list(o.outputs[0].token_ids) for o in ours] == refs
    full = LLM(model=str(tmp_path), dtype="float32", skip_tokenizer_init=True, kv_cache_memory_gb=0.01,
               disable_sliding_window=True, max_model_len=8)
    assert full.llm_engine.config.max_model_len == 8
