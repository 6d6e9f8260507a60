"""Qwen2 / Qwen2.5 (and DeepSeek-R1-Distill-Qwen): Llama with a bias on the QKV projection."""
from pagedllm.model.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True
