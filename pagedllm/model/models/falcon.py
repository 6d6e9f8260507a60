"""Falcon (``FalconForCausalLM``) on the LayerNorm decoder, in its two rotary layouts:
- the new decoder architecture (falcon-40b / 180b, Falcon2-11B): GQA with ``num_kv_heads`` groups, the fused
  ``query_key_value`` holding each group's queries then its key and value, attention and MLP in parallel from two
  LayerNorms (``ln_attn`` / ``ln_mlp``) or one (``num_ln_in_parallel_attn=1``);
- falcon-7b's: multi-query attention (all queries, then one key and one value head), attention and MLP in parallel
  from one LayerNorm (``parallel_attn``), or the sequential block without it.
Biases follow ``bias``; a GELU MLP; a tied head. The ALiBi variant (falcon-rw-1b / 7b: ``alibi=true``) is refused:
our attention kernels take no per-head linear bias."""
from __future__ import annotations

from pagedllm.model.hf_configs import falcon_kv_heads, reject_unsupported
from pagedllm.model.models.layernorm_decoder import (PARALLEL, PARALLEL_ONE_NORM, SEQUENTIAL, LayerNormDecoderConfig,
                                                     LayerNormDecoderForCausalLM)


class FalconForCausalLM(LayerNormDecoderForCausalLM):
    family = "Falcon"
    lora_target_modules = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
    checkpoint_renames = (
        (r"^transformer\.word_embeddings\.", "model.embed_tokens."), (r"^transformer\.ln_f\.", "model.norm."),
        (r"^transformer\.h\.", "model.layers."), (r"\.ln_attn\.", ".input_layernorm."),
        (r"\.ln_mlp\.", ".post_attention_layernorm."), (r"\.self_attention\.dense\.", ".self_attn.o_proj."),
        (r"\.mlp\.dense_h_to_4h\.", ".mlp.fc1."), (r"\.mlp\.dense_4h_to_h\.", ".mlp.fc2."),
    )
    fused_qkv = "self_attention.query_key_value"

    @classmethod
    def qkv_layout(cls, hf_config) -> str:
        if hf_config.new_decoder_architecture:
            return "grouped"
        return "contiguous" if hf_config.multi_query else "per_head"

    @classmethod
    def decoder_config(cls, hf_config) -> LayerNormDecoderConfig:
        reject_unsupported("Falcon", hf_config, {"alibi": False})
        heads = hf_config.num_attention_heads
        if hf_config.new_decoder_architecture:
            # HF builds no LayerNorm for new_decoder_architecture without parallel_attn: no checkpoint has it.
            reject_unsupported("Falcon with new_decoder_architecture=True", hf_config, {"parallel_attn": True})
            residual = PARALLEL_ONE_NORM if hf_config.num_ln_in_parallel_attn == 1 else PARALLEL
        else:
            residual = PARALLEL_ONE_NORM if hf_config.parallel_attn else SEQUENTIAL
        kv_heads = falcon_kv_heads(hf_config)
        hidden = hf_config.hidden_size
        return LayerNormDecoderConfig(
            hidden_size=hidden, num_layers=hf_config.num_hidden_layers, num_heads=heads, num_kv_heads=kv_heads,
            vocab_size=hf_config.vocab_size, intermediate_size=getattr(hf_config, "ffn_hidden_size", None) or 4 * hidden,
            eps=hf_config.layer_norm_epsilon, activation=getattr(hf_config, "activation", None) or "gelu",
            residual=residual, qkv_bias=hf_config.bias, out_bias=hf_config.bias, mlp_bias=hf_config.bias,
            tie_word_embeddings=getattr(hf_config, "tie_word_embeddings", True),
            max_position_embeddings=getattr(hf_config, "max_position_embeddings", None) or 2048)
