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
    # Mixed batches: the first num_decodes requests have one new token each (the model runner orders them first),
    # and prefill_query_start_loc [B - num_decodes + 1] int32 holds the other requests' query starts, from 0.
    # The Triton backend sends the two groups to its decode and extend kernels.
    num_decodes: int = 0
    prefill_query_start_loc: torch.Tensor | None = None
    # Set only while capturing piecewise CUDA graphs (worker/cuda_graphs.py): the attention layers hand their query
    # to it instead of attending, and it closes the graph there.
    attn_breaker: object | None = None

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]
