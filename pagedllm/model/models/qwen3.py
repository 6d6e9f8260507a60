"""Qwen3: Llama with per-head RMSNorm on Q and K before the rotary embedding, no QKV bias."""
from pagedllm.model.models.llama import LlamaForCausalLM, LlamaForEmbedding, LlamaForSequenceClassification


class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = True


class Qwen3ForEmbedding(LlamaForEmbedding):
    """``Qwen3Model`` checkpoints (e.g. Qwen3-Embedding): the bare decoder, run as a pooling model."""
    qk_norm = True


class Qwen3ForSequenceClassification(LlamaForSequenceClassification):
    """``Qwen3ForSequenceClassification`` checkpoints (e.g. the seq-cls conversions of Qwen3-Reranker: one label on
    the last token)."""
    qk_norm = True
