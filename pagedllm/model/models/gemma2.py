"""Gemma 2: Gemma's decoder (GELU-tanh gating, ``1 + w`` norms, embeddings times sqrt(hidden), tied) with a norm
around each branch (the attention output and the MLP's input and output), attention scaled by
``query_pre_attn_scalar ** -0.5``, attention logits soft-capped (``attn_logit_softcapping``: the attention
backends take ``soft_cap``) and final logits soft-capped. Its every-other-layer sliding window (4,096, from
``layer_types``) is each windowed layer's ``window`` (config.layer_sliding_windows)."""
from __future__ import annotations

import dataclasses

from pagedllm.model.models.gemma import GemmaForCausalLM
from pagedllm.model.models.llama import LlamaVariant


class Gemma2ForCausalLM(GemmaForCausalLM):
    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        scalar = getattr(hf_config, "query_pre_attn_scalar", None)
        return dataclasses.replace(
            super().variant(hf_config), sandwich_norms=True, attention_scale=scalar ** -0.5 if scalar else None,
            attn_soft_cap=getattr(hf_config, "attn_logit_softcapping", None) or 0.0,
            final_logit_soft_cap=getattr(hf_config, "final_logit_softcapping", None) or 0.0)
