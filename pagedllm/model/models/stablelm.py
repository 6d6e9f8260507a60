"""StableLM (``StableLmForCausalLM``: stablelm-2-1_6b / 12b, stablelm-3b-4e1t, stablelm-zephyr) on the LayerNorm
decoder: Llama's gated SiLU MLP (so the gate_up SiLU epilogue applies on the GPU) with LayerNorms instead of RMSNorms,
rotary over the first ``partial_rotary_factor`` of each head, a bias on q/k/v only (``use_qkv_bias``), the parallel
residual with one norm where ``use_parallel_residual`` (stablelm-2-12b), and per-head LayerNorms on Q and K
(``qk_layernorm``: each head its own weights, ``q_layernorm.norms.<h>``)."""
from __future__ import annotations

from pagedllm.model.hf_configs import reject_unsupported
from pagedllm.model.models.layernorm_decoder import (PARALLEL_ONE_NORM, SEQUENTIAL, LayerNormDecoderConfig,
                                                     LayerNormDecoderForCausalLM)


class StableLmForCausalLM(LayerNormDecoderForCausalLM):
    family = "StableLM"
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __init__(self, hf_config, engine_config):
        super().__init__(hf_config, engine_config)
        # Each head's Q / K norm weight is part <h> of the stacked per-head parameter (norm.HeadLayerNorm).
        heads, kv_heads = self.cfg.num_heads, self.cfg.num_kv_heads
        self.packed_modules_mapping = dict(
            type(self).packed_modules_mapping,
            **{f"q_layernorm.norms.{h}": ("q_norm", h) for h in range(heads)},
            **{f"k_layernorm.norms.{h}": ("k_norm", h) for h in range(kv_heads)})

    @classmethod
    def decoder_config(cls, hf_config) -> LayerNormDecoderConfig:
        reject_unsupported("StableLM", hf_config, {"hidden_act": "silu"})
        return LayerNormDecoderConfig(
            hidden_size=hf_config.hidden_size, num_layers=hf_config.num_hidden_layers,
            num_heads=hf_config.num_attention_heads, num_kv_heads=hf_config.num_key_value_heads,
            vocab_size=hf_config.vocab_size, intermediate_size=hf_config.intermediate_size,
            eps=hf_config.layer_norm_eps, activation="silu_gated",
            residual=PARALLEL_ONE_NORM if getattr(hf_config, "use_parallel_residual", False) else SEQUENTIAL,
            qkv_bias=getattr(hf_config, "use_qkv_bias", False), out_bias=False, mlp_bias=False,
            qk_norm="per_head" if getattr(hf_config, "qk_layernorm", False) else None,
            tie_word_embeddings=getattr(hf_config, "tie_word_embeddings", False),
            max_position_embeddings=hf_config.max_position_embeddings)
