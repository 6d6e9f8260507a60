"""Mixture-of-experts models beyond the greedy parity of test_models_vs_hf.py: a checkpoint missing an expert is an
error naming it, the engine captures no CUDA graph for them (the experts are picked on the host) and says why, and
LoRA / quantization are refused for them."""
from __future__ import annotations

import pytest
import torch
import transformers

from pagedllm import LLM
from pagedllm.config import num_experts


def _save(path) -> str:
    cfg = transformers.Qwen3MoeConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4,
                                      num_experts_per_tok=2, moe_intermediate_size=32, max_position_embeddings=256)
    torch.manual_seed(0)
    transformers.Qwen3MoeForCausalLM(cfg).eval().save_pretrained(path)
    return str(path)


def test_a_missing_expert_is_named(tmp_path):
    from safetensors.torch import load_file, save_file
    path = _save(tmp_path)
    (shard,) = tmp_path.glob("*.safetensors")
    tensors = load_file(shard)
    del tensors["model.layers.1.mlp.experts.2.up_proj.weight"]
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing expert weights for model.layers.1.mlp.experts: expert 2 up"):
        LLM(path, skip_tokenizer_init=True, dtype="float32", kv_cache_memory_gb=0.01)


def test_no_lora_or_quantization(tmp_path):
    path = _save(tmp_path)
    assert num_experts(transformers.AutoConfig.from_pretrained(path)) == 4
    with pytest.raises(ValueError, match="Qwen3MoeForCausalLM does not support LoRA yet"):
        LLM(path, skip_tokenizer_init=True, enable_lora=True, kv_cache_memory_gb=0.01)
    with pytest.raises(ValueError, match=r"Quantization \(fp8\) is not supported yet for Qwen3MoeForCausalLM"):
        LLM(path, skip_tokenizer_init=True, quantization="fp8", kv_cache_memory_gb=0.01)
