"""CUDA graphs: whole-model graphs for decode batches, piecewise graphs for steps with prompt tokens.

A decode step of a small model is dominated by kernel-launch overhead (hundreds of launches per step); replaying a
captured graph removes it. Graphs are captured for bucketed batch sizes over static input buffers; a step with
``n`` decode requests copies its inputs into the buffers of the smallest bucket ``>= n`` (padding rows get
``slot -1`` and ``seq_len 0``: nothing is stored, attention returns zeros) and replays that graph.

Steps that carry prompt tokens cannot replay one graph (the attention's grids follow the batch's composition), so
``PiecewiseGraphRunner`` captures everything between two attention calls and runs the attention eagerly in between.

LoRA (enable_lora): the adapters' deltas are captured with the rest. Their weights live in fixed slots that adding
an adapter overwrites in place, and each token's slot comes from static buffers (a ``[tokens, max_loras]`` mask and
``[tokens]`` slot ids) that a step fills before its replay (the base model: zeros, -1), so one graph serves every
mix of adapters. With ``cudagraph_specialize_lora`` (vLLM's compilation-config key, on by default as there) every
size is captured twice, with and without the deltas, and a step in which no request runs an adapter replays the
graph without them: base-model traffic on a LoRA engine runs at the base model's speed.

Tensor parallel: the row-parallel all-reduces (NCCL) are captured with the rest; the model runner runs one eager
all-reduce before capturing (``warm_up_tp_communicator``), and every rank replays the same graph each step (the
choice follows the step, which every rank has). Pipeline parallel: a stage after the first reads the previous
stage's hidden states and residual from static buffers (``StageInputs``), filled before each replay; a stage before
the last returns its output (``IntermediateTensors``) from the graph's static outputs. The stage-to-stage
send/recv stays outside the graphs, in the model runner.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, TypeVar

import numpy as np
import torch

from pagedllm.attention.backends.base import AttentionBackend, CommonAttentionMetadata
from pagedllm.attention.forward_batch import ForwardBatch
from pagedllm.gc_heap import collections_paused
from pagedllm.lora.layers import LoRAStep
from pagedllm.model.layers.pipeline import IntermediateTensors

logger = logging.getLogger(__name__)
T = TypeVar("T")


def graph_batch_sizes(max_num_seqs: int, sizes: list[int] | None = None, largest: int | None = None) -> list[int]:
    """The decode graphs' batch sizes: ``sizes`` (cudagraph_capture_sizes) up to ``max_num_seqs``; else our list
    up to ``max_num_seqs`` and ``largest`` (max_cudagraph_capture_size), that limit included."""
    if sizes is not None:
        return sorted(s for s in set(sizes) if s <= max_num_seqs)
    limit = max_num_seqs if largest is None else min(max_num_seqs, largest)
    found = [s for s in [1, 2, 4, 8] + list(range(16, 257, 16)) + list(range(288, 1025, 32)) if s <= limit]
    if not found or found[-1] < limit <= 1024:
        found.append(limit)
    return found


class LoRAStepBuffer:
    """enable_lora: the static adapter selection the graphs read (pagedllm/lora/layers.py LoRAStep: a [rows,
    max_loras] mask and [rows] slot ids); a step writes its own into the first rows and marks the padding rows as
    the base model (zeros, -1)."""

    def __init__(self, rows: int, max_loras: int, dtype: torch.dtype, device: torch.device):
        self.mask = torch.zeros(rows, max_loras, dtype=dtype, device=device)
        self.slots = torch.full((rows,), -1, dtype=torch.int32, device=device)

    def view(self, rows: int) -> LoRAStep:
        return LoRAStep(self.mask[:rows], self.slots[:rows])

    def fill(self, step: LoRAStep | None, n: int, bucket: int) -> None:
        """``step``: the step's selection for its ``n`` tokens, or None when no request of the step runs an adapter."""
        if step is None:
            n = 0
        else:
            self.mask[:n].copy_(step.mask)
            self.slots[:n].copy_(step.slots)
        if n < bucket:
            self.mask[n:bucket].zero_()
            self.slots[n:bucket].fill_(-1)


