"""The CUDA backend: our Triton kernels (``kernels/triton_attention.py``, ``kernels/triton_rotary.py``).

Rotation and the KV-cache write are one kernel; attention goes to the split-KV decode kernel for one-token
requests and to the varlen extend kernel for the others (a mixed batch is split in two, decodes first). The decode
kernel's split grid depends only on the batch size and its scratch is preallocated here, so both kinds of CUDA
graphs are supported.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pagedllm import envs
from pagedllm.attention.backends.base import AttentionBackend, CommonAttentionMetadata
from pagedllm.kernels import triton_attention
from pagedllm.kernels.triton_attention import DecodeWorkspace
from pagedllm.kernels.triton_rotary import rotary_store_kv


@dataclass
class TritonAttentionMetadata:
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    max_query_len: int
    # Mixed batches: the first num_decodes requests go to the decode kernel, the rest to the extend kernel with
    # prefill_query_start_loc ([B - num_decodes + 1] int32, their query starts from 0); None: no split.
    num_decodes: int
    prefill_query_start_loc: torch.Tensor | None
    workspace: DecodeWorkspace
    common: CommonAttentionMetadata | None = None     # the step as build_metadata got it


# The fused rotary + KV store + decode kernel only for decode steps of up to this many requests. H200, session 15
# (benchmarks/gpu_session15/default_ab.sh, 7B, fused on every decode step): latency 8x1024x1024 4.607 -> 4.50 s,
# bs1 257.7 -> 259.2 tok/s, but ShareGPT (decode steps of up to 256 requests) 11,287 -> 11,197 tok/s (-0.8%, both
# pairs). 16: where the skinny GEMM takes the QKV projection, after which the fused kernel's early start pays.
FUSED_DECODE_MAX_ROWS = 16


class TritonAttentionBackend(AttentionBackend):
    supports_full_cuda_graphs = True
    supports_piecewise_cuda_graphs = True
    supports_logits_soft_cap = True
    supports_sliding_window = True
    supports_attention_sinks = True

    def __init__(self, **shape_and_limits):
        super().__init__(**shape_and_limits)
        # Split-KV partials of the decode kernel, shared by all layers (they run one after another) and allocated
        # before any graph is captured, so every graph reuses the same buffers.
        self.workspace = DecodeWorkspace.allocate(self.max_num_seqs, self.num_heads, self.num_kv_heads,
                                                  self.head_dim, self.device)
        # The fused rotary decode launches each KV head's whole query group at once: not for groups that head dims
        # over 256 split into several launches (triton_attention.wide_head_chunks; DeepSeek's latent MLA cache).
        self.fuse_rope_decode = envs.PAGEDLLM_DECODE_ROPE_FUSED if triton_attention.wide_head_chunks(
            self.num_heads, self.num_kv_heads, self.head_dim) is None else 0

    def build_metadata(self, common: CommonAttentionMetadata) -> TritonAttentionMetadata:
        nd = common.num_decodes
        prefill_qsl = None
        if 0 < nd < common.num_reqs:
            if common.query_start_loc_cpu is not None:
                rest = common.query_start_loc_cpu[nd:].astype(np.int32) - np.int32(common.query_start_loc_cpu[nd])
                prefill_qsl = torch.from_numpy(rest).to(self.device, non_blocking=True)
            else:
                prefill_qsl = common.query_start_loc[nd:] - common.query_start_loc[nd]
        return TritonAttentionMetadata(
            query_start_loc=common.query_start_loc, seq_lens=common.seq_lens, block_tables=common.block_tables,
            max_query_len=common.max_query_len, num_decodes=nd, prefill_query_start_loc=prefill_qsl,
            workspace=self.workspace, common=common)

    def write_kv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                 slot_mapping: torch.Tensor, rotary: nn.Module | None = None,
                 positions: torch.Tensor | None = None) -> torch.Tensor:
        if rotary is not None:      # rotates q and k in place
            rotary_store_kv(positions, q, k, v, rotary.cos, rotary.sin, kv_cache[0], kv_cache[1], slot_mapping)
        else:
            triton_attention.store_kv(k, v, kv_cache[0], kv_cache[1], slot_mapping)
        return q

    def write_kv_and_attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                            slot_mapping: torch.Tensor, metadata: TritonAttentionMetadata, scale: float,
                            rotary: nn.Module | None = None, positions: torch.Tensor | None = None,
                            soft_cap: float = 0.0, window: int = 0, sinks: torch.Tensor | None = None) -> torch.Tensor:
        # A step of one new token for each of at most FUSED_DECODE_MAX_ROWS requests, with PAGEDLLM_DECODE_ROPE_FUSED
        # (1, 2, 3): the rotation and the cache write inside the decode kernel (one kernel a layer instead of two);
        # else the two calls.
        # (Not for a windowed layer: the fused kernel's prefetched first tiles take no window mask.)
        # M-RoPE models (Qwen2-VL) come here with one position per token only: rows whose (temporal, height, width)
        # positions differ (an image's) are rotated in the model and arrive with rotary None; every other row's three
        # positions are equal, which is this plain rotation at the position the runner gives (index + delta).
        if (self.fuse_rope_decode and rotary is not None and not window and metadata.max_query_len == 1
                and q.shape[0] == metadata.seq_lens.shape[0] and q.shape[0] <= FUSED_DECODE_MAX_ROWS):
            return triton_attention.decode_rope_attention(
                q, k, v, kv_cache[0], kv_cache[1], rotary.cos, rotary.sin, positions, slot_mapping,
                metadata.seq_lens, metadata.block_tables, scale, metadata.workspace,
                prefetch=self.fuse_rope_decode >= 2, new_in_regs=self.fuse_rope_decode == 3, soft_cap=soft_cap,
                sinks=sinks)
        return super().write_kv_and_attend(q, k, v, kv_cache, slot_mapping, metadata, scale, rotary, positions,
                                           soft_cap=soft_cap, window=window, sinks=sinks)

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, metadata: TritonAttentionMetadata, scale: float,
               out: torch.Tensor | None = None, soft_cap: float = 0.0, window: int = 0,
               sinks: torch.Tensor | None = None) -> torch.Tensor:
        return triton_attention.paged_attention(
            q, kv_cache[0], kv_cache[1], metadata.query_start_loc, metadata.seq_lens, metadata.block_tables, scale,
            metadata.max_query_len, workspace=metadata.workspace, out=out, num_decodes=metadata.num_decodes,
            prefill_query_start_loc=metadata.prefill_query_start_loc, soft_cap=soft_cap, window=window, sinks=sinks)

    def attend_decodes(self, q: torch.Tensor, kv_cache: torch.Tensor, metadata: TritonAttentionMetadata,
                       scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
        nd = metadata.num_decodes
        return triton_attention.decode_attention(q, kv_cache[0], kv_cache[1], metadata.seq_lens[:nd],
                                                 metadata.block_tables[:nd], scale, metadata.workspace, out=out)

    def varlen_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, scale: float, max_seqlen_q: int, max_seqlen_k: int,
                         cu_seqlens_q_cpu: list[int] | None = None, cu_seqlens_k_cpu: list[int] | None = None,
                         causal: bool = True, return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor,
                                                                                              torch.Tensor]:
        # The extend kernel over the given K / V read as a paged cache of one-token blocks: request b's key j is
        # block cu_seqlens_k[b] + j (a [B, max_seqlen_k] int32 table, built here). The kernel takes one head dim
        # for K, V and the output: V is zero-padded to K's and the padding's output cut (DeepSeek: 128 -> 192, so
        # the value tiles load 50% more; a kernel with its own V width would not). Not timed on a GPU yet.
        head_dim, v_dim = k.shape[-1], v.shape[-1]
        if v_dim < head_dim:
            v = torch.nn.functional.pad(v, (0, head_dim - v_dim))
        tables = cu_seqlens_k[:-1, None] + torch.arange(max(1, max_seqlen_k), dtype=torch.int32, device=q.device)
        out = q.new_empty(q.shape[0], q.shape[1], head_dim)
        lse = q.new_empty(q.shape[0], q.shape[1], dtype=torch.float32) if return_lse else None
        triton_attention.extend_attention(q, k.contiguous().unsqueeze(1), v.contiguous().unsqueeze(1), cu_seqlens_q,
                                          cu_seqlens_k[1:] - cu_seqlens_k[:-1], tables, scale, max_seqlen_q, out=out,
                                          causal=causal, lse=lse)
        return (out[..., :v_dim], lse) if return_lse else out[..., :v_dim]

    def warmup_batches(self) -> list[tuple[list[int], int]]:
        # Compile the other extend-kernel variants at start-up rather than inside the first timed requests (~1 s
        # each on a cold Triton cache; an H200 ShareGPT run lost 2 s to it): the row block follows the longest
        # query, mixed batches add a second pass for short requests, and send their one-token requests to the
        # decode kernel.
        batches = []
        for q in (2, 3, 5, 9, 17, 33, 65):
            batches.append(([q, 2], 0))
            batches.append(([1, q], 1))
        return batches
