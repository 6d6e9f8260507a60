"""CUDA graphs for decode batches.

A decode step of a small model is dominated by kernel-launch overhead (hundreds of launches per step); replaying a
captured graph removes it. Graphs are captured for bucketed batch sizes over static input buffers; a step with
``n`` decode requests copies its inputs into the buffers of the smallest bucket ``>= n`` (padding rows get
``slot -1`` and ``seq_len 0``: nothing is stored, attention returns zeros) and replays that graph.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from pagedllm.worker.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16)) + list(range(288, 1025, 32))
    sizes = [s for s in sizes if s <= max_num_seqs]
    if not sizes or sizes[-1] < max_num_seqs <= 1024:
        sizes.append(max_num_seqs)
    return sizes


class CudaGraphRunner:
    def __init__(self, model, kv_caches: list[torch.Tensor], max_batch: int, max_blocks_per_seq: int,
                 workspace, device: torch.device):
        self.model = model
        self.kv_caches = kv_caches
        self.sizes = graph_batch_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        self.workspace = workspace
        self.device = device
        n, w = self.max_batch, max_blocks_per_seq
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=device)
        self.seq_lens = torch.zeros(n, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((n, w), dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        # Host staging buffers (pinned) so each replay is one async copy per input. Two sets, used in turn: with
        # async scheduling the host fills step N+1's inputs while step N's copies may still wait in the stream
        # (step N-1's set is free by then: the host has waited for step N-1's tokens).
        self.staging = [_StagingBuffers(n, w) for _ in range(2)]
        self.num_runs = 0
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None

    def _batch(self, bs: int) -> ForwardBatch:
        return ForwardBatch(
            input_ids=self.input_ids[:bs], positions=self.positions[:bs], slot_mapping=self.slot_mapping[:bs],
            query_start_loc=self.query_start_loc[:bs + 1], seq_lens=self.seq_lens[:bs],
            block_tables=self.block_tables[:bs], max_query_len=1, max_seq_len=0, kv_caches=self.kv_caches,
            attn_workspace=self.workspace)

    @torch.inference_mode()
    def capture(self) -> None:
        t0 = time.perf_counter()
        # Largest first, so the smaller graphs fit in the memory pool the largest one reserved.
        for bs in reversed(self.sizes):
            batch = self._batch(bs)
            for _ in range(2):   # warm up (Triton autotune/compile, cuBLAS handles) outside the capture
                self.model(batch.input_ids, batch.positions, batch)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.model(batch.input_ids, batch.positions, batch)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs], self.outputs[bs] = graph, out
        torch.cuda.synchronize()
        logger.info("Captured %d CUDA graphs (batch sizes %s..%s) in %.1f s", len(self.graphs), self.sizes[0],
                    self.sizes[-1], time.perf_counter() - t0)

    def can_run(self, num_reqs: int) -> bool:
        return num_reqs <= self.max_batch and bool(self.graphs)

    def run(self, input_ids: np.ndarray, positions: np.ndarray, slots: np.ndarray, seq_lens: np.ndarray,
            tables: np.ndarray, fixup: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Replay the graph of the smallest bucket holding ``n`` decode rows. ``fixup`` = (rows, tokens): input
        tokens that are still on the device (async scheduling), written over the staged ones."""
        n = len(input_ids)
        bs = next(s for s in self.sizes if s >= n)
        width = tables.shape[1]
        host = self.staging[self.num_runs % 2]
        self.num_runs += 1
        host.ids[:n] = torch.from_numpy(input_ids)
        host.pos[:n] = torch.from_numpy(positions)
        host.slots[:n] = torch.from_numpy(slots)
        host.slots[n:bs] = -1
        host.lens[:n] = torch.from_numpy(seq_lens)
        host.lens[n:bs] = 0
        host.tables[:n, :width] = torch.from_numpy(tables)
        self.input_ids[:bs].copy_(host.ids[:bs], non_blocking=True)
        self.positions[:bs].copy_(host.pos[:bs], non_blocking=True)
        self.slot_mapping[:bs].copy_(host.slots[:bs], non_blocking=True)
        self.seq_lens[:bs].copy_(host.lens[:bs], non_blocking=True)
        self.block_tables[:n, :width].copy_(host.tables[:n, :width], non_blocking=True)
        if fixup is not None:
            self.input_ids[fixup[0]] = fixup[1]
        self.graphs[bs].replay()
        return self.outputs[bs][:n]


class _StagingBuffers:
    def __init__(self, n: int, width: int):
        self.ids = torch.zeros(n, dtype=torch.long).pin_memory()
        self.pos = torch.zeros(n, dtype=torch.long).pin_memory()
        self.slots = torch.zeros(n, dtype=torch.long).pin_memory()
        self.lens = torch.zeros(n, dtype=torch.int32).pin_memory()
        self.tables = torch.zeros((n, width), dtype=torch.int32).pin_memory()
