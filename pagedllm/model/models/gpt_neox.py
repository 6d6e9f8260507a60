"""GPT-NeoX (``GPTNeoXForCausalLM``: Pythia, GPT-NeoX-20B, Dolly v2, RedPajama-INCITE) on the LayerNorm decoder:
q, k and v fused per head in ``query_key_value`` (``[heads, 3, head_dim]`` rows, cut at load), rotary over the
first ``rotary_pct`` of each head, the parallel residual ``x + attn(ln1(x)) + mlp(ln2(x))`` (or the sequential one
with use_parallel_residual=false), LayerNorms and projections with bias, a GELU MLP and an untied ``embed_out``."""
from __future__ import annotations

from pagedllm.model.models.layernorm_decoder import (PARALLEL, SEQUENTIAL, LayerNormDecoderConfig,
                                                     LayerNormDecoderForCausalLM)


class GPTNeoXForCausalLM(LayerNormDecoderForCausalLM):
    family = "GPT-NeoX"
    lora_target_modules = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
    checkpoint_renames = (
        (r"^gpt_neox\.embed_in\.", "model.embed_tokens."), (r"^gpt_neox\.final_layer_norm\.", "model.norm."),
        (r"^gpt_neox\.", "model."), (r"\.attention\.dense\.", ".self_attn.o_proj."),
        (r"\.mlp\.dense_h_to_4h\.", ".mlp.fc1."), (r"\.mlp\.dense_4h_to_h\.", ".mlp.fc2."),
        (r"^embed_out\.", "lm_head."),
    )
    fused_qkv = "attention.query_key_value"

    @classmethod
    def decoder_config(cls, hf_config) -> LayerNormDecoderConfig:
        bias = getattr(hf_config, "attention_bias", True)
        return LayerNormDecoderConfig(
            hidden_size=hf_config.hidden_size, num_layers=hf_config.num_hidden_layers,
            num_heads=hf_config.num_attention_heads, num_kv_heads=hf_config.num_attention_heads,
            vocab_size=hf_config.vocab_size, intermediate_size=hf_config.intermediate_size,
            eps=hf_config.layer_norm_eps, activation=hf_config.hidden_act,
            residual=PARALLEL if hf_config.use_parallel_residual else SEQUENTIAL,
            qkv_bias=bias, out_bias=bias, mlp_bias=True,
            tie_word_embeddings=getattr(hf_config, "tie_word_embeddings", False),
            max_position_embeddings=hf_config.max_position_embeddings)