class StageInputs:
    """Pipeline parallel, a stage after the first: static buffers for the previous stage's hidden states and
    residual, ``rows`` tokens at most, that the captured graphs read."""

    def __init__(self, rows: int, hidden_size: int, dtype: torch.dtype, device: torch.device):
        self.hidden = torch.zeros(rows, hidden_size, dtype=dtype, device=device)
        self.residual = torch.zeros(rows, hidden_size, dtype=dtype, device=device)

    def args(self, n: int) -> tuple[IntermediateTensors]:
        """The model's extra argument for a graph of ``n`` rows."""
        return (IntermediateTensors(self.hidden[:n], self.residual[:n]),)

    def fill(self, received: IntermediateTensors) -> None:
        n = received.hidden.shape[0]
        self.hidden[:n].copy_(received.hidden)
        self.residual[:n].copy_(received.residual)


def _first_rows(out, n: int):
    """The first ``n`` rows of a graph's static output: hidden states, or a non-last pipeline stage's
    ``IntermediateTensors``."""
    if isinstance(out, IntermediateTensors):
        return IntermediateTensors(out.hidden[:n], out.residual[:n])
    return out[:n]


class CudaGraphRunner:
    def __init__(self, model, kv_caches: list[torch.Tensor], sizes: list[int], max_blocks_per_seq: int,
                 attn_backend: AttentionBackend, device: torch.device,
                 stage_input: tuple[int, torch.dtype] | None = None, lora: tuple[int, torch.dtype] | None = None,
                 specialize_lora: bool = True):
        """``sizes``: the batch sizes to capture, ascending (``graph_batch_sizes``). ``stage_input``: (hidden size,
        dtype) on a pipeline stage after the first (its input comes from the previous stage), else None.
        ``lora``: (max_loras, the adapters' dtype) with enable_lora, else None; ``specialize_lora``: with ``lora``,
        also capture each size without the deltas, for steps without adapters."""
        self.model = model
        self.kv_caches = kv_caches
        self.sizes = sizes
        self.max_batch = self.sizes[-1]
        self.attn_backend = attn_backend
        self.device = device
        n, w = self.max_batch, max_blocks_per_seq
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=device)
        self.seq_lens = torch.zeros(n, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((n, w), dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.query_start_loc_cpu = np.arange(n + 1, dtype=np.int32)
        self.stage_inputs = None if stage_input is None else StageInputs(n, *stage_input, device)
        self.lora_step = None if lora is None else LoRAStepBuffer(n, *lora, device)
        self.lora_variants = _lora_variants(lora is not None, specialize_lora)
        # Host staging buffers (pinned) so each replay is one async copy per input. Two sets, used in turn: with
        # async scheduling the host fills step N+1's inputs while step N's copies may still wait in the stream
        # (step N-1's set is free by then: the host has waited for step N-1's tokens).
        self.staging = [_StagingBuffers(n, w) for _ in range(2)]
        self.num_runs = 0
        self.replays = {variant: 0 for variant in self.lora_variants}    # by "with the LoRA deltas"
        # Keyed by (batch size, whether the graph adds the LoRA deltas).
        self.graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, bool], torch.Tensor] = {}
        self.metadata: dict[int, object] = {}     # the attention metadata each graph was captured with
        # The default prepare_replay does nothing: then skip building its argument on the decode hot path.
        self.prepares_replay = type(attn_backend).prepare_replay is not AttentionBackend.prepare_replay
        self.pool = None

    def _common(self, bs: int, host: _StagingBuffers | None = None, max_seq_len: int = 0) -> CommonAttentionMetadata:
        """The static buffers' first ``bs`` rows (``bs`` one-token requests), with the host copies of a replay's
        values when ``host`` is given."""
        return CommonAttentionMetadata(
            query_start_loc=self.query_start_loc[:bs + 1], seq_lens=self.seq_lens[:bs],
            block_tables=self.block_tables[:bs], slot_mapping=self.slot_mapping[:bs], max_query_len=1,
            max_seq_len=max_seq_len, num_decodes=bs,
            query_start_loc_cpu=None if host is None else self.query_start_loc_cpu[:bs + 1],
            seq_lens_cpu=None if host is None else host.lens[:bs].numpy(),
            block_tables_cpu=None if host is None else host.tables[:bs].numpy())

    def _batch(self, bs: int, with_lora: bool) -> ForwardBatch:
        if bs not in self.metadata:
            self.metadata[bs] = self.attn_backend.build_capture_metadata(self._common(bs))
        return ForwardBatch(
            input_ids=self.input_ids[:bs], positions=self.positions[:bs], slot_mapping=self.slot_mapping[:bs],
            kv_caches=self.kv_caches, attn_backend=self.attn_backend, attn_metadata=self.metadata[bs],
            lora_step=self.lora_step.view(bs) if with_lora else None)

    @torch.inference_mode()
    def capture(self) -> None:
        t0 = time.perf_counter()
        warm = 0.0
        ways: list[str] = []
        stream = torch.cuda.Stream()
        # Largest first, so the smaller graphs fit in the memory pool the largest one reserved.
        for bs in reversed(self.sizes):
            stage_args = () if self.stage_inputs is None else self.stage_inputs.args(bs)
            for with_lora in self.lora_variants:
                batch = self._batch(bs, with_lora)

                def forward():
                    return self.model(batch.input_ids, batch.positions, batch, *stage_args)

                def capture():
                    graph = torch.cuda.CUDAGraph()
                    with _capturing(graph, self.pool, stream):
                        out = forward()
                    if self.pool is None:
                        self.pool = graph.pool()
                    return graph, out

                (graph, out), seconds, way = capture_after_warm_up(capture, forward,
                                                                   warm_first=bs == self.sizes[-1])
                warm += seconds
                ways.append(way)
                self.graphs[bs, with_lora], self.outputs[bs, with_lora] = graph, out
        torch.cuda.synchronize()
        took = time.perf_counter() - t0
        logger.info("Captured %d CUDA graphs (batch sizes %s..%s) in %.1f s (warm-up forwards %.1f s, capture "
                    "%.1f s; %s)%s", len(self.graphs), self.sizes[0], self.sizes[-1], took, warm, took - warm,
                    _capture_note(ways),
                    ", each size with and without the LoRA deltas" if len(self.lora_variants) == 2 else "")

    def captured_sizes(self) -> list[int]:
        """The batch sizes that have a graph (each with one or two LoRA variants)."""
        return sorted({bs for bs, _ in self.graphs})

    def can_run(self, num_reqs: int) -> bool:
        return num_reqs <= self.max_batch and bool(self.graphs)

    def run(self, input_ids: np.ndarray, positions: np.ndarray, slots: np.ndarray, seq_lens: np.ndarray,
            tables: np.ndarray, fixup: tuple[torch.Tensor, torch.Tensor] | None = None,
            received: IntermediateTensors | None = None, lora_step: LoRAStep | None = None):
        """Replay the graph of the smallest bucket holding ``n`` decode rows. ``fixup`` = (rows, tokens): input
        tokens that are still on the device (async scheduling), written over the staged ones. ``received``: the
        previous pipeline stage's output (a stage after the first). ``lora_step``: the step's adapter selection
        (enable_lora; None: no adapter in the step). Returns the hidden states, or a non-last stage's
        ``IntermediateTensors``."""
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
        if received is not None:
            self.stage_inputs.fill(received)
        key = (bs, _with_lora(self.lora_variants, lora_step))
        self.replays[key[1]] += 1
        if key[1]:
            self.lora_step.fill(lora_step, n, bs)
        if self.prepares_replay:
            self.attn_backend.prepare_replay(self.metadata[bs], self._common(bs, host, int(seq_lens.max())))
        self.graphs[key].replay()
        return _first_rows(self.outputs[key], n)


