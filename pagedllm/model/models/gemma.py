"""Gemma (1): a Llama-shaped decoder with GELU-tanh gating, RMSNorm weights stored as ``w - 1`` (the norm multiplies
by ``1 + w``), token embeddings times ``sqrt(hidden_size)`` (rounded to the model dtype first, as HF does) and tied
embeddings. Gemma 2 and 3 (attention logit soft-capping, interleaved sliding windows) are other architectures."""
from __future__ import annotations

import dataclasses

from pagedllm.model.models.llama import LlamaForCausalLM, LlamaVariant


class GemmaForCausalLM(LlamaForCausalLM):
    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        act = getattr(hf_config, "hidden_activation", None) or getattr(hf_config, "hidden_act", "gelu_pytorch_tanh")
        if act not in ("gelu_pytorch_tanh", "gelu"):     # "gelu" is the legacy name of the same (HF's Gemma config)
            raise ValueError(f"Gemma with hidden activation {act!r} is not supported yet (gelu_pytorch_tanh is).")
        return dataclasses.replace(super().variant(hf_config), activation="gelu_tanh", norm_weight_offset=1.0,
                                   embed_scale=hf_config.hidden_size ** 0.5, embed_scale_in_model_dtype=True)
