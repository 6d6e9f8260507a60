"""XLM-RoBERTa / RoBERTa encoders (``XLMRobertaModel``: multilingual-e5, BGE-M3, paraphrase-multilingual, ...): BERT
whose positions start after the padding index, as fairseq numbered them, with one token type; and their
sequence-classification form (cross-encoder rerankers such as bge-reranker-v2-m3)."""
from __future__ import annotations

import torch
from torch import nn

from pagedllm.model.models.bert import BertEmbeddings, BertModel


class XLMRobertaEmbeddings(BertEmbeddings):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.padding_idx = cfg.pad_token_id

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        # HF numbers a prompt's tokens padding_idx + 1, + 2, ... (create_position_ids_from_input_ids); the engine's
        # positions, 0-based, still mark where each request starts for the attention.
        return super().forward(input_ids, positions + (self.padding_idx + 1), token_type_ids)


class XLMRobertaModel(BertModel):
    embeddings_class = XLMRobertaEmbeddings
    checkpoint_prefix = "roberta."   # XLMRobertaFor* checkpoints nest the encoder under it


class RobertaClassificationHead(nn.Module):
    """HF's head of RoBERTa classifiers, on the <s> row: dense, tanh, out_proj to ``num_labels`` logits."""

    def __init__(self, cfg):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.num_labels)

    def forward(self, cls_rows: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(cls_rows)))


class XLMRobertaForSequenceClassification(XLMRobertaModel):
    """XLM-RoBERTa / RoBERTa classifiers and cross-encoder rerankers (``BAAI/bge-reranker-v2-m3``,
    ``BAAI/bge-reranker-base``): the encoder, then the classification head on the <s> row, which the engine's
    ClassifierPooler hands to ``classify``."""
    unused_heads = ("lm_head.",)

    def __init__(self, hf_config, engine_config):
        super().__init__(hf_config, engine_config)
        self.classifier = RobertaClassificationHead(hf_config)   # replicated: the last stage's pooler runs it

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, hidden]`` <s> rows -> ``[B, num_labels]`` logits."""
        return self.classifier(pooled)


class XLMRobertaForTokenClassification(XLMRobertaModel):
    """XLM-RoBERTa / RoBERTa token classifiers (NER: ``FacebookAI/xlm-roberta-large-finetuned-conll03-english``):
    the encoder, then a linear layer to ``num_labels`` logits on every token (``token_classify``)."""
    unused_heads = ("lm_head.",)

    def __init__(self, hf_config, engine_config):
        super().__init__(hf_config, engine_config)
        self.classifier = nn.Linear(hf_config.hidden_size, hf_config.num_labels)

    def classify(self, rows: torch.Tensor) -> torch.Tensor:
        return self.classifier(rows)