def _lora_variants(lora: bool, specialize: bool) -> tuple[bool, ...]:
    """Whether each captured variant of a size adds the LoRA deltas: both with ``specialize`` (with first)."""
    return (True, False) if lora and specialize else (lora,)


def _with_lora(variants: tuple[bool, ...], lora_step: LoRAStep | None) -> bool:
    """The variant a step replays: without the deltas when it has no adapter and that variant was captured."""
    return variants[0] and (lora_step is not None or len(variants) == 1)


@contextlib.contextmanager
def _capturing(graph: torch.cuda.CUDAGraph, pool, stream: torch.cuda.Stream):
    """Capture the work issued inside into ``graph`` (sharing ``pool``, the memory pool of the graphs captured
    before), on the side stream ``stream`` as a capture must be. Not ``torch.cuda.graph``: before every capture that
    one empties the caching allocator's free blocks and the pinned-host cache (and in some torch versions runs a
    full ``gc.collect()``), so the next size's warm-up forwards allocate from the driver again; with 40-odd decode
    sizes and ~400,000 live objects in an engine process that is paid 40-odd times."""
    stream.wait_stream(torch.cuda.current_stream())
    # No Python garbage collection while a graph is being captured. A collection there may free unrelated garbage
    # whose finalizers call CUDA, e.g. the CUDA graphs of an engine the program dropped before building this one
    # (``llm = LLM(a); del llm; llm = LLM(b)``): destroying a graph is not permitted during a capture, and it
    # invalidated the capture (seen on an H100 in session 25: "operation failed due to a previous error during
    # capture" in the second engine of a test). The garbage is collected after the capture instead.
    with torch.cuda.stream(stream), collections_paused():
        graph.capture_begin(pool=pool)
        try:
            yield
        finally:
            graph.capture_end()
    torch.cuda.current_stream().wait_stream(stream)


