"""Phi-1 / Phi-1.5 / Phi-2 (``PhiForCausalLM``) on the LayerNorm decoder: one LayerNorm feeding attention and the
MLP in parallel (``x + attn(ln(x)) + mlp(ln(x))``), rotary over the first ``partial_rotary_factor`` of each head
(Phi-2: 32 of 80 dims), biases on every projection and on the LM head, a GELU-tanh ("gelu_new") MLP, and optional
LayerNorms on Q and K (``qk_layernorm``: one LayerNorm(head_dim) each, shared by the heads)."""
from __future__ import annotations

from pagedllm.model.hf_configs import reject_unsupported
from pagedllm.model.models.layernorm_decoder import (PARALLEL_ONE_NORM, LayerNormDecoderConfig,
                                                     LayerNormDecoderForCausalLM)


class PhiForCausalLM(LayerNormDecoderForCausalLM):
    family = "Phi"
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2")
    checkpoint_renames = (
        (r"\.self_attn\.dense\.", ".self_attn.o_proj."), (r"\.self_attn\.q_layernorm\.", ".self_attn.q_norm."),
        (r"\.self_attn\.k_layernorm\.", ".self_attn.k_norm."), (r"^model\.final_layernorm\.", "model.norm."),
    )

    @classmethod
    def decoder_config(cls, hf_config) -> LayerNormDecoderConfig:
        heads = hf_config.num_attention_heads
        reject_unsupported("Phi", hf_config, {"head_dim": hf_config.hidden_size // heads})
        return LayerNormDecoderConfig(
            hidden_size=hf_config.hidden_size, num_layers=hf_config.num_hidden_layers, num_heads=heads,
            num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
            vocab_size=hf_config.vocab_size, intermediate_size=hf_config.intermediate_size,
            eps=hf_config.layer_norm_eps, activation=hf_config.hidden_act, residual=PARALLEL_ONE_NORM,
            qkv_bias=True, out_bias=True, mlp_bias=True, lm_head_bias=True,
            qk_norm="shared" if getattr(hf_config, "qk_layernorm", False) else None,
            tie_word_embeddings=getattr(hf_config, "tie_word_embeddings", False),
            max_position_embeddings=hf_config.max_position_embeddings)
