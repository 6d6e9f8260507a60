"""GPTBigCode (``GPTBigCodeForCausalLM``: StarCoder, StarCoderBase, SantaCoder, tiny_starcoder, WizardCoder) on the
LayerNorm decoder: GPT-2's block (learned absolute positions, biased projections, GELU-tanh MLP, tied head) with
multi-query attention: ``c_attn`` holds all queries then one key and one value head (``multi_query``), or each
head's q, k and v together (``multi_query=false``); nn.Linear weights, not GPT-2's Conv1D."""
from __future__ import annotations

from pagedllm.model.hf_configs import reject_unsupported
from pagedllm.model.models.layernorm_decoder import (SEQUENTIAL, LayerNormDecoderConfig,
                                                     LayerNormDecoderForCausalLM)


class GPTBigCodeForCausalLM(LayerNormDecoderForCausalLM):
    family = "GPTBigCode"
    lora_target_modules = ("c_attn", "c_proj", "c_fc")
    checkpoint_renames = (
        (r"^transformer\.wte\.", "model.embed_tokens."), (r"^transformer\.wpe\.", "model.embed_positions."),
        (r"^transformer\.ln_f\.", "model.norm."), (r"^transformer\.h\.", "model.layers."),
        (r"\.ln_1\.", ".input_layernorm."), (r"\.ln_2\.", ".post_attention_layernorm."),
        (r"\.attn\.c_proj\.", ".self_attn.o_proj."), (r"\.mlp\.c_fc\.", ".mlp.fc1."), (r"\.mlp\.c_proj\.", ".mlp.fc2."),
    )
    fused_qkv = "attn.c_attn"

    @classmethod
    def qkv_layout(cls, hf_config) -> str:
        return "contiguous" if hf_config.multi_query else "per_head"

    @classmethod
    def decoder_config(cls, hf_config) -> LayerNormDecoderConfig:
        reject_unsupported("GPTBigCode", hf_config, {"add_cross_attention": False})
        hidden, heads = hf_config.n_embd, hf_config.n_head
        return LayerNormDecoderConfig(
            hidden_size=hidden, num_layers=hf_config.n_layer, num_heads=heads,
            num_kv_heads=1 if hf_config.multi_query else heads, vocab_size=hf_config.vocab_size,
            intermediate_size=getattr(hf_config, "n_inner", None) or 4 * hidden, eps=hf_config.layer_norm_epsilon,
            activation=hf_config.activation_function, residual=SEQUENTIAL, qkv_bias=True, out_bias=True,
            mlp_bias=True, tie_word_embeddings=getattr(hf_config, "tie_word_embeddings", True),
            max_position_embeddings=hf_config.n_positions, learned_positions=True,
            attention_scale=None if getattr(hf_config, "scale_attn_weights", True) else 1.0)