def capture_after_warm_up(capture: Callable[[], T], warm_up: Callable[[], None],
                          warm_first: bool) -> tuple[T, float, str]:
    """``capture()`` a graph (or a piecewise set), with the warm-up forwards ``warm_up()`` before it only where they
    are needed; returns what ``capture`` returned, the seconds spent warming up, and how the capture went
    ("warmed": warm-up first; "direct"; "again": captured again after a warm-up).

    The warm-up forwards before a capture build any Triton variant the capture would meet (a build or a kernel's first
    load must not happen inside it) and run the size's lazy set-up once. Start-up has built every variant the graphs'
    sizes need (the memory profile's warm-up covers each row bucket of the decode kernels), so they are repeated only
    for the first capture of a loop (``warm_first``: the capture stream's and the libraries' own set-up), or for
    every size with ``PAGEDLLM_CAPTURE_WARMUP_EACH=1`` (an A/B switch). The others capture under
    ``parallel_compile.unbuilt_variants_skipped``: a launch of a variant not built yet is skipped and recorded, and
    such a capture is dropped, warmed up and made again, so a missed variant costs a capture and never a wrong graph.
    Two warm-up forwards a size were 2.8 s of the 44 decode graphs' 4.0 s in an H100 cold start; without them the
    7B's whole CUDA-graph phase took 1.7-2.3 s instead of 4.0-5.1, none captured again (docs/perf.md, session 37)."""
    from pagedllm import envs
    from pagedllm.kernels.parallel_compile import unbuilt_variants_skipped

    def warmed() -> float:
        t = time.perf_counter()
        for _ in range(2):
            warm_up()
        torch.cuda.synchronize()
        return time.perf_counter() - t

    if warm_first or envs.PAGEDLLM_CAPTURE_WARMUP_EACH:
        seconds = warmed()
        return capture(), seconds, "warmed"
    with unbuilt_variants_skipped() as missed:
        if missed is None:            # a Triton without the hook: nothing would catch a variant built in the capture
            seconds = warmed()
            return capture(), seconds, "warmed"
        result = capture()
    if not missed:
        return result, 0.0, "direct"
    logger.debug("A CUDA-graph capture met Triton variants not built yet (%s): warming up and capturing again",
                 ", ".join(sorted(set(missed))))
    del result                        # a graph without those kernels: dropped (its memory goes back to the pool)
    seconds = warmed()
    return capture(), seconds, "again"


