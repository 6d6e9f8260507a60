"""Mixture-of-experts decoders on the Llama decoder (model/layers/moe.py has the blocks): Qwen2-MoE (Qwen1.5-MoE,
Qwen2-57B-A14B: QKV bias, a shared expert), Qwen3-MoE (Qwen3-30B-A3B, 235B-A22B: per-head Q/K norms) and Mixtral
(8x7B, 8x22B). Their experts take FP8 (online or FP8 checkpoints), AWQ, GPTQ, compressed-tensors W4A16 and
bitsandbytes (4-bit at load, 4-bit and 8-bit checkpoints); LoRA adapters of the attention (and of Qwen2-MoE's shared
expert), not of the experts yet."""
from __future__ import annotations

from pagedllm.model.models.llama import LlamaForCausalLM


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
