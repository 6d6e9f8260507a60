"""IBM Granite (3.x): a Llama decoder with four multipliers from its config: the token embeddings times
``embedding_multiplier``, each attention and MLP output times ``residual_multiplier`` before its residual add, the
attention scores times ``attention_multiplier`` (instead of ``head_dim ** -0.5``), and the logits divided by
``logits_scaling``."""
from __future__ import annotations

import dataclasses

from pagedllm.model.models.llama import LlamaForCausalLM, LlamaVariant


class GraniteForCausalLM(LlamaForCausalLM):
    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        return dataclasses.replace(super().variant(hf_config), embed_scale=hf_config.embedding_multiplier,
                                   residual_multiplier=hf_config.residual_multiplier,
                                   attention_scale=hf_config.attention_multiplier,
                                   logits_divisor=hf_config.logits_scaling)
