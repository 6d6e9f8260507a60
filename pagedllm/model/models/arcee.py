"""Arcee (``ArceeForCausalLM``: arcee-ai/AFM-4.5B): a Llama decoder whose MLP has no gate, ``down(relu(up(x))^2)``
(LlamaVariant.activation "ungated", with the config's hidden_act: "relu2")."""
from __future__ import annotations

import dataclasses

from pagedllm.model.models.llama import LlamaForCausalLM, LlamaVariant


class ArceeForCausalLM(LlamaForCausalLM):
    # up_proj is a layer of its own (no gate to merge it with).
    packed_modules_mapping = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v")}

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        return dataclasses.replace(super().variant(hf_config), activation="ungated")
