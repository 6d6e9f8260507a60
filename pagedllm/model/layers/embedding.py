"""Token embedding and the LM head (which may share the embedding's weight)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.distributed import get_tp_rank, get_tp_size, tp_all_gather, tp_all_reduce
from pagedllm.model.layers.linear import cuda_linear, default_weight_loader, onednn_linear, onednn_pack, shard_of


class VocabParallelEmbedding(nn.Module):
    """Tensor parallel: each rank holds a contiguous block of the vocabulary's rows; ids outside it give zeros, and
    the sum over the ranks is the embedding. A vocabulary the ranks do not divide (GPT-2's 50,257 rows at TP=2) is
    padded to a whole number of equal blocks, the rows past its end zero (vLLM pads too); the LM head's logits are
    cut back to the vocabulary. With a ``quant_config`` whose ``get_embedding_method`` covers it (the CPU's fp16
    weights), the method holds the weight and gathers the rows."""

    #: an embedding reads its weight by rows; the LM head multiplies by it (a weight method packs it for that)
    multiplies_weight = False

    def __init__(self, num_embeddings: int, embedding_dim: int, quant_config=None, prefix: str = ""):
        super().__init__()
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.shard_size = -(-num_embeddings // self.tp_size)      # the last rank's block may end in padding rows
        self.vocab_start = self.tp_rank * self.shard_size
        # what a linear layer's methods read (an LM head that a checkpoint quantized takes one: GPTQ's lm_head)
        self.prefix, self.params_dtype = prefix, torch.get_default_dtype()
        self.quant_method = quant_config.get_embedding_method(self, prefix) if quant_config is not None else None
        if self.quant_method is None:
            self.weight = nn.Parameter(torch.empty(self.shard_size, embedding_dim), requires_grad=False)
            self.weight.weight_loader = self.weight_loader
        else:
            self.quant_method.create_weights(self, embedding_dim, [self.shard_size], torch.get_default_dtype(),
                                             weight_loader=self.weight_loader)

    def weight_loader(self, param: torch.Tensor, loaded: torch.Tensor) -> None:
        padding = self.shard_size * self.tp_size - self.num_embeddings
        if padding and loaded.dim() >= 1 and loaded.shape[0] == self.num_embeddings:
            loaded = F.pad(loaded, (0, 0) * (loaded.dim() - 1) + (0, padding))    # zero rows past the vocabulary
        default_weight_loader(param, shard_of(loaded, 0, self.tp_rank, self.shard_size, self.tp_size))

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        if self.quant_method is not None:
            return self.quant_method.embedding(self, ids)
        return F.embedding(ids, self.weight)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return self._rows(input_ids)
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.shard_size)
        hidden = self._rows(local.masked_fill(outside, 0))
        return tp_all_reduce(hidden.masked_fill_(outside.unsqueeze(-1), 0.0))


def with_given_embeds(hidden: torch.Tensor, given: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """The step's input embeddings ``hidden`` (the embedding of input_ids) with the rows of ``given``
    (ForwardBatch.input_embeds: flat token indices and their embeddings, from prompt_embeds prompts) put in place:
    where a model scales its embeddings decides where this goes (HF's ``inputs_embeds`` path: Granite multiplies
    them afterwards, Gemma's embedding layer has already scaled them)."""
    if given is None:
        return hidden
    rows, values = given
    return hidden.index_copy(0, rows, values.to(hidden.dtype))


class ParallelLMHead(VocabParallelEmbedding):
    multiplies_weight = True

    def __init__(self, num_embeddings: int, embedding_dim: int, bias: bool = False, quant_config=None,
                 prefix: str = ""):
        super().__init__(num_embeddings, embedding_dim, quant_config, prefix)
        if bias:
            self.bias = nn.Parameter(torch.empty(self.shard_size), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

        # CPU: a oneDNN-reordered copy of the weight (see linear.py; 5 vs 12.5 ms per token for SmolLM2's fp32
        # 49152x576 head on 2 cores). The dense weight stays (it is usually the embedding's too); the copy is
        # remade if the weight is replaced, or after new values are loaded into it (weights_loaded).
        self._packed: tuple[int, torch.Tensor | None] | None = None

    def tie_weights(self, embedding: VocabParallelEmbedding) -> None:
        self.weight = embedding.weight

    def weights_loaded(self) -> None:
        """New values were loaded into this head's weight (or the embedding it is tied to) after a forward: an RLHF
        update through load_weights. The oneDNN copy is of the old ones."""
        self._packed = None

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the whole vocabulary: tensor parallel, each rank's shard gathered once (every rank gets all
        of them, so every rank samples the same tokens)."""
        logits = self._shard_logits(hidden)
        if self.tp_size == 1:
            return logits
        logits = tp_all_gather(logits, dim=-1)
        return logits if logits.shape[-1] == self.num_embeddings else logits[..., :self.num_embeddings].contiguous()

    def _shard_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.quant_method is not None:
            return self.quant_method.apply(self, hidden, self.bias)
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
