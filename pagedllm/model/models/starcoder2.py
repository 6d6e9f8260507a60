"""Starcoder2 (``Starcoder2ForCausalLM``: starcoder2-3b / 7b / 15b) on the LayerNorm decoder: the sequential
pre-LayerNorm block with GQA, full rotary, biases on every projection (``use_bias``), a GELU-tanh ``c_fc`` /
``c_proj`` MLP, a tied head, and every layer windowed where the config has a ``sliding_window``."""
from __future__ import annotations

from pagedllm.model.models.layernorm_decoder import (SEQUENTIAL, LayerNormDecoderConfig,
                                                     LayerNormDecoderForCausalLM)


class Starcoder2ForCausalLM(LayerNormDecoderForCausalLM):
    family = "Starcoder2"
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj")
    checkpoint_renames = ((r"\.mlp\.c_fc\.", ".mlp.fc1."), (r"\.mlp\.c_proj\.", ".mlp.fc2."))

    @classmethod
    def decoder_config(cls, hf_config) -> LayerNormDecoderConfig:
        bias = getattr(hf_config, "use_bias", True)
        return LayerNormDecoderConfig(
            hidden_size=hf_config.hidden_size, num_layers=hf_config.num_hidden_layers,
            num_heads=hf_config.num_attention_heads, num_kv_heads=hf_config.num_key_value_heads,
            vocab_size=hf_config.vocab_size, intermediate_size=hf_config.intermediate_size,
            eps=hf_config.norm_epsilon, activation=hf_config.hidden_act, residual=SEQUENTIAL,
            qkv_bias=bias, out_bias=bias, mlp_bias=bias,
            tie_word_embeddings=getattr(hf_config, "tie_word_embeddings", True),
            max_position_embeddings=hf_config.max_position_embeddings)
