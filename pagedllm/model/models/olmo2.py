"""OLMo 2 (``Olmo2ForCausalLM``: AllenAI's OLMo-2 1B / 7B / 13B / 32B): a Llama decoder whose norms follow each
branch instead of preceding it (``x + norm(attn(x))``, then ``+ norm(mlp(.))``) and whose Q / K norms run over the
whole projection. Those norms over all heads need every head on one rank: no tensor parallel yet."""
from __future__ import annotations

import dataclasses

from pagedllm.model.models.llama import LlamaForCausalLM, LlamaVariant


class Olmo2ForCausalLM(LlamaForCausalLM):
    qk_norm = True
    supports_tensor_parallel = False

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        return dataclasses.replace(super().variant(hf_config), post_norms=True, qk_norm_whole=True)
