"""GLM-4 as transformers ports it: ``GlmForCausalLM`` (THUDM/glm-4-9b-chat-hf) and ``Glm4ForCausalLM``
(GLM-4-0414 9B / 32B, GLM-Z1). Llama decoders with
- one ``gate_up_proj`` checkpoint tensor ([gate; up]), loaded as it is into our merged gate/up layer (whose loader
  cuts both halves per tensor-parallel rank);
- a bias on Q / K / V (``attention_bias``) and none on ``o_proj``;
- the rotary embedding over the first ``partial_rotary_factor`` (0.5) of each head in *interleaved* pairs
  ``(x[2i], x[2i+1])``: the Q and K rows are reordered at load into NeoX halves (InterleavedRotaryForCausalLM), so
  every backend rotates them through its partial-rotary path (the Triton rotary and the fused rotary decode kernel
  included), as for ChatGLM;
- Glm4 only: a norm on each branch's output before its residual add (``post_self_attn_layernorm``,
  ``post_mlp_layernorm``): Gemma 2's sandwich norms under other names, renamed at load.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable

import torch

from pagedllm.model.models.llama import InterleavedRotaryForCausalLM, LlamaVariant


class GlmForCausalLM(InterleavedRotaryForCausalLM):

    def lora_checkpoint_fused_modules(self) -> dict[str, list[tuple[str, int]]]:
        """LoRA: adapters target the checkpoint's fused gate_up_proj (HF's GLM module); the LoRA manager cuts their
        B rows into our merged layer's gate and up parts, each keeping the shared A (as Phi-3's)."""
        return {"gate_up_proj": [("gate_proj", self.config.intermediate_size),
                                 ("up_proj", self.config.intermediate_size)]}

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        return dataclasses.replace(super().variant(hf_config), o_proj_bias=False)

    def _checkpoint_names(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
        return weights

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(self._checkpoint_names(weights))


# GLM-4-0414's norm names -> Gemma 2's (LlamaVariant.sandwich_norms), one pass so no name is renamed twice.
_GLM4_NORMS = {"post_self_attn_layernorm": "post_attention_layernorm",
               "post_attention_layernorm": "pre_feedforward_layernorm",
               "post_mlp_layernorm": "post_feedforward_layernorm"}
_GLM4_NORM_NAME = re.compile(r"\.(" + "|".join(_GLM4_NORMS) + r")\.")


class Glm4ForCausalLM(GlmForCausalLM):
    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        return dataclasses.replace(super().variant(hf_config), sandwich_norms=True)

    def _checkpoint_names(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            yield _GLM4_NORM_NAME.sub(lambda m: f".{_GLM4_NORMS[m.group(1)]}.", name), tensor
