"""ForwardBatch: everything one forward pass needs, passed explicitly to the model and every attention call.

There is no global "forward context": the model runner builds one ForwardBatch per step and the attention layers
read their metadata and KV caches from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor          # [T] int64, the new tokens of every scheduled request, request after request
    positions: torch.Tensor          # [T] int64
    slot_mapping: torch.Tensor       # [T] int64, cache slot of each new token (-1: padding, not stored)
    query_start_loc: torch.Tensor    # [B+1] int32
    seq_lens: torch.Tensor           # [B] int32, context length incl. the new tokens
    block_tables: torch.Tensor       # [B, max_blocks] int32
    max_query_len: int
    max_seq_len: int
    kv_caches: list[torch.Tensor]    # one [2, num_blocks, block_size, Hkv, D] tensor per layer
    # Host copies of the metadata: the torch backend loops over requests without device syncs.
    query_start_loc_cpu: list[int] = field(default_factory=list)
    seq_lens_cpu: list[int] = field(default_factory=list)
    # Attention backend state (e.g. the Triton decode workspace); None for the torch backend.
    attn_workspace: object | None = None

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]
