"""BERT encoders (``BertModel``: sentence-transformers' all-MiniLM, BGE, E5, ...) as pooling models.

Embeddings (word + absolute position + token type 0) and a LayerNorm, then post-LN encoder layers: bidirectional
self-attention, GELU MLP, each with a residual and a LayerNorm after it. The model returns the last hidden states;
the engine's pooler (model/layers/pooler.py) makes one vector per request.

Tensor parallel: heads and the MLP split as in the decoders, the word embedding by vocabulary rows; the position and
token-type tables are replicated (every rank needs every row, and 514 or 1 rows do not split evenly). Pipeline
parallel: the embeddings on the first stage, each stage its encoder layers; the last stage's hidden states go to the
pooler. Post-LN layers carry no separate residual stream: only the hidden states travel between stages.

Attention here is plain SDPA over the step's tokens, not an attention-backend call: an encoder attends both ways
and keeps no KV cache, while pagedllm/attention's interface is paged, causal attention over a cache. A pooling
engine schedules every prompt whole in one step, so a request begins where its position is 0; the step's requests
are padded into one ``[B, H, L, D]`` batch with a key-padding mask (one SDPA call, as sentence-transformers' own
padded batches).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.attention.forward_batch import ForwardBatch
from pagedllm.distributed import is_first_pp_stage, is_last_pp_stage
from pagedllm.model.layers.embedding import VocabParallelEmbedding
from pagedllm.model.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.model.layers.norm import LayerNorm
from pagedllm.model.layers.pipeline import IntermediateTensors, PPMissingLayer, make_layers, missing_prefixes
from pagedllm.model.models.weights import load_packed_weights


def bidirectional_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                            num_heads: int) -> torch.Tensor:
    """Non-causal attention of each request's tokens over its own tokens. ``q, k, v``: ``[T, num_heads * D]``,
    requests back to back, each starting at position 0. Returns ``[T, num_heads * D]``."""
    num_tokens = q.shape[0]
    head_dim = q.shape[1] // num_heads
    starts = torch.nonzero(positions == 0).flatten().tolist() + [num_tokens]
    lens = [b - a for a, b in zip(starts[:-1], starts[1:])]
    if len(lens) == 1:   # one request: no padding
        q, k, v = (x.view(1, num_tokens, num_heads, head_dim).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(num_tokens, num_heads * head_dim)
    longest = max(lens)
    # Row r, column j of the padded batch holds flat token starts[r] + j, or the zero row past the end (padding).
    col = torch.arange(longest, device=q.device)
    start = torch.tensor(starts[:-1], device=q.device).unsqueeze(1)
    length = torch.tensor(lens, device=q.device).unsqueeze(1)
    valid = col < length                                               # [B, L]
    index = torch.where(valid, start + col, num_tokens)

    def padded(x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, x.new_zeros(1, x.shape[1])])[index]           # [B, L, H*D]
        return x.view(len(lens), longest, num_heads, head_dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), attn_mask=valid[:, None, None, :])
    return out.transpose(1, 2).reshape(len(lens), longest, num_heads * head_dim)[valid]


class BertSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        total_heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // total_heads
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, head_dim, total_heads, total_heads, bias=True)
        self.num_heads = self.qkv_proj.num_heads     # this rank's (all of them without tensor parallel)
        self.q_size = self.num_heads * head_dim

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split(self.q_size, dim=-1)
        return bidirectional_attention(q, k, v, positions, self.num_heads)


class BertOutput(nn.Module):
    """dense -> + residual -> LayerNorm (post-LN), after the attention and after the MLP alike."""

    def __init__(self, in_size: int, cfg):
        super().__init__()
        self.dense = RowParallelLinear(in_size, cfg.hidden_size, bias=True)
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        setattr(self, "self", BertSelfAttention(cfg))     # HF's name, so checkpoint names map one to one
        self.output = BertOutput(cfg.hidden_size, cfg)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.output(getattr(self, "self")(hidden, positions), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        if cfg.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"hidden_act={cfg.hidden_act!r} is not supported for BERT models yet; supported: gelu.")
        self.dense = ColumnParallelLinear(cfg.hidden_size, cfg.intermediate_size, bias=True)
        self.approximate = "none" if cfg.hidden_act == "gelu" else "tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x), approximate=self.approximate)


class BertLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg.intermediate_size, cfg)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.attention(hidden, positions)
        return self.output(self.intermediate(hidden), hidden)


class BertEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        # Pipeline parallel: this stage's layers; the others are placeholders (checkpoint names unchanged).
        self.start_layer, self.end_layer, self.layer = make_layers(cfg.num_hidden_layers, lambda i: BertLayer(cfg))
        self.stage_layers = list(self.layer)[self.start_layer:self.end_layer]


class BertEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type={cfg.position_embedding_type!r} is not supported yet; "
                             f"supported: absolute.")
        self.word_embeddings = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.position_embeddings.weight.requires_grad_(False)
        self.token_type_embeddings.weight.requires_grad_(False)
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        # Token type 0 everywhere for one text (as sentence-transformers encodes single texts); a cross-encoder
        # pair's second text has type 1 (ForwardBatch.token_type_ids).
        types = (self.token_type_embeddings.weight[0] if token_type_ids is None
                 else self.token_type_embeddings(token_type_ids))
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + types
        return self.LayerNorm(x)


class BertModel(nn.Module):
    embeddings_class = BertEmbeddings
    checkpoint_prefix = "bert."      # BertFor* checkpoints nest the encoder under it
    packed_modules_mapping = {"query": ("qkv_proj", "q"), "key": ("qkv_proj", "k"), "value": ("qkv_proj", "v")}
    # Not ours to compute: BERT's [CLS] pooler head (sentence-transformers does not use it) and HF's position buffer.
    skipped_weights = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")
    # Heads of other BertFor* / XLMRobertaFor* checkpoints (masked LM, classification) an embedder does not run.
    unused_heads = ("cls.", "classifier.", "lm_head.")

    supports_tensor_parallel = True
    supports_pipeline_parallel = True

    def __init__(self, hf_config, engine_config):
        super().__init__()
        self.config = hf_config
        self.first_stage, self.last_stage = is_first_pp_stage(), is_last_pp_stage()
        self.embeddings = self.embeddings_class(hf_config) if self.first_stage else PPMissingLayer()
        self.encoder = BertEncoder(hf_config)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch,
                intermediate: IntermediateTensors | None = None) -> torch.Tensor | IntermediateTensors:
        hidden = (self.embeddings(input_ids, positions, batch.token_type_ids) if self.first_stage
                  else intermediate.hidden)
        for layer in self.encoder.stage_layers:
            hidden = layer(hidden, positions)
        return hidden if self.last_stage else IntermediateTensors(hidden, None)

    def pp_skipped_checkpoint_prefixes(self) -> tuple[str, ...]:
        """Checkpoint name prefixes this pipeline stage never reads: with and without the ``bert.`` nesting."""
        prefixes = missing_prefixes(self)
        return prefixes + tuple(self.checkpoint_prefix + p for p in prefixes)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        def renamed():
            for name, tensor in weights:
                if name.startswith(self.checkpoint_prefix):
                    name = name[len(self.checkpoint_prefix):]
                if name.startswith(self.unused_heads):
                    continue
                # Checkpoints from TF-era BERT name LayerNorm parameters gamma / beta.
                yield name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"), \
                    tensor
        return load_packed_weights(self, renamed(), self.packed_modules_mapping, skip=self.skipped_weights)


class BertForSequenceClassification(BertModel):
    """BERT classifiers and cross-encoders (``cross-encoder/ms-marco-MiniLM-L-6-v2``, sentiment models): the encoder,
    then HF's head on the [CLS] row, which the engine's ClassifierPooler hands to ``classify``: BERT's pooler
    (dense + tanh) and a linear layer to ``num_labels`` logits."""
    skipped_weights = ("embeddings.position_ids",)
    unused_heads = ("cls.", "lm_head.")

    def __init__(self, hf_config, engine_config):
        super().__init__(hf_config, engine_config)
        # Small and replicated on every rank and stage (the pooler runs them on the last one).
        self.pooler = BertPooler(hf_config.hidden_size)
        self.classifier = nn.Linear(hf_config.hidden_size, hf_config.num_labels)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, hidden]`` [CLS] rows -> ``[B, num_labels]`` logits."""
        return self.classifier(self.pooler(pooled))


class BertForTokenClassification(BertModel):
    """BERT token classifiers (NER, POS: ``dslim/bert-base-NER``): the encoder, then a linear layer to
    ``num_labels`` logits on every token, which the engine's ClassifierPooler runs for ``token_classify``."""
    skipped_weights = ("embeddings.position_ids",)
    unused_heads = ("cls.", "lm_head.")

    def __init__(self, hf_config, engine_config):
        super().__init__(hf_config, engine_config)
        self.classifier = nn.Linear(hf_config.hidden_size, hf_config.num_labels)   # replicated, like BERT's

    def classify(self, rows: torch.Tensor) -> torch.Tensor:
        """``[T, hidden]`` token rows -> ``[T, num_labels]`` logits."""
        return self.classifier(rows)


class BertPooler(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, cls_rows: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls_rows))
