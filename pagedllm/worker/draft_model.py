"""speculative_config method "draft_model": a small model that shares the target's tokenizer proposes the drafts.

The draft keeps its own KV cache over the same block ids as the target's (one tensor per draft layer, as many blocks),
so the scheduler's block tables and slots serve both. Each step, before the target's forward pass:

1. one forward of the draft over every scheduled request's known tokens (prompt chunks, and the last token of a
   request that speculates), so its cache holds what the target's holds; a speculating request's last row gives
   its first draft (greedy: the argmax, vLLM's default ``draft_sample_method``);
2. then one single-token forward per further draft, each draft fed back at the next position, and one more that
   only writes the last draft's K/V (it may be accepted, and the next step starts after it).

Drafts the target rejects leave K/V in the draft's cache past the request's progress; later steps write over them.
The passes run eagerly (no CUDA graphs).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import numpy as np
import torch

from pagedllm.attention.registry import create_attention_backend
from pagedllm.config import EngineConfig, attention_shape
from pagedllm.distributed import get_tp_rank, get_tp_size, kv_head_range
from pagedllm.model.loader import load_model
from pagedllm.model.layers.sampler import to_device
from pagedllm.worker.request_state import CachedRequestState

logger = logging.getLogger(__name__)


class DraftModel:
    def __init__(self, config: EngineConfig, kv_cache_dtype: torch.dtype):
        hf = config.draft_model.hf_config
        self.num_layers = hf.num_hidden_layers
        # Tensor parallel: this rank's heads of the draft, as the target's (ModelRunner).
        tp_rank, tp_size = get_tp_rank(), get_tp_size()
        heads, kv_heads, self.head_dim = attention_shape(hf)
        num_heads = heads // tp_size
        _, self.num_kv_heads = kv_head_range(kv_heads, tp_rank, tp_size)
        self.block_size = config.block_size
        self.kv_cache_dtype = kv_cache_dtype
        self.device = config.device
        self.attn_backend = create_attention_backend(
            config.attention_backend, num_heads=num_heads, num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim, block_size=config.block_size, max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens, dtype=config.dtype, device=config.device)
        # The target's settings (dtype, device, load format) over the draft's files; dense weights.
        self.model = load_model(dataclasses.replace(config, model=config.draft_model, quant_config=None))
        logger.info("speculative_config: draft model %s (%d layers) proposes up to %d tokens per step; its passes "
                    "run eagerly (no CUDA graphs).", config.draft_model.model_dir, self.num_layers,
                    config.args.speculative_config.num_speculative_tokens)
        self.kv_caches: list[torch.Tensor] = []
        self.swap_space = None       # swap_space: the draft's blocks of swapped-out requests (the runner makes it)

    @property
    def bytes_per_block(self) -> int:
        elem = torch.tensor([], dtype=self.kv_cache_dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem

    def allocate_kv_cache(self, num_blocks: int, zeros: Callable) -> None:
        shape = (2, num_blocks, self.block_size, self.num_kv_heads, self.head_dim)
        self.kv_caches = [zeros(shape) for _ in range(self.num_layers)]

    @torch.inference_mode()
    def propose(self, items: list[tuple[CachedRequestState, int]], num_drafts: dict[str, int],
                make_batch: Callable) -> dict[str, list[int]]:
        """The drafts of the requests in ``num_drafts`` (req id -> how many), from the requests' states before this
        step (``num_computed_tokens`` not yet advanced). ``make_batch``: the runner's ForwardBatch builder."""
        # Pass 1: one-token inputs first (the attention backends run them through their decode path).
        rows = []
        for st, n in items:
            c = st.num_computed_tokens
            length = 1 if st.req_id in num_drafts else n
            rows.append((st, c, length))
        rows.sort(key=lambda row: row[2] != 1)
        first = [(st, st.token_ids[c:c + length], c) for st, c, length in rows]
        last_rows = self._forward(first, make_batch, want=[st.req_id in num_drafts for st, _, _ in first])
        drafts = {st.req_id: [tok] for (st, _, _), tok in zip(first, last_rows) if tok is not None}
        # Passes 2 ..: each draft fed back at the next position; the last pass only writes the last draft's K/V.
        for j in range(1, max(num_drafts.values(), default=0) + 1):
            batch = [(st, [drafts[st.req_id][-1]], st.num_computed_tokens + j)
                     for st, _, _ in first if st.req_id in num_drafts and num_drafts[st.req_id] >= j]
            if not batch:
                break
            want = [num_drafts[st.req_id] > j for st, _, _ in batch]
            for (st, _, _), tok in zip(batch, self._forward(batch, make_batch, want)):
                if tok is not None:
                    drafts[st.req_id].append(tok)
        return drafts

    def _forward(self, rows: list[tuple[CachedRequestState, list[int], int]], make_batch: Callable,
                 want: list[bool]) -> list[int | None]:
        """One forward of the draft over ``rows`` (state, input tokens, first position); the argmax after each row's
        last token where ``want``, else None."""
        bs = self.block_size
        lens = np.array([len(tokens) for _, tokens, _ in rows], dtype=np.int64)
        starts = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum(lens, out=starts[1:])
        input_ids = np.concatenate([np.asarray(tokens, dtype=np.int64) for _, tokens, _ in rows])
        positions = np.concatenate([np.arange(p, p + len(tokens)) for _, tokens, p in rows])
        seq_lens = np.array([p + len(tokens) for _, tokens, p in rows], dtype=np.int32)
        width = max(-(-int(s) // bs) for s in seq_lens)
        tables = np.zeros((len(rows), width), dtype=np.int32)
        for i, (st, _, _) in enumerate(rows):
            ids = st.block_ids[:width]
            tables[i, :len(ids)] = ids
        req_index = np.repeat(np.arange(len(rows)), lens)
        slots = tables[req_index, positions // bs].astype(np.int64) * bs + positions % bs
        num_decodes = int((lens == 1).sum())
        batch = make_batch(input_ids, positions, slots, starts, seq_lens, tables, self.kv_caches, num_decodes,
                           attn_backend=self.attn_backend)
        hidden = self.model(batch.input_ids, batch.positions, batch)
        picked = [i for i, w in enumerate(want) if w]
        out: list[int | None] = [None] * len(rows)
        if picked:
            index = to_device([int(starts[i + 1]) - 1 for i in picked], self.device)
            tokens = self.model.compute_logits(hidden[index]).argmax(dim=-1).tolist()
            for i, tok in zip(picked, tokens):
                out[i] = tok
        return out