def _capture_note(ways: list[str]) -> str:
    """The capture log line's account of warm-ups: how many sizes warmed up first, how many were captured again."""
    again = ways.count("again")
    note = f"{ways.count('warmed')} warmed up first"
    return note + (f", {again} captured again after a kernel build" if again else "")


class _StagingBuffers:
    def __init__(self, n: int, width: int):
        self.ids = torch.zeros(n, dtype=torch.long).pin_memory()
        self.pos = torch.zeros(n, dtype=torch.long).pin_memory()
        self.slots = torch.zeros(n, dtype=torch.long).pin_memory()
        self.lens = torch.zeros(n, dtype=torch.int32).pin_memory()
        self.tables = torch.zeros((n, width), dtype=torch.int32).pin_memory()


# ---- piecewise graphs for mixed batches ------------------------------------------------------------------------------
def piecewise_token_sizes(max_tokens: int, cap: int = 512, given: list[int] | None = None) -> list[int]:
    """Token buckets of the piecewise graphs: ``given`` (cudagraph_capture_sizes) up to ``max_tokens``, else ours up
    to ``min(max_tokens, cap)``: fine steps, since a step pays for its padding rows in every GEMM (with 9 coarse
    sizes, 16..512, the H200 1.5B ShareGPT run was slower with the graphs than without); above 512 the padding is
    at most 1/8 of the step."""
    if given is not None:
        return sorted(s for s in set(given) if s <= max_tokens)
    sizes = (list(range(8, 129, 8)) + list(range(144, 257, 16)) + list(range(288, 513, 32))
             + list(range(576, 1025, 64)) + list(range(1152, 2049, 128)) + list(range(2304, 4097, 256))
             + list(range(4608, 16385, 512)))
    return [s for s in sizes if s <= min(max_tokens, cap)]


