"""The attention-backend interface: what the model runner, the attention layers and the CUDA-graph runners ask of
a backend.

One backend object per engine, built from the model's attention shape and the engine's limits. Each step the model
runner describes the batch once, backend-independently (``CommonAttentionMetadata``); the backend turns that into
its own metadata (``build_metadata``), which every attention layer of the step then hands back to ``write_kv`` /
``attend``. Layout of the paged KV cache (shared by all backends): one ``[2, num_blocks, block_size, num_kv_heads,
head_dim]`` tensor per layer (keys, values); see ``kernels/torch_attention.py`` for the metadata conventions.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pagedllm.kernels import torch_attention


@dataclass
class CommonAttentionMetadata:
    """One step's batch as every backend sees it, built by the model runner (or over a graph runner's static
    buffers). Requests are ordered with the one-new-token ones (decodes) first."""
    query_start_loc: torch.Tensor             # [B+1] int32, prefix sums of each request's new-token count
    seq_lens: torch.Tensor                    # [B] int32, context length incl. the new tokens (0: padding row)
    block_tables: torch.Tensor                # [B, max_blocks] int32 (unused tail entries arbitrary)
    slot_mapping: torch.Tensor                # [T] int64, cache slot of each new token (-1: padding, not stored)
    max_query_len: int
    max_seq_len: int
    num_decodes: int = 0                      # the first num_decodes requests have one new token each
    # Host copies, for backends that need the values without a device sync; None where the caller has none
    # (graph capture over device buffers).
    query_start_loc_cpu: np.ndarray | None = None
    seq_lens_cpu: np.ndarray | None = None
    block_tables_cpu: np.ndarray | None = None

    @property
    def num_reqs(self) -> int:
        return self.seq_lens.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.slot_mapping.shape[0]


class AttentionBackend(ABC):
    """Paged attention for one engine. Subclass it, then register the class by name
    (``pagedllm.attention.registry.register_attention_backend``) to make it selectable with
    ``attention_backend=<name>``."""

    # Decode-only batches replayed as one whole-model CUDA graph (worker/cuda_graphs.CudaGraphRunner): ``attend``
    # must then launch the same kernels, with no host sync, whatever the values in the static buffers.
    supports_full_cuda_graphs: bool = False
    # Steps with prompt tokens replayed as graphs between eager attention calls (PiecewiseGraphRunner): only
    # ``write_kv`` is captured; it must read nothing but its tensor arguments.
    supports_piecewise_cuda_graphs: bool = False
    # ``attend`` / ``write_kv_and_attend`` take ``soft_cap`` (Gemma 2's attention logit soft-capping) / ``window``
    # (a sliding attention window: a token sees itself and the window - 1 keys before it).
    supports_logits_soft_cap: bool = False
    supports_sliding_window: bool = False
    # ``attend`` / ``write_kv_and_attend`` take ``sinks`` (gpt-oss's attention sinks: a ``[num_heads]`` fp32 tensor of
    # learned logits, one per query head, that join each softmax's denominator and nothing else).
    supports_attention_sinks: bool = False

    def __init__(self, *, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int, max_num_seqs: int,
                 max_num_batched_tokens: int, dtype: torch.dtype, device: torch.device):
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.block_size = block_size
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.dtype, self.device = dtype, torch.device(device)

    @abstractmethod
    def build_metadata(self, common: CommonAttentionMetadata) -> Any:
        """This backend's metadata for one step, passed back to every ``write_kv`` / ``attend`` of the step. Its
        ``common`` attribute is ``common`` itself: layers that split the step by request (DeepSeek's MLA: decodes
        over the cache, prompts in another form) read the step's shape there."""

    @abstractmethod
    def write_kv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                 slot_mapping: torch.Tensor, rotary: nn.Module | None = None,
                 positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate ``q`` ``[T, Hq, D]`` and ``k`` ``[T, Hkv, D]`` by ``positions`` when ``rotary`` is given, store
        ``k`` and ``v`` in ``kv_cache`` (one layer's ``[2, num_blocks, block_size, Hkv, D]``) at ``slot_mapping``
        (-1: skip), and return the query to attend with (rotated; possibly ``q`` itself, rotated in place).
        ``rotary`` is the model's ``RotaryEmbedding``: ``rotary(positions, q, k) -> (q, k)``, and its fp32
        ``cos`` / ``sin`` tables ``[max_position, rotary_dim / 2]`` for backends that rotate in their own kernel."""

    @abstractmethod
    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, metadata: Any, scale: float,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of ``q`` ``[T, Hq, D]`` over each request's paged context (its new K/V already stored),
        ``[T, Hq, D]``; written into ``out`` when given (and ``out`` returned). A backend with
        ``supports_logits_soft_cap`` also takes ``soft_cap``: the scaled scores become ``cap * tanh(s / cap)``
        before the softmax; one with ``supports_sliding_window`` takes ``window``: keys more than ``window - 1``
        positions before a query are masked; one with ``supports_attention_sinks`` takes ``sinks`` ``[Hq]``: the
        softmax of a row of head ``h`` runs over its scores and ``sinks[h]``, whose probability is dropped (the layer
        passes each only when it is set)."""

    def attend_decodes(self, q: torch.Tensor, kv_cache: torch.Tensor, metadata: Any, scale: float,
                       out: torch.Tensor | None = None) -> torch.Tensor:
        """``attend`` for the step's first ``common.num_decodes`` requests only (one new token each, the first
        ``num_decodes`` rows of the step; ``q`` ``[num_decodes, Hq, D]``): DeepSeek's MLA attends its decodes over
        the latent cache and its prompt tokens through ``varlen_attention``."""
        raise NotImplementedError(f"{type(self).__name__} has no attend_decodes (DeepSeek MLA's steps that mix "
                                  f"decodes and prompts); run with PAGEDLLM_MLA_PREFILL=absorbed.")

    def varlen_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, scale: float, max_seqlen_q: int, max_seqlen_k: int,
                         cu_seqlens_q_cpu: list[int] | None = None, cu_seqlens_k_cpu: list[int] | None = None,
                         causal: bool = True, return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor,
                                                                                              torch.Tensor]:
        """Causal attention over keys and values given as tensors (no cache): ``q`` ``[Tq, Hq, D]``, ``k``
        ``[Tk, Hkv, D]``, ``v`` ``[Tk, Hkv, Dv]`` (``Dv`` may differ from ``D``), requests back to back as the int32
        prefix sums ``cu_seqlens_q`` / ``cu_seqlens_k`` ``[B + 1]`` give them. Request ``b``'s queries are the last
        of its keys: query ``i`` sits at key position ``len_k - len_q + i`` and sees keys ``0 ..`` that position
        (FlashAttention's varlen causal form). ``max_seqlen_*``: host upper bounds; ``*_cpu``: host copies of the
        prefix sums, when the caller has them. ``causal=False``: every query sees all its request's keys (any
        number, 0 included: output 0). Returns ``[Tq, Hq, Dv]``; with ``return_lse`` also each row's softmax
        log-sum-exp ``[Tq, Hq]`` fp32 (natural log; -inf: no key), for kernels/torch_attention.merge_attn_states.
        DeepSeek's MLA runs its prompt tokens here in the expanded form, a long cached context in chunks
        (non-causal, merged by LSE). Default: the torch reference (kernels/torch_attention.varlen_attention)."""
        return torch_attention.varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, scale, cu_seqlens_q_cpu,
                                                cu_seqlens_k_cpu, causal=causal, return_lse=return_lse)

    def write_kv_and_attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                            slot_mapping: torch.Tensor, metadata: Any, scale: float,
                            rotary: nn.Module | None = None, positions: torch.Tensor | None = None,
                            **extras: float) -> torch.Tensor:
        """``write_kv`` then ``attend`` (a layer's whole attention when nothing runs between the two, i.e. outside
        piecewise CUDA-graph capture); a backend may do both in one kernel. Default: the two calls."""
        q = self.write_kv(q, k, v, kv_cache, slot_mapping, rotary, positions)
        return self.attend(q, kv_cache, metadata, scale, **extras)

    # ---- CUDA graphs (worker/cuda_graphs.py) ------------------------------------------------------------------
    def build_capture_metadata(self, common: CommonAttentionMetadata) -> Any:
        """Metadata for capturing a graph over a graph runner's static device buffers (``common`` has no host
        copies; each replay refills the buffers in place). Default: ``build_metadata``."""
        return self.build_metadata(common)

    def prepare_replay(self, metadata: Any, common: CommonAttentionMetadata) -> None:
        """Called before each replay of a whole-model graph captured with ``metadata``, once the static buffers
        hold the step (``common``: those buffers, with host copies of the step's padded values; padding rows have
        seq_len 0). For backends that must update host-side plans; default: nothing."""

    # ---- start-up ---------------------------------------------------------------------------------------------
    def warmup_batches(self) -> list[tuple[list[int], int]]:
        """Extra batches the model runner runs once at start-up, so kernel variants compile before the first timed
        requests: ``(prompt lengths, num_decodes)`` each (the first ``num_decodes`` lengths are 1, run as decodes).
        Default: none."""
        return []
