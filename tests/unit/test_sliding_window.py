"""Sliding-window models (Mistral v0.1's sliding_window, Qwen2 / Qwen3 with use_sliding_window): pagedllm has no
windowed attention, so it runs them with max_model_len capped at the window, where full attention is the window's
(tokens equal HF's there), and a longer max_model_len asked for is an error, not attention that differs from the
model's. vLLM's disable_sliding_window asks for that cap."""
from __future__ import annotations

import pytest
import torch
import transformers

from pagedllm import LLM, SamplingParams
from pagedllm import config as cfg_mod
from pagedllm.config import EngineArgs, EngineConfig, ResolvedModel, sliding_window

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=128, max_position_embeddings=512)


def _build(monkeypatch, hf, **kwargs) -> EngineConfig:
    monkeypatch.setattr(cfg_mod, "_pick_device", lambda name: torch.device("cpu"))
    return EngineConfig.build(EngineArgs(model="m", **kwargs), ResolvedModel("m", hf, None))


def test_which_configs_have_a_window():
    assert sliding_window(transformers.MistralConfig(**COMMON, sliding_window=64)) == 64
    assert sliding_window(transformers.MistralConfig(**COMMON, sliding_window=None)) is None
    # Gemma 2: every other layer windowed (layer_types), 4,096 by default.
    assert sliding_window(transformers.Gemma2Config(**COMMON)) == 4096
    assert sliding_window(transformers.Qwen2Config(**COMMON, sliding_window=64, use_sliding_window=False)) is None
    assert sliding_window(transformers.Qwen2Config(**COMMON, sliding_window=64, use_sliding_window=True,
                                                   max_window_layers=1)) == 64
    assert sliding_window(transformers.LlamaConfig(**COMMON)) is None


def test_max_model_len_is_capped_at_the_window_or_refused(monkeypatch, caplog):
    hf = transformers.MistralConfig(**COMMON, sliding_window=64)
    with caplog.at_level("WARNING"):
        assert _build(monkeypatch, hf).max_model_len == 64
    assert "does not support sliding-window attention yet, so max_model_len is 64" in caplog.text
    assert _build(monkeypatch, hf, disable_sliding_window=True).max_model_len == 64
    assert _build(monkeypatch, hf, max_model_len=48).max_model_len == 48
    with pytest.raises(ValueError, match=r"max_model_len=128 is longer than this model's sliding attention window "
                                         r"\(sliding_window=64 in its config.json\)"):
        _build(monkeypatch, hf, max_model_len=128)
    # A window as long as the context changes nothing (Mistral v0.2+ and Qwen2 checkpoints say None or disable it).
    assert _build(monkeypatch, transformers.MistralConfig(**COMMON, sliding_window=512)).max_model_len == 512
    assert _build(monkeypatch, transformers.Qwen2Config(**COMMON, sliding_window=64,
                                                        use_sliding_window=False)).max_model_len == 512


def test_tokens_inside_the_window_equal_hf_windowed_attention(tmp_path):
    """A tiny Mistral with a 24-token window: the engine's context is 24 tokens and its greedy tokens equal HF's
    (whose attention applies the window) for a request that fills it; a longer prompt is refused."""
    torch.manual_seed(0)
    hf = transformers.MistralForCausalLM(transformers.MistralConfig(**COMMON, sliding_window=24)).eval()
    hf.save_pretrained(tmp_path)
    llm = LLM(model=str(tmp_path), dtype="float32", skip_tokenizer_init=True)
    assert llm.llm_engine.config.max_model_len == 24
    prompt = [5, 17, 42, 9, 33, 71, 2, 88, 14, 60, 23, 99]
    ours = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                                                      detokenize=False), use_tqdm=False)
    ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    assert list(ours[0].outputs[0].token_ids) == ref[0, len(prompt):].tolist()
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([{"prompt_token_ids": list(range(1, 30))}], SamplingParams(max_tokens=1), use_tqdm=False)
