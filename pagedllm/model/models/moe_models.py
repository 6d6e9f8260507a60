"""Mixture-of-experts decoders on the Llama decoder (model/layers/moe.py has the blocks): Qwen2-MoE (Qwen1.5-MoE,
Qwen2-57B-A14B: QKV bias, a shared expert), Qwen3-MoE (Qwen3-30B-A3B, 235B-A22B: per-head Q/K norms) and Mixtral
(8x7B, 8x22B). Their experts take FP8 (online or FP8 checkpoints), AWQ, GPTQ, compressed-tensors W4A16 and
bitsandbytes (4-bit at load, 4-bit and 8-bit checkpoints); LoRA adapters of the attention (and of Qwen2-MoE's shared
expert), not of the experts yet.

GLM-4.5 / 4.6 (``Glm4MoeForCausalLM``: GLM-4.5, GLM-4.5-Air, GLM-4.6) as HF transformers' glm4_moe runs it: a Llama
decoder with Q/K/V biases (``attention_bias``) and none on o_proj, per-head Q/K norms (``use_qk_norm``), NeoX
rotary over the first ``partial_rotary_factor`` of each head, ``first_k_dense_replace`` dense layers, then
DeepSeek-V3's MoE (model/models/deepseek.py's DeepseekMoE: fp32 sigmoid router with ``e_score_correction_bias``,
noaux_tc groups, ``routed_scaling_factor``, ``n_shared_experts`` shared experts). Its multi-token-prediction layers
(``model.layers.{num_hidden_layers}...``) are not run; their tensors are skipped at load. Unquantized checkpoints
only for now, no LoRA.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import torch

from pagedllm.model.models.deepseek import DeepseekMoE, check_expert_groups
from pagedllm.model.models.llama import LlamaForCausalLM, LlamaVariant
from pagedllm.model.models.weights import without_layers_from


class _MoE(LlamaForCausalLM):
    supports_lora = True      # the attention's and Qwen2-MoE's shared expert's projections; not the experts yet
    supports_quantization = ("fp8", "awq", "gptq", "compressed-tensors", "bitsandbytes")


class Qwen2MoeForCausalLM(_MoE):
    qkv_bias = True
    moe = "qwen"


class Qwen3MoeForCausalLM(_MoE):
    qk_norm = True
    moe = "qwen"


class MixtralForCausalLM(_MoE):
    moe = "mixtral"


def _glm4_moe_block(cfg, quant_config, prefix: str) -> DeepseekMoE:
    return DeepseekMoE(cfg, True, quant_config, prefix)


class Glm4MoeForCausalLM(LlamaForCausalLM):
    moe = "deepseek"                # LlamaVariant.moe; the block is _glm4_moe_block's
    supports_lora = False           # not wired: the shared experts' projections would need the LoRA step
    supports_quantization = False   # unquantized checkpoints only for now (GLM-4.5-FP8 not yet)

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        if hf_config.hidden_act != "silu":
            raise ValueError(f"Glm4MoeForCausalLM with hidden_act={hf_config.hidden_act!r} is not supported (only "
                             f"'silu').")
        check_expert_groups(hf_config, "Glm4MoeForCausalLM", sigmoid=True)
        return dataclasses.replace(super().variant(hf_config), o_proj_bias=False,
                                   qk_norm=bool(getattr(hf_config, "use_qk_norm", False)), moe_block=_glm4_moe_block)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(without_layers_from(weights, self.config.num_hidden_layers))
