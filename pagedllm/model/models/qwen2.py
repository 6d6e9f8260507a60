"""Qwen2 / Qwen2.5 (and DeepSeek-R1-Distill-Qwen): Llama with a bias on the QKV projection."""
from pagedllm.model.models.llama import LlamaForCausalLM, LlamaForEmbedding, LlamaForSequenceClassification


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True


class Qwen2ForEmbedding(LlamaForEmbedding):
    """``Qwen2Model`` checkpoints (e.g. gte-Qwen2): the bare decoder, run as a pooling model."""
    qkv_bias = True


class Qwen2ForSequenceClassification(LlamaForSequenceClassification):
    """``Qwen2ForSequenceClassification`` checkpoints (classifiers and reward heads on Qwen2 / Qwen2.5)."""
    qkv_bias = True
