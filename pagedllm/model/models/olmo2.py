"""OLMo 2 (``Olmo2ForCausalLM``: AllenAI's OLMo-2 1B / 7B / 13B / 32B): a Llama decoder whose norms follow each
branch instead of preceding it (``x + norm(attn(x))``, then ``+ norm(mlp(.))``) and whose Q / K norms run over the
whole projection. Those norms over all heads need every head on one rank: no tensor parallel yet."""
from __future__ import annotations

import dataclasses

from pagedllm.model.models.llama import LlamaForCausalLM, LlamaVariant, attention_layer_types


class Olmo2ForCausalLM(LlamaForCausalLM):
    qk_norm = True
    supports_tensor_parallel = False

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        return dataclasses.replace(super().variant(hf_config), post_norms=True, qk_norm_whole=True)


class Olmo3ForCausalLM(Olmo2ForCausalLM):
    """OLMo 3 (``Olmo3ForCausalLM``: allenai/Olmo-3-7B / 32B): OLMo 2 with windowed ("sliding_attention") and
    full-attention layers, each kind with its own rotary parameters (rotary.rope_layer_types; YaRN on the full
    layers of the long-context checkpoints)."""

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        attention_layer_types(hf_config, "OLMo 3")
        return super().variant(hf_config)
