"""The reference backend: ``kernels/torch_attention.py`` in plain PyTorch, any device, no CUDA graphs (it loops over
the requests on the host)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pagedllm.attention.backends.base import AttentionBackend, CommonAttentionMetadata
from pagedllm.kernels import torch_attention


@dataclass
class TorchAttentionMetadata:
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    # Host copies the kernel loops over without device syncs; None: it reads them from the device.
    query_start_loc_cpu: list[int] | None
    seq_lens_cpu: list[int] | None
    # What the first layer of the step works out from the metadata alone (the decode mask), for the others.
    step_cache: dict = field(default_factory=dict)
    common: CommonAttentionMetadata | None = None     # the step as build_metadata got it


class TorchAttentionBackend(AttentionBackend):
    supports_logits_soft_cap = True
    supports_sliding_window = True
    supports_attention_sinks = True
    # The step's slot mapping and whether all its slots are valid (no -1 padding), found once per step by
    # build_metadata instead of by each layer's store (3 ops x layers: ~90 ops of ~2,250 per SmolLM2 decode step).
    _step_slots: tuple[torch.Tensor, bool] | None = None

    def build_metadata(self, common: CommonAttentionMetadata) -> TorchAttentionMetadata:
        self._step_slots = (common.slot_mapping, bool((common.slot_mapping >= 0).all()))
        # int64 block ids once per step: the gathers index with them (each layer converted its own copy).
        return TorchAttentionMetadata(
            query_start_loc=common.query_start_loc, seq_lens=common.seq_lens,
            block_tables=common.block_tables.long(),
            query_start_loc_cpu=None if common.query_start_loc_cpu is None else common.query_start_loc_cpu.tolist(),
            seq_lens_cpu=None if common.seq_lens_cpu is None else common.seq_lens_cpu.tolist(), common=common)

    def write_kv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                 slot_mapping: torch.Tensor, rotary: nn.Module | None = None,
                 positions: torch.Tensor | None = None) -> torch.Tensor:
        if rotary is not None:
            q, k = rotary(positions, q, k)
        step = self._step_slots
        all_valid = step[1] if step is not None and step[0] is slot_mapping else None
        k_cache, v_cache = kv_cache.unbind(0)      # one op, not two selects (issue 19: ops are the CPU step's cost)
        torch_attention.store_kv(k, v, k_cache, v_cache, slot_mapping, all_slots_valid=all_valid)
        return q

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, metadata: TorchAttentionMetadata, scale: float,
               out: torch.Tensor | None = None, soft_cap: float = 0.0, window: int = 0,
               sinks: torch.Tensor | None = None) -> torch.Tensor:
        k_cache, v_cache = kv_cache.unbind(0)
        result = torch_attention.paged_attention(q, k_cache, v_cache, metadata.query_start_loc,
                                                 metadata.seq_lens, metadata.block_tables, scale,
                                                 query_start_loc_cpu=metadata.query_start_loc_cpu,
                                                 seq_lens_cpu=metadata.seq_lens_cpu, step_cache=metadata.step_cache,
                                                 soft_cap=soft_cap, window=window, sinks=sinks)
        return result if out is None else out.copy_(result)

    def attend_decodes(self, q: torch.Tensor, kv_cache: torch.Tensor, metadata: TorchAttentionMetadata, scale: float,
                       out: torch.Tensor | None = None) -> torch.Tensor:
        nd = metadata.common.num_decodes
        k_cache, v_cache = kv_cache.unbind(0)
        starts, lens = metadata.query_start_loc_cpu, metadata.seq_lens_cpu
        result = torch_attention.paged_attention(q, k_cache, v_cache, metadata.query_start_loc[:nd + 1],
                                                 metadata.seq_lens[:nd], metadata.block_tables[:nd], scale,
                                                 query_start_loc_cpu=None if starts is None else starts[:nd + 1],
                                                 seq_lens_cpu=None if lens is None else lens[:nd],
                                                 step_cache=metadata.step_cache)
        return result if out is None else out.copy_(result)