class _SkipAttention:
    """Warm-up stand-in for the attention (compiles and initialises everything else before capture)."""

    @staticmethod
    def attention(layer, q: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(q)


def _borrowed(t: torch.Tensor) -> torch.Tensor:
    """A tensor over ``t``'s device memory (same shape, strides and dtype) that does not keep that memory allocated:
    built through the CUDA array interface, whose tensors reference the interface object, not ``t``'s storage
    (what vLLM's ``weak_ref_tensor`` op does in C++). Once ``t`` is gone its blocks go back to the graphs' pool."""
    codes = {1: "|u1", 2: "<i2", 4: "<i4", 8: "<i8"}        # same-size integers: the array interface has no bf16

    class _View:
        __cuda_array_interface__ = {"shape": tuple(t.shape), "typestr": codes[t.element_size()],
                                    "strides": tuple(s * t.element_size() for s in t.stride()),
                                    "data": (t.data_ptr(), False), "version": 2}   # no stream: no synchronisation

    return torch.as_tensor(_View(), device=t.device).view(t.dtype)


class _GraphSplitter:
    """Capture-time ``ForwardBatch.attn_breaker``: ends the graph being captured where a layer would attend, keeps
    that layer's query and a static output for it, and starts capturing the next graph.

    ``borrow`` (``PAGEDLLM_PIECEWISE_SHARED_BUFFERS``): the query and output are kept as borrowed views
    (``_borrowed``), so their blocks return to the pool once this size's forward drops them, and the next size's
    capture reuses them, as the hidden states between the graphs already are. Safe because a step replays one
    size's graphs in capture order: a graph that later reuses a block of an earlier graph's query or output (this
    size's next graphs, or another size's) runs only after the attention has read that query and its next graph has
    read that output. Without it each size keeps its own, and the pool grows with the sum of the sizes."""

    def __init__(self, pool, borrow: bool = False):
        self.pool = pool
        self.borrow = borrow
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.attention_calls: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = []
        self._current: torch.cuda.CUDAGraph | None = None

    def begin(self) -> None:
        self._current = torch.cuda.CUDAGraph()
        self._current.capture_begin(pool=self.pool)
        if self.pool is None:
            self.pool = self._current.pool()

    def end(self) -> None:
        self._current.capture_end()
        self.graphs.append(self._current)
        self._current = None

    def attention(self, layer, q: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(q)      # in the graphs' pool, alive as long as this splitter (unless borrowed)
        self.end()
        self.attention_calls.append((layer, _borrowed(q), _borrowed(out)) if self.borrow else (layer, q, out))
        self.begin()
        return out


class PiecewiseGraphRunner:
    """CUDA graphs for steps that carry prompt tokens (mixed prefill + decode, or prefill alone) of at most
    ``max(sizes)`` tokens.

    Such a step runs eagerly otherwise: ~250 Python-launched kernels and library calls for a 28-layer model cost
    ~8 ms of host time (py-spy of the served Qwen2.5-7B run, H200), more than the GPU needs for a few hundred tokens.
    Per token bucket, everything except the attention itself (whose grids and kernels follow the batch's
    composition) is captured as one graph per stretch between two attention calls: embedding to the first
    layer's Q/K/V, rotation and KV write; then o_proj, MLP and the next layer's norm, Q/K/V, rotation and KV write;
    ...; the last layer's o_proj, MLP and the final norm. A replay copies the step's token ids, positions and slots
    into static buffers (padding: slot -1, nothing stored), then replays the graphs in order with the step's
    attention run eagerly between them, from the layer's static query into its static output. Padding rows carry
    garbage through the row-wise ops; only the real rows are returned. vLLM's piecewise mode does the same through
    torch.compile; here the split is taken at capture time by the attention layers themselves
    (``ForwardBatch.attn_breaker``)."""

    def __init__(self, model, kv_caches: list[torch.Tensor], sizes: list[int], attn_backend: AttentionBackend,
                 device: torch.device, pool=None, stage_input: tuple[int, torch.dtype] | None = None,
                 lora: tuple[int, torch.dtype] | None = None, specialize_lora: bool = True):
        """``sizes``: the step sizes (tokens) to capture, ascending, maybe none (``piecewise_token_sizes``).
        ``stage_input``, ``lora`` and ``specialize_lora``: as ``CudaGraphRunner``'s."""
        self.model = model
        self.kv_caches = kv_caches
        self.sizes = sizes
        self.attn_backend = attn_backend
        self.device = device
        self.pool = pool
        n = self.sizes[-1] if self.sizes else 0
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=device)
        self.stage_inputs = None if stage_input is None else StageInputs(n, *stage_input, device)
        self.lora_step = None if lora is None else LoRAStepBuffer(n, *lora, device)
        self.lora_variants = _lora_variants(lora is not None, specialize_lora)
        # Keyed by (tokens, whether the graphs add the LoRA deltas).
        self.splitters: dict[tuple[int, bool], _GraphSplitter] = {}
        self.outputs: dict[tuple[int, bool], torch.Tensor] = {}

    def _batch(self, t: int, breaker, with_lora: bool) -> ForwardBatch:
        # Metadata of one t-token prompt: only the graphs' own inputs matter (the attention never runs in them).
        qsl = torch.tensor([0, t], dtype=torch.int32, device=self.device)
        common = CommonAttentionMetadata(
            query_start_loc=qsl, seq_lens=qsl[1:], block_tables=torch.zeros((1, 1), dtype=torch.int32,
                                                                            device=self.device),
            slot_mapping=self.slot_mapping[:t], max_query_len=t, max_seq_len=t)
        return ForwardBatch(
            input_ids=self.input_ids[:t], positions=self.positions[:t], slot_mapping=self.slot_mapping[:t],
            kv_caches=self.kv_caches, attn_backend=self.attn_backend,
            attn_metadata=self.attn_backend.build_capture_metadata(common), attn_breaker=breaker,
            lora_step=self.lora_step.view(t) if with_lora else None)

    @torch.inference_mode()
    def capture(self) -> None:
        if not self.sizes:
            return
        t0 = time.perf_counter()
        warm = 0.0
        ways: list[str] = []
        stream = torch.cuda.Stream()
        from pagedllm import envs
        borrow = envs.PAGEDLLM_PIECEWISE_SHARED_BUFFERS
        for t in reversed(self.sizes):
            stage_args = () if self.stage_inputs is None else self.stage_inputs.args(t)
            for with_lora in self.lora_variants:
                def warm_up():
                    self.model(self.input_ids[:t], self.positions[:t], self._batch(t, _SkipAttention, with_lora),
                               *stage_args)

                def capture():
                    splitter = _GraphSplitter(self.pool, borrow)
                    batch = self._batch(t, splitter, with_lora)      # before capturing: it copies to the device
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream), collections_paused():   # as in _capturing
                        splitter.begin()
                        out = self.model(batch.input_ids, batch.positions, batch, *stage_args)
                        splitter.end()
                    torch.cuda.current_stream().wait_stream(stream)
                    self.pool = splitter.pool
                    return splitter, out

                (splitter, out), seconds, way = capture_after_warm_up(capture, warm_up,
                                                                      warm_first=t == self.sizes[-1])
                warm += seconds
                ways.append(way)
                self.splitters[t, with_lora], self.outputs[t, with_lora] = splitter, out
        torch.cuda.synchronize()
        took = time.perf_counter() - t0
        logger.info("Captured piecewise CUDA graphs for steps of up to %d tokens (%d sizes, %d graphs each) in "
                    "%.1f s (warm-up forwards %.1f s, capture %.1f s; %s)", self.sizes[-1], len(self.sizes),
                    len(self.splitters[self.sizes[-1], self.lora_variants[0]].graphs), took, warm, took - warm,
                    _capture_note(ways))

    def can_run(self, num_tokens: int) -> bool:
        return bool(self.splitters) and num_tokens <= self.sizes[-1]

    def run(self, batch: ForwardBatch, received: IntermediateTensors | None = None):
        """The forward of ``batch`` (its device inputs already set, async-scheduling fixups included, its
        ``lora_step`` with enable_lora) through the graphs of the smallest bucket holding its tokens. ``received``:
        as ``CudaGraphRunner.run``'s."""
        n = batch.num_tokens
        t = next(s for s in self.sizes if s >= n)
        self.input_ids[:n].copy_(batch.input_ids)
        self.positions[:n].copy_(batch.positions)
        self.slot_mapping[:n].copy_(batch.slot_mapping)
        if n < t:
            self.slot_mapping[n:t].fill_(-1)
        if received is not None:
            self.stage_inputs.fill(received)
        key = (t, _with_lora(self.lora_variants, batch.lora_step))
        if key[1]:
            self.lora_step.fill(batch.lora_step, n, t)
        splitter = self.splitters[key]
        graphs, calls = splitter.graphs, splitter.attention_calls
        for i, graph in enumerate(graphs):
            graph.replay()
            if i < len(calls):
                layer, q, out = calls[i]
                layer.attend(q[:n], batch, out=out[:n])
        return _first_rows(self.outputs[key], n)
