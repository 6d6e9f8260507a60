"""Qwen3: Llama with per-head RMSNorm on Q and K before the rotary embedding, no QKV bias."""
from pagedllm.model.models.llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = True
