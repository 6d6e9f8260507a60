"""Cohere's Command models: ``CohereForCausalLM`` (Command-R, Command-R+, Aya 23 / Aya Expanse) and
``Cohere2ForCausalLM`` (Command-R7B, Command A). Llama decoders with
- bias-free LayerNorms (``layer_norm_eps``) instead of RMSNorms, and the attention and the MLP side by side on one
  norm's output, ``x + attn(ln(x)) + mlp(ln(x))`` (LlamaVariant.layer_norm / parallel_residual);
- the rotary embedding over *interleaved* pairs ``(x[2i], x[2i+1])``: the Q and K rows (and the per-head Q / K norm
  weights) are reordered at load into NeoX halves (InterleavedRotaryForCausalLM);
- optional Q / K LayerNorms with a weight per head (``use_qk_norm``: Command-R+);
- the logits times ``logit_scale``;
- Cohere 2: ``layer_types`` of windowed ("sliding_attention") layers, which alone rotate Q / K, and full-attention
  layers without positions (LlamaVariant.rope_layers).
"""
from __future__ import annotations

import dataclasses

from pagedllm.model.models.llama import InterleavedRotaryForCausalLM, LlamaVariant, attention_layer_types


class CohereForCausalLM(InterleavedRotaryForCausalLM):

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        return dataclasses.replace(super().variant(hf_config), layer_norm=True, parallel_residual=True,
                                   qk_norm=bool(getattr(hf_config, "use_qk_norm", False)),
                                   logits_divisor=1.0 / hf_config.logit_scale)


class Cohere2ForCausalLM(CohereForCausalLM):
    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        # HF rotates a layer only where it windows it: a "sliding_attention" layer, with a sliding_window set.
        kinds = attention_layer_types(hf_config, "Cohere2")
        windowed = hf_config.sliding_window is not None
        return dataclasses.replace(super().variant(hf_config),
                                   rope_layers=tuple(windowed and k == "sliding_attention" for k in kinds))
