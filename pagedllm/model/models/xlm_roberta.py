"""XLM-RoBERTa / RoBERTa encoders (``XLMRobertaModel``: multilingual-e5, BGE-M3, paraphrase-multilingual, ...): BERT
whose positions start after the padding index, as fairseq numbered them, with one token type."""
from __future__ import annotations

import torch

from pagedllm.model.models.bert import BertEmbeddings, BertModel


class XLMRobertaEmbeddings(BertEmbeddings):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.padding_idx = cfg.pad_token_id

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # HF numbers a prompt's tokens padding_idx + 1, + 2, ... (create_position_ids_from_input_ids); the engine's
        # positions, 0-based, still mark where each request starts for the attention.
        return super().forward(input_ids, positions + (self.padding_idx + 1))


class XLMRobertaModel(BertModel):
    embeddings_class = XLMRobertaEmbeddings
    checkpoint_prefix = "roberta."   # XLMRobertaFor* checkpoints nest the encoder under it
