"""Cohere's Command models: ``CohereForCausalLM`` (Command-R, Command-R+, Aya 23 / Aya Expanse) and
``Cohere2ForCausalLM`` (Command-R7B, Command A). Llama decoders with
- bias-free LayerNorms (``layer_norm_eps``) instead of RMSNorms, and the attention and the MLP side by side on one
  norm's output, ``x + attn(ln(x)) + mlp(ln(x))`` (LlamaVariant.layer_norm / parallel_residual);
- the rotary embedding over *interleaved* pairs ``(x[2i], x[2i+1])``: the Q and K rows (and the per-head Q / K norm
  weights) are reordered at load into NeoX halves (weights.interleaved_rotary_to_neox), so every backend and the
  fused rotary decode kernel rotate them through the one NeoX path;
- optional Q / K LayerNorms with a weight per head (``use_qk_norm``: Command-R+);
- the logits times ``logit_scale``;
- Cohere 2: ``layer_types`` of windowed ("sliding_attention") layers, which alone rotate Q / K, and full-attention
  layers without positions (LlamaVariant.rope_layers).
LoRA is not offered: adapters' Q / K rows would need the same reordering.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import torch

from pagedllm.model.layers.rotary import rotary_dim
from pagedllm.model.models.llama import LlamaForCausalLM, LlamaVariant
from pagedllm.model.models.weights import interleaved_rotary_to_neox


class CohereForCausalLM(LlamaForCausalLM):
    supports_lora = False

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        return dataclasses.replace(super().variant(hf_config), layer_norm=True, parallel_residual=True,
                                   qk_norm=bool(getattr(hf_config, "use_qk_norm", False)),
                                   logits_divisor=1.0 / hf_config.logit_scale)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return super().load_weights(interleaved_rotary_to_neox(weights, head_dim, rotary_dim(cfg, head_dim),
                                                               type(self).__name__))


class Cohere2ForCausalLM(CohereForCausalLM):
    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        # HF rotates a layer only where it windows it: a "sliding_attention" layer, with a sliding_window set.
        kinds = hf_config.layer_types[:hf_config.num_hidden_layers]
        unknown = sorted(set(kinds) - {"sliding_attention", "full_attention"})
        if unknown:
            raise ValueError(f"Cohere2 config: layer_types {unknown} are not supported (only 'sliding_attention' "
                             f"and 'full_attention').")
        windowed = hf_config.sliding_window is not None
        return dataclasses.replace(super().variant(hf_config),
                                   rope_layers=tuple(windowed and k == "sliding_attention" for k in kinds))
