"""Token embedding and the LM head (which may share the embedding's weight)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.model.layers.linear import cuda_linear, default_weight_loader, onednn_linear, onednn_pack


class VocabParallelEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim), requires_grad=False)
        self.weight.weight_loader = default_weight_loader

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class ParallelLMHead(VocabParallelEmbedding):
    def __init__(self, num_embeddings: int, embedding_dim: int, bias: bool = False):
        super().__init__(num_embeddings, embedding_dim)
        if bias:
            self.bias = nn.Parameter(torch.empty(num_embeddings), requires_grad=False)
            self.bias.weight_loader = default_weight_loader
        else:
            self.register_parameter("bias", None)

        # CPU: a oneDNN-reordered copy of the weight (see linear.py; 5 vs 12.5 ms per token for SmolLM2's fp32
        # 49152x576 head on 2 cores). The dense weight stays (it is usually the embedding's too); the copy is
        # remade if the weight is replaced.
        self._packed: tuple[int, torch.Tensor | None] | None = None

    def tie_weights(self, embedding: VocabParallelEmbedding) -> None:
        self.weight = embedding.weight

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if not hidden.is_cuda and hidden.dtype == self.weight.dtype and not hidden.requires_grad:
            key = self.weight.data_ptr()
            if self._packed is None or self._packed[0] != key:
                with torch.inference_mode(False):
                    self._packed = (key, onednn_pack(self.weight))
            if self._packed[1] is not None:
                return onednn_linear(hidden, self._packed[1], self.bias)
        if hidden.is_cuda:
            return cuda_linear(hidden, self.weight, self.bias)
        return F.linear(hidden, self.weight, self.bias)
