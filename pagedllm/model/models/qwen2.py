"""Qwen2 / Qwen2.5 (and DeepSeek-R1-Distill-Qwen): Llama with a bias on the QKV projection."""
from typing import Iterable

import torch
from torch import nn

from pagedllm.model.models.llama import LlamaForCausalLM, LlamaForEmbedding, LlamaForSequenceClassification
from pagedllm.model.models.weights import load_packed_weights


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True


class Qwen2ForEmbedding(LlamaForEmbedding):
    """``Qwen2Model`` checkpoints (e.g. gte-Qwen2): the bare decoder, run as a pooling model."""
    qkv_bias = True


class Qwen2ForSequenceClassification(LlamaForSequenceClassification):
    """``Qwen2ForSequenceClassification`` checkpoints (classifiers and reward heads on Qwen2 / Qwen2.5)."""
    qkv_bias = True


class Qwen2ForRewardModel(Qwen2ForEmbedding):
    """Qwen2.5-Math-RM (``Qwen2ForRewardModel``, Qwen's remote code): the decoder, then a score head on every token,
    Linear(hidden, hidden) -> ReLU -> Linear(hidden, num_labels), with one label (``REWARD_MODEL_LABELS``, set at
    resolution as vLLM does); ``LLM.reward`` gives every token's reward (``token_classify``)."""

    def __init__(self, hf_config, engine_config):
        super().__init__(hf_config, engine_config)
        self.score = nn.Sequential(nn.Linear(hf_config.hidden_size, hf_config.hidden_size), nn.ReLU(),
                                   nn.Linear(hf_config.hidden_size, hf_config.num_labels))

    def classify(self, rows: torch.Tensor) -> torch.Tensor:
        """``[T, hidden]`` token rows -> ``[T, num_labels]`` scores."""
        return self.score(rows)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        renamed = ((name if name.startswith(("model.", "score.")) else "model." + name, tensor)
                   for name, tensor in weights if not name.startswith("lm_head."))
        return load_packed_weights(self, renamed, self.packed_modules_mapping, skip=("rotary_emb.inv_freq",))


class Qwen2ForProcessRewardModel(Qwen2ForRewardModel):
    """Qwen2.5-Math-PRM: the reward model's shape with two labels (error / correct step), softmax per token."""
