"""EXAONE 4.0 (``Exaone4ForCausalLM``: LGAI-EXAONE/EXAONE-4.0-1.2B / 32B): OLMo 2's norm placement (a norm after
each branch, none before it) with per-head Q / K RMSNorms, and, where the config windows some layers
(``sliding_window``), windowed layers that rotate and full-attention layers without positions (global NoPE)."""
from __future__ import annotations

import dataclasses

from pagedllm.model.models.llama import LlamaForCausalLM, LlamaVariant, attention_layer_types


class Exaone4ForCausalLM(LlamaForCausalLM):
    qk_norm = True

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        # HF rotates every layer when there is no window, else only the windowed ("sliding_attention") ones.
        windowed = hf_config.sliding_window is not None
        kinds = attention_layer_types(hf_config, "EXAONE 4")
        return dataclasses.replace(super().variant(hf_config), post_norms=True,
                                   rope_layers=tuple(not windowed or k == "sliding_attention" for k in kinds))
