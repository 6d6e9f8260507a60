"""Phi-3 beyond the greedy parity of test_models_vs_hf.py: LongRoPE's max_model_len cap (and the error for a longer
one asked for), the fused tensors of a pre-quantized checkpoint refused by name, LoRA refused for the architecture;
and OLMo 2's refusal of tensor parallel."""
from __future__ import annotations

import logging

import pytest
import torch
import transformers

from pagedllm import LLM

LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
            "short_factor": [1.0, 1.5, 2.0, 3.0, 1.0, 1.2, 1.1, 1.3], "long_factor": [4.0] * 8}


def _save(path, **extra) -> str:
    cfg = transformers.Phi3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                  pad_token_id=0, eos_token_id=2, bos_token_id=1, **extra)
    torch.manual_seed(0)
    transformers.Phi3ForCausalLM(cfg).eval().save_pretrained(path)
    return str(path)


def _llm(path, **kwargs) -> LLM:
    return LLM(path, skip_tokenizer_init=True, dtype="float32", kv_cache_memory_gb=0.01, **kwargs)


def test_longrope_caps_max_model_len_at_the_original_context(tmp_path, caplog):
    path = _save(tmp_path, original_max_position_embeddings=128, rope_parameters=LONGROPE)
    with caplog.at_level(logging.WARNING):
        llm = _llm(path)
    assert llm.llm_engine.model_config.max_model_len == 128
    assert "LongRoPE" in caplog.text and "max_model_len is 128" in caplog.text
    assert _llm(path, max_model_len=100).llm_engine.model_config.max_model_len == 100
    with pytest.raises(ValueError, match="max_model_len=256 is longer than this model's original context "
                                         r"\(original_max_position_embeddings=128\)"):
        _llm(path, max_model_len=256)
    # Without LongRoPE the whole context is there.
    assert _llm(_save(tmp_path / "plain")).llm_engine.model_config.max_model_len == 512


def test_prequantized_fused_tensors_are_refused(tmp_path):
    llm = _llm(_save(tmp_path))

    def load_a_quantized_qkv(worker):
        worker.model_runner.model.load_weights([("model.layers.0.self_attn.qkv_proj.qweight",
                                                 torch.zeros(8, 8, dtype=torch.int32))])
    with pytest.raises(ValueError, match="pre-quantized Phi-3 checkpoints .* are not supported yet"):
        llm.collective_rpc(load_a_quantized_qkv)


def test_olmo2_refuses_tensor_parallel(tmp_path):
    """OLMo 2's Q / K norms run over all heads: split over ranks they would not be the model's."""
    cfg = transformers.Olmo2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    transformers.Olmo2ForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="tensor_parallel_size > 1 is not supported yet for Olmo2ForCausalLM"):
        LLM(str(tmp_path), skip_tokenizer_init=True, tensor_parallel_size=2, kv_cache_memory_gb=0.01)
