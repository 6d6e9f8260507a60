"""ModelRunner: owns the model and the KV cache tensors; turns a SchedulerOutput into one forward pass + sampling."""
from __future__ import annotations

import dataclasses
import gc
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from pagedllm.attention.backends.base import CommonAttentionMetadata
from pagedllm.attention.forward_batch import ForwardBatch
from pagedllm.attention.registry import create_attention_backend
from pagedllm import envs
from pagedllm.config import (ENGINE_FLAG_GROUPS, EngineConfig, ProfilerSettings, attention_shape, cuda_graph_sizes,
                             cuda_graphs_off, kv_cache_torch_dtype, profiler_settings, sliding_window,
                             verify_engine_args)
from pagedllm.distributed import (get_pp_layer_range, get_pp_rank, get_pp_size, get_tp_rank, get_tp_size,
                                  is_first_pp_stage, is_last_pp_stage, kv_head_range, pp_recv_hidden, pp_send_hidden,
                                  warm_up_tp_communicator)
from pagedllm.kernels.parallel_compile import compile_ahead, wait_for_triton_prep
from pagedllm.kernels.settings import configure_kernels
from pagedllm.lora.layers import LoRAStep
from pagedllm.lora.manager import LoRAManager
from pagedllm.lora.request import LoRARequest
from pagedllm.model.layers.logits_processors import CustomLogitsProcessors, load_logits_processor_classes
from pagedllm.model.layers.pipeline import IntermediateTensors
from pagedllm.model.layers.pooler import Pooler, get_classifier_pooler, get_pooler, resolve_pooling
from pagedllm.model.layers.rejection_sampler import rejection_sample
from pagedllm.model.layers.sampler import Sampler, apply_grammar_bitmask, to_device, top_logprobs
from pagedllm.model.loader import load_model
from pagedllm.model.registry import get_model_class, is_encoder_only
from pagedllm.step_data import GrammarOutput, ModelRunnerOutput, MultiModalFeature, SchedulerOutput
from pagedllm.worker.cpu_offload import LayerOffloader
from pagedllm.worker.draft_model import DraftModel
from pagedllm.worker.memory_plan import MemoryPlan, plan_kv_cache, weights_do_not_fit_message
from pagedllm.worker.request_state import CachedRequestState
from pagedllm.worker.sleep_mode import (MEMORY_TAGS, WeightsBackup, check_sleep_level, check_wake_up_tags,
                                        kv_cache_pool)
from pagedllm.worker.swap_space import SwapSpace, kv_cache_bytes, kv_cache_view

logger = logging.getLogger(__name__)
# Decode batch sizes the start-up warm-up runs (see _profile_gpu_memory): one per row bucket of the decode kernels.
_DECODE_WARMUP_ROWS = (1, 4, 8, 16, 32, 64, 128)


@dataclass
class LaunchedStep:
    """A step whose device work is queued: what ``ModelRunner.finish`` needs to complete it."""
    states: list[CachedRequestState]         # the scheduled requests in batch order (one-token requests first)
    num_new: list[int]                       # their tokens this step
    hidden: torch.Tensor | None              # None on a pipeline stage before the last (its output went on)
    starts: np.ndarray                       # query start of each of ``states`` in the flat batch
    sampled_requests: list[CachedRequestState]   # requests that sample this step, in logits-row order
    logits: torch.Tensor | None = None
    tokens_host: torch.Tensor | None = None  # async: the sampled tokens, being copied to the host
    pooled: dict[str, torch.Tensor] | None = None   # pooling models: each request's vector
    ready: object | None = None              # async on CUDA: event recorded after that copy
    # Speculative decoding: the requests with drafts, their drafts, and their logits rows (1 + k each, in order).
    spec_requests: list[CachedRequestState] | None = None
    spec_drafts: list[list[int]] | None = None
    spec_logits: torch.Tensor | None = None


class ModelRunner:
    # vLLM's Worker.rank (tensor x pipeline parallel: pp_rank * tp_size + tp_rank) and .local_rank (its place among
    # the ranks on its host), read by functions given to collective_rpc; the executor sets both on its ranks.
    rank: int = 0
    local_rank: int = 0

    def __init__(self, config: EngineConfig):
        t_init = time.perf_counter()
        configure_kernels(config)      # this process's kernel switches (PDL, skinny GEMM, oneDNN)
        if config.cpu_threads is not None:     # CPU engine (config._pick_cpu_threads)
            threads = config.cpu_threads
            if config.cpu_bind is not None:    # VLLM_CPU_OMP_THREADS_BIND: this rank's CPUs (config._cpu_bind)
                cpus = config.cpu_bind[get_pp_rank() * get_tp_size() + get_tp_rank()]
                os.sched_setaffinity(0, cpus)
                if config.cpu_threads_from_bind:
                    threads = len(cpus)
            torch.set_num_threads(threads)
        self.config = config
        self.device = config.device
        self.dtype = config.dtype
        # kv_cache_dtype: "auto" = the model's dtype; fp8 halves (bf16) or quarters (fp32) the bytes per block.
        self.kv_cache_dtype = kv_cache_torch_dtype(config.args.kv_cache_dtype, config.dtype)
        self.block_size = config.block_size
        hf = config.hf_config
        # Pipeline parallel: this stage's layers only (its KV cache holds one tensor per layer it runs); the last
        # stage samples, the others pass their hidden states on and learn the sampled tokens from the executor.
        self.pp_size = get_pp_size()
        self.first_stage, self.last_stage = is_first_pp_stage(), is_last_pp_stage()
        start_layer, end_layer = get_pp_layer_range(hf.num_hidden_layers)
        self.num_layers = end_layer - start_layer
        self._pending_send = None      # the last stage-to-stage send (its buffer must live until it completes)
        # This rank's heads: tensor parallel gives each rank num_heads / tp query heads and their KV heads.
        tp_rank, tp_size = get_tp_rank(), get_tp_size()
        heads, kv_heads, self.head_dim = attention_shape(hf)
        # K and V per token, or K alone where the model reads its values from the key cache (DeepSeek's MLA latent,
        # kv_cache_value_is_key): each layer's [2, ...] cache is then a [1, ...] allocation expanded, V the same
        # memory (swap_space.stored_kv), so the same memory holds twice the blocks.
        self.kv_parts = 1 if getattr(get_model_class(hf), "kv_cache_value_is_key", False) else 2
        self.num_heads = heads // tp_size
        _, self.num_kv_heads = kv_head_range(kv_heads, tp_rank, tp_size)
        self.vocab_size = hf.vocab_size
        if config.args.seed is not None:
            torch.manual_seed(config.args.seed)
        if self.device.type == "cuda":
            from pagedllm.kernels import late_compiles
            late_compiles.pause()      # this start-up's Triton compiles are expected (re-armed once it is done)
        # Built before the model loads: an unknown or unusable attention_backend fails fast.
        self.attn_backend = create_attention_backend(
            config.attention_backend, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim, block_size=self.block_size, max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens, dtype=self.dtype, device=self.device)
        if getattr(hf, "attn_logit_softcapping", None) and not self.attn_backend.supports_logits_soft_cap:
            raise ValueError(f"This model soft-caps its attention logits (attn_logit_softcapping="
                             f"{hf.attn_logit_softcapping} in its config.json); the attention backend "
                             f"{config.attention_backend!r} does not: use 'torch' or 'triton'.")
        window = sliding_window(hf)
        if window is not None and not config.args.disable_sliding_window \
                and not self.attn_backend.supports_sliding_window:
            raise ValueError(f"This model attends through a sliding window (sliding_window={window} in its "
                             f"config.json); the attention backend {config.attention_backend!r} does not: use "
                             f"'torch' or 'triton', or disable_sliding_window=True (full attention, max_model_len "
                             f"capped at the window).")
        if getattr(get_model_class(hf), "attention_sinks", False) and not self.attn_backend.supports_attention_sinks:
            raise ValueError(f"This model's attention has sinks (a learned logit per head in each softmax: "
                             f"{hf.architectures[0]}); the attention backend {config.attention_backend!r} does not "
                             f"take them: use 'torch' or 'triton'.")
        t0 = time.perf_counter()
        try:
            self.model = load_model(config)
        except torch.OutOfMemoryError as e:
            raise ValueError(weights_oom_message(self.device, config.args.gpu_memory_utilization)) from e
        self.offloader: LayerOffloader | None = None
        if config.args.cpu_offload_gb:     # CUDA only (EngineConfig.build rejects it elsewhere)
            self.offloader = _offload_layers(self.model, config.args.cpu_offload_gb, self.device)
        # enable_lora: the adapters' slots in the targeted layers (before the memory profile, which counts them).
        self.lora: LoRAManager | None = None
        if config.args.enable_lora:
            self.lora = _lora_manager(self.model, config)
        # speculative_config method "draft_model": the draft and its KV cache (worker/draft_model.py).
        self.draft: DraftModel | None = None
        if config.draft_model is not None:
            self.draft = DraftModel(config, self.kv_cache_dtype)
        self.load_seconds = time.perf_counter() - t0
        # Seconds per start-up phase, in order, for the start-up log's timeline (and where a slow start goes).
        self.startup_phases: dict[str, float] = {"runner init": t0 - t_init, "load": self.load_seconds}
        # Triton variants built during start-up: (one by one, their seconds, ahead on threads, threads, wall seconds).
        self.startup_triton: tuple[int, float, int, int, float] | None = None
        self._compiled_ahead = (0, 0, 0.0)
        custom = None
        if config.args.logits_processors:      # instances of this worker's own (vLLM builds them per worker too)
            custom = CustomLogitsProcessors(load_logits_processor_classes(config.args.logits_processors), config,
                                            self.device)
        self.sampler = Sampler(config.args.logprobs_mode, custom)
        # Pooling models: the checkpoint's pooler (sentence-transformers config), else CLS for encoders and the
        # last token for decoders (vLLM's defaults), with the user's pooler_config over it.
        self.pooler: Pooler | None = None
        if config.is_pooling:
            default_type = "CLS" if is_encoder_only(hf) else "LAST"
            pooler_config = resolve_pooling(config.model.model_dir, default_type, config.default_token_pooling_type,
                                            config.args.pooler_config)
            head = getattr(self.model, "classify", None)     # sequence classifiers: their head runs in the pooler
            self.pooler = (get_classifier_pooler(pooler_config, head, hf, config.model.is_token_classifier)
                           if head is not None else get_pooler(pooler_config))
        # The worker's own state of every request the scheduler has sent (pagedllm/step_data.py), by id.
        self.requests: dict[str, CachedRequestState] = {}
        # The last step's sampled tokens on the device, and each request's row in it (async scheduling).
        self._prev_sampled = torch.empty(0, dtype=torch.long, device=self.device)
        self._prev_sampled_rows: dict[str, int] = {}
        self.kv_caches: list[torch.Tensor] = []
        # Encoder-only models attend within the step (bidirectional SDPA, model/models/bert.py) and never read or
        # write a KV cache: the block ids the scheduler hands out are bookkeeping only, with no memory behind them.
        self.needs_kv_cache = not is_encoder_only(hf)
        self.num_blocks = 0
        self.memory_plan: MemoryPlan | None = None
        self.max_blocks_per_seq = -(-config.max_model_len // self.block_size)
        self.graph_runner = None
        self.piecewise_runner = None
        self.graphs_off_reason: str | None = None     # why no CUDA graph was captured (the start-up log says it)
        self.swap_space: SwapSpace | None = None
        self.num_swap_blocks_allocated = 0
        # LLM.start_profile(): where and how traces are written (profiler_config, else PAGEDLLM_TORCH_PROFILER_DIR /
        # VLLM_TORCH_PROFILER_DIR, read at start-up as vLLM's), and the profiler while one runs.
        self.profiler_settings = profiler_settings(config.args.profiler_config)
        self.profiler = None
        # Sleep mode: the memory tags given back ("weights", "kv_cache"), and the weights' CPU copy at level 1.
        self.asleep: set[str] = set()
        self._weights_backup: WeightsBackup | None = None

    # ---- KV cache ---------------------------------------------------------------------------------------------
    @property
    def bytes_per_block(self) -> int:
        elem = torch.tensor([], dtype=self.kv_cache_dtype).element_size()
        draft = self.draft.bytes_per_block if self.draft is not None else 0     # its cache shares the block ids
        return self.kv_parts * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem + draft

    def determine_num_blocks(self) -> int:
        """The KV cache's block count, from the memory plan (worker/memory_plan.py), kept in ``self.memory_plan``
        for the start-up log. Raises ValueError when the weights or one max_model_len sequence do not fit."""
        t0 = time.perf_counter()
        try:
            return self._determine_num_blocks()
        finally:
            self.startup_phases["memory profile + warm-up"] = time.perf_counter() - t0

    def _determine_num_blocks(self) -> int:
        args = self.config.args
        # Never more than every sequence at full length could use.
        cap = self.config.max_num_seqs * self.max_blocks_per_seq + 1
        if not self.needs_kv_cache:
            if self.device.type == "cuda":
                self._dummy_forward(min(self.config.max_num_batched_tokens,
                                        self.config.max_model_len * self.config.max_num_seqs))   # warm-up
            if args.num_gpu_blocks_override is not None:
                return int(args.num_gpu_blocks_override)
            # As many block ids as the fullest step can take (its tokens, plus a partly filled block per request):
            # the scheduler's block accounting then never limits a step; a request's ids are freed when it is pooled.
            full_step = -(-self.config.max_num_batched_tokens // self.block_size) + self.config.max_num_seqs
            return max(self.max_blocks_per_seq, min(cap, full_step))
        measured: dict = {"weights_bytes": self.weights_bytes}
        if self.device.type == "cuda":
            measured = self._profile_gpu_memory()     # also the warm-up: run it even when the size is given
            measured["gpu_memory_utilization"] = args.gpu_memory_utilization
            if self.offloader is not None:
                measured["cpu_offload_bytes"] = self.offloader.offloaded_bytes
        self.memory_plan = plan_kv_cache(
            **measured, bytes_per_block=self.bytes_per_block, block_size=self.block_size,
            max_model_len=self.config.max_model_len, max_num_seqs=self.config.max_num_seqs,
            kv_cache_dtype=args.kv_cache_dtype, kv_cache_memory_bytes=self.config.kv_cache_memory_bytes,
            kv_cache_memory_source=self.config.kv_cache_memory_source,
            num_gpu_blocks_override=args.num_gpu_blocks_override,
            swap_space_bytes=int((args.swap_space or 0) * (1 << 30)),
            # vLLM's kv_offloading_size is the CPU tier's total over the ranks: each holds its share of a block.
            kv_offloading_bytes=int((args.kv_offloading_size or 0) * (1 << 30)) // (get_tp_size() * get_pp_size()),
            fit_max_model_len=args.max_model_len == -1)
        return self.memory_plan.num_blocks

    def num_swap_blocks(self) -> int:
        """CPU blocks: swap space (``swap_space`` GiB of this worker's blocks) and the prefix cache's CPU tier
        (``kv_offloading_size`` GiB over all ranks, this worker's share), one pool; 0: preemption recomputes, no CPU
        tier."""
        return self.memory_plan.num_swap_blocks if self.memory_plan is not None else 0

    @property
    def weights_bytes(self) -> int:
        """The bytes of the model's parameters and buffers (wherever they live). On the CPU, linear weights
        reordered for oneDNN live outside the parameters (which are then empty); the LM head keeps (key, packed);
        fbgemm's fp16 weights (dtype="float16" on the CPU) are opaque objects that give their size."""
        total = (sum(p.numel() * p.element_size() for p in self.model.parameters())
                 + sum(b.numel() * b.element_size() for b in self.model.buffers()))
        for m in self.model.modules():
            total += getattr(m, "packed_weight_bytes", 0)
            packed = getattr(m, "_packed", None)
            if isinstance(packed, tuple):
                packed = packed[1]
            if isinstance(packed, torch.Tensor):
                total += packed.numel() * packed.element_size()
        return total

    def _profile_gpu_memory(self) -> dict:
        """The plan's measured inputs on the GPU: run the largest batch once and read the peak above the weights,
        and the memory others hold (CUDA context, other processes), which counts against our share too."""
        # Every call names this rank's device (each rank plans on its own GPU; it is the current device as well).
        dev = self.device
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        weights = torch.cuda.memory_allocated(dev)
        n = min(self.config.max_num_batched_tokens, self.config.max_model_len * self.config.max_num_seqs)

        def warm_up() -> None:
            if getattr(self.model, "supported_modalities", None):     # the vision tower's peak too (LLaVA)
                self._dummy_encode()
            self._dummy_forward(n)
            if self.pooler is None and self.needs_kv_cache:
                # Decode steps at each row bucket where the decode kernels change variant (the skinny GEMMs': 1, 2..4,
                # 5..8, 9..16, W8A8 up to 128 rows; the packed int4 kernels'), so the dry pass records them and
                # they build on the pool; else graph capture builds them one by one (three skinny variants, 0.7 s
                # of a cold 7B start on an H100 in session 25).
                for rows in _DECODE_WARMUP_ROWS:
                    if rows <= min(self.config.max_num_seqs, self.config.max_num_batched_tokens):
                        self._dummy_forward(lens=[1] * rows, num_decodes=rows)
            # Batch shapes whose kernel variants the backend wants compiled now, not inside the first timed requests.
            for lens, num_decodes in self.attn_backend.warmup_batches():
                self._dummy_forward(lens=lens, num_decodes=num_decodes)
            # A model's own forms that these shapes do not reach (DeepSeek MLA's absorbed prefill, which only steps
            # whose cached context outweighs their new tokens take): one prompt and the backend's batch shapes
            # under each. The shapes too: the form's steps are mixed ones at run time (prefix hits with short tails
            # beside decodes), whose two-pass extend launch a lone prompt never makes (session 37 on an H100: two
            # variants, num_warps 8 and 4, built inside requests).
            for form in getattr(self.model, "warmup_forms", lambda: ())():
                with form:
                    self._dummy_forward(lens=[min(n, 64)])
                    for lens, num_decodes in self.attn_backend.warmup_batches():
                        self._dummy_forward(lens=lens, num_decodes=num_decodes)
        wait_for_triton_prep()        # started with the config (engine/core.py): not done twice
        threads = envs.PAGEDLLM_COMPILE_THREADS
        if threads > 0:       # a cold Triton cache: the variants built on threads first
            built, seconds = compile_ahead(warm_up, threads)
            self._compiled_ahead = (built, threads, seconds)
            torch.cuda.synchronize(dev)
            torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        warm_up()
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev)
        total = torch.cuda.get_device_properties(dev).total_memory
        free_now, _ = torch.cuda.mem_get_info(dev)
        non_torch = total - free_now - torch.cuda.memory_reserved(dev)
        return {"weights_bytes": weights, "activation_peak_bytes": max(peak - weights, 0), "total_bytes": total,
                "non_torch_bytes": max(non_torch, 0)}

    @torch.inference_mode()
    def _dummy_forward(self, num_tokens: int = 0, lens: list[int] | None = None, num_decodes: int = 0) -> None:
        """A forward of ``num_tokens`` prompt tokens (as few max_model_len requests as hold them), or of prompts of
        the given ``lens`` (the first ``num_decodes`` of them, of length 1, as decodes), over a scratch cache
        (memory profiling, kernel warm-up)."""
        if lens is None:
            n_seq = -(-num_tokens // self.config.max_model_len)
            lens = [min(self.config.max_model_len, num_tokens - i * self.config.max_model_len) for i in range(n_seq)]
        num_tokens = sum(lens)
        n_seq = len(lens)
        blocks = sum(-(-x // self.block_size) for x in lens)
        shape = (self.kv_parts, blocks, self.block_size, self.num_kv_heads, self.head_dim)
        caches = ([kv_cache_view(torch.empty(shape, dtype=self.kv_cache_dtype, device=self.device))
                   for _ in range(self.num_layers)] if self.needs_kv_cache else [])
        starts = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        positions = np.concatenate([np.arange(x) for x in lens])
        # Each request gets its own run of blocks.
        tables = np.zeros((n_seq, -(-max(lens) // self.block_size)), dtype=np.int32)
        slots = []
        first = 0
        for i, x in enumerate(lens):
            nb = -(-x // self.block_size)
            tables[i, :nb] = np.arange(first, first + nb)
            slots.append(first * self.block_size + np.arange(x))
            first += nb
        slots = np.concatenate(slots)
        batch = self._make_batch(np.zeros(num_tokens, dtype=np.int64), positions, slots, starts,
                                 np.array(lens, dtype=np.int32), tables, caches, num_decodes)
        if self.pp_size > 1:     # a stage alone: zeros stand for the previous stage's output
            intermediate = None
            if not self.first_stage:
                zeros = torch.zeros(num_tokens, self.config.hf_config.hidden_size, dtype=self.dtype, device=self.device)
                intermediate = IntermediateTensors(zeros, zeros.clone())
            hidden = self.model(batch.input_ids, batch.positions, batch, intermediate)
        else:
            hidden = self.model(batch.input_ids, batch.positions, batch)
        if self.pooler is None and self.last_stage:
            self.model.compute_logits(hidden[-min(num_tokens, self.config.max_num_seqs):])
        del caches, hidden

    def allocate_kv_cache(self, num_blocks: int, num_swap_blocks: int = 0) -> None:
        t0 = time.perf_counter()
        self.num_blocks = num_blocks
        plan = self.memory_plan
        if plan is not None and num_blocks != plan.num_blocks:
            # Tensor/pipeline parallel: every rank holds the smallest block count any rank planned
            # (DistributedExecutor.determine_num_blocks), so the scheduler's block ids are valid on all of them.
            self.memory_plan = dataclasses.replace(
                plan, num_blocks=num_blocks, kv_cache_bytes=num_blocks * plan.bytes_per_block,
                sized_by=f"{plan.sized_by}, the smallest over the ranks")
        self.num_swap_blocks_allocated = num_swap_blocks
        self._allocate_kv_tensors()
        t1 = time.perf_counter()
        self.startup_phases["KV cache"] = t1 - t0
        # Pooling steps are whole prompts of any length, once each: nothing for a captured graph to replay. Pipeline
        # stages replay their own layers' graphs; the stage-to-stage transfer runs eagerly around them (launch).
        if self.offloader is not None and not self.config.args.enforce_eager:
            logger.info("CUDA graphs are off: cpu_offload_gb streams %d layers' weights from CPU memory on a side "
                        "stream, which a captured graph would not repeat.", self.offloader.num_layers)
        if self._capture_cuda_graphs():
            self.startup_phases["CUDA graphs"] = time.perf_counter() - t1
        if self.device.type == "cuda":
            from pagedllm.kernels import late_compiles
            self.startup_triton = (late_compiles.startup_compiles, late_compiles.startup_compile_seconds,
                                   *self._compiled_ahead)
            late_compiles.watch_late_compiles()

    def _allocate_kv_tensors(self) -> None:
        """The KV cache (one tensor per layer, zeros; K only and V the same memory where ``kv_parts`` is 1) and the
        swap space over it."""
        shape = (self.kv_parts, self.num_blocks, self.block_size, self.num_kv_heads, self.head_dim)
        self.kv_caches, self._kv_pool = [], None
        if self.device.type == "cpu":
            if self.needs_kv_cache:
                self.kv_caches = [kv_cache_view(c) for c in
                                  _calloc_zeros((self.num_layers, *shape), self.kv_cache_dtype).unbind(0)]
            if self.draft is not None:
                self.draft.allocate_kv_cache(self.num_blocks, lambda shape: _calloc_zeros(shape, self.kv_cache_dtype))
        else:
            # sleep mode: in a pool of their own, so that sleep() gives all of it back (sleep_mode.kv_cache_pool)
            with kv_cache_pool(self.config.args.enable_sleep_mode, self.device) as self._kv_pool:
                if self.needs_kv_cache:
                    self.kv_caches = [kv_cache_view(torch.zeros(shape, dtype=self.kv_cache_dtype, device=self.device))
                                      for _ in range(self.num_layers)]
                if self.draft is not None:
                    self.draft.allocate_kv_cache(self.num_blocks, lambda shape: torch.zeros(
                        shape, dtype=self.kv_cache_dtype, device=self.device))
        if self.num_swap_blocks_allocated > 0 and self.kv_caches:
            self.swap_space = SwapSpace(self.num_swap_blocks_allocated, self.kv_caches)
            if self.draft is not None:       # the same block ids, in the draft's own CPU blocks
                self.draft.swap_space = SwapSpace(self.num_swap_blocks_allocated, self.draft.kv_caches)

    def _capture_cuda_graphs(self) -> bool:
        """Capture the decode and piecewise CUDA graphs over the current weights and KV cache (start-up, and again
        after a wake-up: the graphs hold those tensors' addresses). Returns whether any were captured."""
        backend = self.attn_backend
        why = cuda_graphs_off(self.config.args, self.device.type == "cuda", self.config.is_pooling,
                              self.config.quant_config)
        if why:
            self.graphs_off_reason = why
            return False
        from pagedllm.worker.cuda_graphs import (CudaGraphRunner, PiecewiseGraphRunner, graph_batch_sizes,
                                                 piecewise_token_sizes)
        warm_up_tp_communicator(self.device)     # NCCL captures only a communicator that has run eagerly
        torch.cuda.synchronize(self.device)
        free_before, _ = torch.cuda.mem_get_info(self.device)
        # A stage after the first reads the previous stage's output from the graphs' static buffers.
        stage_input = None if self.first_stage else (self.config.hf_config.hidden_size, self.dtype)
        # enable_lora: the graphs read each step's adapter slots from static buffers (cuda_graphs.LoRAStepBuffer).
        lora = None if self.lora is None else (self.lora.max_loras, self.lora.dtype)
        specialize = self.config.cudagraph_specialize_lora
        # cudagraph_capture_sizes / max_cudagraph_capture_size (vLLM's), else our lists (cuda_graphs.py).
        sizes, largest = cuda_graph_sizes(self.config.args)
        decode_sizes = graph_batch_sizes(self.config.max_num_seqs, sizes, largest)
        if backend.supports_full_cuda_graphs and decode_sizes and self.config.decode_cuda_graphs:
            self.graph_runner = CudaGraphRunner(self.model, self.kv_caches, decode_sizes, self.max_blocks_per_seq,
                                                backend, self.device, stage_input=stage_input, lora=lora,
                                                specialize_lora=specialize)
            self.graph_runner.capture()
        if backend.supports_piecewise_cuda_graphs and self.config.piecewise_cuda_graphs:
            pool = self.graph_runner.pool if self.graph_runner is not None else None
            prompt_sizes = piecewise_token_sizes(self.config.max_num_batched_tokens,
                                                 envs.PAGEDLLM_PIECEWISE_MAX_TOKENS if largest is None else largest,
                                                 sizes)
            self.piecewise_runner = PiecewiseGraphRunner(self.model, self.kv_caches, prompt_sizes, backend,
                                                         self.device, pool=pool, stage_input=stage_input,
                                                         lora=lora, specialize_lora=specialize)
            self.piecewise_runner.capture()
        if self.config.args.speculative_config is not None:
            logger.info("speculative_config: a step in which a request verifies drafts has multi-token queries, so "
                        "the full decode CUDA graphs do not cover it; it runs through the piecewise graphs when they "
                        "fit it, else eagerly. Steps without drafts replay the decode graphs as usual.")
        torch.cuda.synchronize(self.device)
        if self.memory_plan is not None:     # the graphs' memory pool, for the start-up log
            self.memory_plan.cuda_graph_bytes = max(free_before - torch.cuda.mem_get_info(self.device)[0], 0)
        return True

    # ---- collective_rpc's view (vLLM's Worker) -----------------------------------------------------------------
    @property
    def model_runner(self) -> "ModelRunner":
        """A function given to ``collective_rpc`` gets this runner as vLLM's gets its worker: ``worker.model_runner``
        and ``worker.get_model()`` work on both."""
        return self

    def get_model(self) -> torch.nn.Module:
        if self.model is None:
            raise ValueError("The model's weights were dropped by sleep(level=2): call wake_up() first.")
        return self.model

    def apply_model(self, func):
        """vLLM's worker method behind ``LLM.apply_model``: ``func(model)``."""
        return func(self.get_model())

    # ---- torch profiler (LLM.start_profile / stop_profile) -----------------------------------------------------
    def start_profile(self, profile_prefix: str | None = None) -> None:
        """Record this worker's steps with torch.profiler until ``stop_profile``, which writes a Chrome trace
        (``*.pt.trace.json[.gz]``, for Perfetto or chrome://tracing) and, with ``torch_profiler_dump_cuda_time_total``
        (vLLM's default), a table of the ops' times (``profiler_out_<rank>.txt``) to the folder of profiler_config /
        VLLM_TORCH_PROFILER_DIR, read when the worker started. ``profile_prefix``: the trace's name begins with it
        (``<prefix>_pp<stage>_tp<rank>``); default: host name and process id."""
        cfg = self._profiler_settings_or_raise()
        if self.profiler is not None:
            raise ValueError("The profiler is already running: call stop_profile() first.")
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        name = None
        if profile_prefix:
            name = f"{profile_prefix}_pp{get_pp_rank()}_tp{get_tp_rank()}"
        self.profiler = torch.profiler.profile(
            activities=activities, with_stack=cfg.torch_profiler_with_stack,
            record_shapes=cfg.torch_profiler_record_shapes, profile_memory=cfg.torch_profiler_with_memory,
            with_flops=cfg.torch_profiler_with_flops,
            on_trace_ready=torch.profiler.tensorboard_trace_handler(cfg.torch_profiler_dir, worker_name=name,
                                                                   use_gzip=cfg.torch_profiler_use_gzip))
        self.profiler.start()
        logger.info("Profiling started; the trace goes to %s.", cfg.torch_profiler_dir)

    def stop_profile(self) -> None:
        cfg = self._profiler_settings_or_raise()
        if self.profiler is None:
            raise ValueError("The profiler is not running: call start_profile() first.")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        profiler, self.profiler = self.profiler, None
        profiler.stop()          # writes the trace (on_trace_ready)
        if cfg.torch_profiler_dump_cuda_time_total:
            sort_by = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
            path = os.path.join(cfg.torch_profiler_dir, f"profiler_out_{get_tp_rank()}.txt")
            with open(path, "w") as f:
                f.write(profiler.key_averages().table(sort_by=sort_by, row_limit=50))
        logger.info("Profiling stopped; the trace is in %s.", cfg.torch_profiler_dir)

    def _profiler_settings_or_raise(self) -> ProfilerSettings:
        if self.profiler_settings is None:      # RuntimeError, as vLLM's worker
            raise RuntimeError("Profiler is not enabled: start the engine with profiler_config={'profiler': "
                               "'torch', 'torch_profiler_dir': DIR} (--profiler-config) or with "
                               "VLLM_TORCH_PROFILER_DIR (or PAGEDLLM_TORCH_PROFILER_DIR) set to the folder for the "
                               "traces.")
        return self.profiler_settings

    # ---- sleep mode (worker/sleep_mode.py) --------------------------------------------------------------------
    def sleep(self, level: int = 1) -> int:
        """Give back the device memory of the KV cache (level 1 and 2) and of the weights (level 1: kept in CPU
        memory; level 2: dropped), and of the CUDA graphs that point at them. Returns the bytes freed; logs vLLM's
        line. The engine has finished every step in flight and holds no request's blocks."""
        check_sleep_level(level)
        tags = set(MEMORY_TAGS) - self.asleep       # what a partial wake-up took back sleeps again
        if level == 0 or not tags:
            return 0
        if self.offloader is not None:
            raise ValueError("sleep() is not supported with cpu_offload_gb yet: its layers already stream from CPU "
                             "memory.")
        if self.draft is not None:
            raise ValueError("sleep() is not supported with a speculative_config draft model yet.")
        before = self._device_bytes_in_use()
        self.graph_runner = self.piecewise_runner = None       # their captures point at what is freed below
        self._prev_sampled = torch.empty(0, dtype=torch.long, device=self.device)
        self._prev_sampled_rows = {}
        if "kv_cache" in tags:
            self.kv_caches, self.swap_space, self._kv_pool = [], None, None
        if "weights" in tags:
            if level == 1:
                self._weights_backup = WeightsBackup(self.model)    # nothing to move on the CPU device
            else:
                self.model = None
        self.asleep |= tags
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        after = self._device_bytes_in_use()
        logger.info("Sleep mode freed %.2f GiB memory, %.2f GiB memory is still in use.",
                    max(before - after, 0) / 2**30, after / 2**30)
        return max(before - after, 0)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Take the memory of ``tags`` ("weights", "kv_cache"; None: both) again: the weights from their CPU copy
        (level 1) or the checkpoint (level 2), the KV cache as zeros of its old size; once both are back, the CUDA
        graphs are captured again over them."""
        waking = check_wake_up_tags(tags) & self.asleep
        if "weights" in waking:
            if self._weights_backup is not None:
                self._weights_backup.restore(self.device)
                self._weights_backup = None
            else:
                self.model = load_model(self.config)
            self.asleep.discard("weights")
        if "kv_cache" in waking:
            self._allocate_kv_tensors()
            self.asleep.discard("kv_cache")
        if waking and not self.asleep:
            self._capture_cuda_graphs()

    # ---- LoRA adapters (engine's add_lora / remove_lora / list_loras) ------------------------------------------
    def add_lora(self, lora_request: LoRARequest) -> bool:
        return self._lora_or_raise().add_adapter(lora_request)

    def remove_lora(self, lora_id: int) -> bool:
        return self._lora_or_raise().remove_adapter(lora_id)

    def list_loras(self) -> set[int]:
        return self._lora_or_raise().list_adapters()

    def pin_lora(self, lora_id: int) -> bool:
        return self._lora_or_raise().pin_adapter(lora_id)

    def _lora_or_raise(self) -> LoRAManager:
        if self.lora is None:
            raise ValueError("LoRA is not enabled: create the engine with enable_lora=True (--enable-lora).")
        return self.lora

    def update_config(self, overrides: dict) -> None:
        """vLLM's worker method: ``collective_rpc("update_config", args=({"load_config": {"load_format": "auto"}},))``
        changes how the next ``reload_weights`` loads (vLLM's example starts on ``load_format="dummy"`` and then
        loads the checkpoint in place). vLLM's other section, ``model_config``, is refused."""
        if not isinstance(overrides, dict):
            raise ValueError(f"update_config takes a dict of config sections, got {type(overrides).__name__}.")
        changes = {}
        for section, fields in overrides.items():
            if section != "load_config":
                raise ValueError(f"update_config: {section!r} is not supported yet by pagedllm; only 'load_config' "
                                 f"(its fields {list(ENGINE_FLAG_GROUPS['LoadConfig'])}) can change.")
            for name, value in (fields or {}).items():
                if name not in ENGINE_FLAG_GROUPS["LoadConfig"]:
                    raise ValueError(f"update_config: load_config has no field {name!r}; its fields: "
                                     f"{list(ENGINE_FLAG_GROUPS['LoadConfig'])}.")
                changes[name] = value
        verify_engine_args(dataclasses.replace(self.config.args, **changes))   # the same checks as at start-up
        for name, value in changes.items():
            setattr(self.config.args, name, value)

    def reload_weights(self) -> None:
        """Load the weights again from the checkpoint (vLLM's worker method, for ``collective_rpc("reload_weights")``
        after a level-2 sleep, or after ``update_config`` changed the load format); the CUDA graphs are captured
        again over them."""
        self.graph_runner = self.piecewise_runner = None
        self.model = None
        self._weights_backup = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.model = load_model(self.config)
        self.asleep.discard("weights")
        if not self.asleep:
            self._capture_cuda_graphs()

    def _device_bytes_in_use(self) -> int:
        """What this worker holds on its device: the CUDA allocator's count, or on the CPU device the bytes of the
        weights and the KV cache tensors."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.memory_allocated(self.device)
        kv = kv_cache_bytes(self.kv_caches)
        return kv + (self.weights_bytes if self.model is not None else 0)

    # ---- one step ---------------------------------------------------------------------------------------------
    def _make_batch(self, input_ids, positions, slots, query_start_loc, seq_lens, block_tables, kv_caches,
                    num_decodes: int = 0, lora_step: LoRAStep | None = None, attn_backend=None) -> ForwardBatch:
        dev = self.device
        query_start_loc = np.asarray(query_start_loc, dtype=np.int32)
        seq_lens = np.asarray(seq_lens, dtype=np.int32)
        block_tables = np.asarray(block_tables, dtype=np.int32)
        slot_mapping = torch.from_numpy(np.asarray(slots, dtype=np.int64)).to(dev, non_blocking=True)
        common = CommonAttentionMetadata(
            query_start_loc=torch.from_numpy(query_start_loc).to(dev, non_blocking=True),
            seq_lens=torch.from_numpy(seq_lens).to(dev, non_blocking=True),
            block_tables=torch.from_numpy(block_tables).to(dev, non_blocking=True),
            slot_mapping=slot_mapping,
            max_query_len=int(np.max(np.diff(query_start_loc))) if len(seq_lens) else 0,
            max_seq_len=int(np.max(seq_lens)) if len(seq_lens) else 0,
            num_decodes=num_decodes,
            query_start_loc_cpu=query_start_loc, seq_lens_cpu=seq_lens, block_tables_cpu=block_tables)
        backend = attn_backend if attn_backend is not None else self.attn_backend     # a draft model's own
        return ForwardBatch(
            input_ids=torch.from_numpy(np.asarray(input_ids, dtype=np.int64)).to(dev, non_blocking=True),
            positions=torch.from_numpy(np.asarray(positions, dtype=np.int64)).to(dev, non_blocking=True),
            slot_mapping=slot_mapping, kv_caches=kv_caches, attn_backend=backend,
            attn_metadata=backend.build_metadata(common), lora_step=lora_step)

    def startup_info(self) -> dict:
        """Facts for the engine's start-up log block."""
        weights = self.weights_bytes
        kv = kv_cache_bytes(self.kv_caches)
        graphs = []
        if self.graph_runner is not None:
            graphs.append(f"{len(self.graph_runner.sizes)} decode batch sizes (up to {self.graph_runner.max_batch})")
        if self.piecewise_runner is not None and self.piecewise_runner.sizes:
            graphs.append(f"piecewise for steps of up to {self.piecewise_runner.sizes[-1]} tokens "
                          f"({len(self.piecewise_runner.sizes)} sizes)")
        if graphs and self.lora is not None:
            graphs.append("each with the LoRA deltas" + (" and again without them, for steps without adapters"
                                                          if self.config.cudagraph_specialize_lora else ""))
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        info = {"weights_gib": weights / 2**30, "load_seconds": self.load_seconds, "kv_cache_gib": kv / 2**30,
                "startup_phases": dict(self.startup_phases),
                "triton_startup": self.startup_triton,
                "kv_cache_needed": self.needs_kv_cache, "device": str(self.device),
                "graphs": "; ".join(graphs) or f"none ({self.graphs_off_reason or 'not captured'})",
                "device_name": name,
                "memory_plan": self.memory_plan.describe() if self.memory_plan is not None else []}
        if self.config.quant_config is not None:
            info["quantization"] = self.config.quant_config.weight_bytes_note()
        if getattr(self.model, "kv_cache_note", None):      # what the KV cache holds, where it is not plain K/V
            info["kv_cache_note"] = self.model.kv_cache_note
        if self.device.type == "cpu":
            info["cpu_threads"] = torch.get_num_threads()
            if self.config.cpu_bind is not None:
                info["cpu_bind"] = sorted(os.sched_getaffinity(0))
            info["openmp_wait_policy"] = envs.openmp_wait_policy
        return info

    # ---- request state ------------------------------------------------------------------------------------------
    def _update_states(self, sched: SchedulerOutput) -> list[tuple[CachedRequestState, int]]:
        """Apply the step's diff to the worker's request states; the scheduled requests in batch order (one-token
        requests first, each group in scheduling order: the attention backend runs them through its decode kernel)
        with their token counts. A running request's progress is advanced by the worker itself (``launch`` adds its
        scheduled tokens); only new blocks and resumptions come in the diff."""
        requests = self.requests
        for rid in sched.finished_req_ids:
            requests.pop(rid, None)
        for new in sched.new_requests:
            requests[new.req_id] = CachedRequestState.from_new(new, self.device, self.first_stage)
        for rid, block_ids in sched.new_block_ids.items():
            requests[rid].block_ids.extend(block_ids)
        for rid, resumed in sched.resumed_requests.items():
            # Preempted and admitted again: a new block table, and a token sampled while the preemption happened
            # (async scheduling) was dropped by the engine.
            state = requests[rid]
            state.block_ids = list(resumed.block_ids)
            state.num_computed_tokens = resumed.num_computed_tokens
            del state.token_ids[resumed.num_tokens:]
        decodes, others = [], []
        for rid, n in sched.num_scheduled_tokens.items():
            (decodes if n == 1 else others).append((requests[rid], n))
        return decodes + others if others else decodes

    def _encode_images(self, items: list[tuple[CachedRequestState, int]]) -> None:
        """Run the encoder for the images this step's prompt chunks reach first (none of their placeholders computed
        yet, or again after a preemption), one batch per modality and input shape (LLaVA-1.5: every image is
        [3, 336, 336], so one vision-tower call per step); each request keeps its images' outputs
        (``encoder_outputs``) until a chunk reaches their last placeholder."""
        batches: dict[tuple, list[tuple[CachedRequestState, int, MultiModalFeature]]] = {}
        for st, n in items:
            c = st.num_computed_tokens
            if st.mm_features is None or c >= st.num_prompt_tokens:
                continue
            for i, feature in enumerate(st.mm_features):
                if feature.offset < c + n and feature.end > c and i not in st.encoder_outputs:
                    shapes = tuple((k, tuple(v.shape[1:]), v.dtype) for k, v in sorted(feature.data.items()))
                    batches.setdefault((feature.modality, shapes), []).append((st, i, feature))
        size = self.encoder_batch_size()
        for (modality, _), items_of_shape in batches.items():
            for first in range(0, len(items_of_shape), size):      # at most the batch the memory profile ran
                group = items_of_shape[first:first + size]
                data = {k: torch.cat([f.data[k] for _, _, f in group]).to(self.device, non_blocking=True)
                        for k in group[0][2].data}
                out = self.model.embed_multimodal(modality, data)
                lengths = [f.length for _, _, f in group]
                if out.shape[0] != sum(lengths):
                    raise RuntimeError(f"The {modality} encoder gave {out.shape[0]} rows for {sum(lengths)} "
                                       f"placeholder tokens of {len(group)} item(s).")
                for (st, i, _), rows in zip(group, out.split(lengths)):
                    st.encoder_outputs[i] = rows

    def encoder_batch_size(self) -> int:
        """Images per vision-encoder call: as many as one step's token budget holds whole (at least one); the
        start-up memory profile runs a call of this size (``_dummy_encode``), so a step's encoder peak was
        measured."""
        return max(1, self.config.max_num_batched_tokens // self.model.tokens_per_image)

    @torch.inference_mode()
    def _dummy_encode(self) -> None:
        """One vision-encoder call of ``encoder_batch_size`` images (memory profiling, kernel warm-up)."""
        modality, data = self.model.dummy_multimodal_inputs(self.encoder_batch_size())
        self.model.embed_multimodal(modality, data)

    @staticmethod
    def _image_embeds(st: CachedRequestState, c: int, n: int, s: int, rows: list[np.ndarray],
                      values: list[torch.Tensor]) -> None:
        """The encoder-output rows of the images whose placeholders fall in this chunk of the prompt (positions
        [c, c + n), flat rows from ``s``; ``_encode_images`` made them): an image's output is sliced across the
        chunks that hold its placeholders (a chunk may end anywhere)."""
        end = c + n
        for i, feature in enumerate(st.mm_features):
            if feature.offset >= end or feature.end <= c:
                continue
            out = st.encoder_outputs[i]
            lo, hi = max(feature.offset, c), min(feature.end, end)
            rows.append(np.arange(s + lo - c, s + hi - c))
            values.append(out[lo - feature.offset:hi - feature.offset])
            if hi == feature.end:        # the image's last placeholder: its rows are in the KV cache after this step
                del st.encoder_outputs[i]

    @staticmethod
    def _mrope_positions(mrope, positions: np.ndarray, items: list[tuple[CachedRequestState, int, int, int]]
                         ) -> tuple[np.ndarray, np.ndarray | None]:
        """M-RoPE requests with images (``items``: state, first flat row, computed tokens, tokens this step): the
        step's rotary positions ``[T]`` (a prompt token's from the request's table, made once per request by the
        model's ``mrope_input_positions``; a later token's index + the request's delta) and, when a row is an image
        placeholder's, ``[3, T]`` (temporal, height, width; else None: every row's three are equal)."""
        rope = positions.copy()
        rows: list[tuple[int, np.ndarray]] = []
        for st, s, c, n in items:
            if st.mrope_positions is None:      # once per request (a recomputation after a preemption reuses it)
                st.mrope_positions, st.mrope_delta = mrope(st.num_prompt_tokens, st.mm_features)
            k = max(0, min(n, st.num_prompt_tokens - c))
            rope[s:s + k] = st.mrope_positions[0, c:c + k]
            rope[s + k:s + n] += st.mrope_delta
            if any(f.offset < c + k and f.end > c for f in st.mm_features):
                rows.append((s, st.mrope_positions[:, c:c + k]))
        if not rows:
            return rope, None
        three = np.tile(rope, (3, 1))
        for s, table in rows:
            three[:, s:s + table.shape[1]] = table
        return rope, three

    @torch.inference_mode()
    def launch(self, sched: SchedulerOutput) -> "LaunchedStep":
        """Prepare the inputs and queue the forward pass (and, when ``sched.sample_async``, the sampling and the copy
        of the tokens to the host) without waiting for the device.

        Async scheduling: a request whose last token was sampled by the previous step but is not on the host yet
        takes that token straight from the previous step's device tensor of sampled tokens."""
        if sched.blocks_to_swap_out:     # before the forward pass, which may reuse these blocks
            self.swap_space.swap_out(sched.blocks_to_swap_out)
            if self.draft is not None:
                self.draft.swap_space.swap_out(sched.blocks_to_swap_out)
        if sched.blocks_to_swap_in:
            self.swap_space.swap_in(sched.blocks_to_swap_in)
            if self.draft is not None:
                self.draft.swap_space.swap_in(sched.blocks_to_swap_in)
        items = self._update_states(sched)
        if not items:     # a step of block copies only
            return LaunchedStep([], [], torch.empty(0, device=self.device), np.zeros(1, dtype=np.int32), [])
        bs = self.block_size
        num_reqs = len(items)
        q_lens = np.fromiter((n for _, n in items), dtype=np.int64, count=num_reqs)
        num_decodes = int((q_lens == 1).sum())     # all of them first in ``items``
        starts = np.zeros(num_reqs + 1, dtype=np.int32)
        np.cumsum(q_lens, out=starts[1:])
        total = int(starts[-1])
        input_ids = np.zeros(total, dtype=np.int64)
        positions = np.empty(total, dtype=np.int64)
        seq_lens = np.empty(num_reqs, dtype=np.int32)
        width = max(-(-(st.num_computed_tokens + n) // bs) for st, n in items)
        tables = np.zeros((num_reqs, width), dtype=np.int32)
        fix_dst: list[int] = []      # flat input rows whose token is still on the device ...
        fix_src: list[int] = []      # ... and its row in the previous step's sampled tokens
        partial = sched.partial_req_ids
        spec = sched.spec_token_ids
        if self.draft is not None:     # the draft model sees every step's tokens and fills in the drafts
            spec = self.draft.propose(items, {rid: len(d) for rid, d in spec.items()}, self._make_batch)
        spec_rows: list[int] = []        # speculative decoding: requests whose drafts are verified this step
        sampled_rows: list[int] = []
        if getattr(self.model, "supported_modalities", None):      # a model that reads images (LLaVA)
            self._encode_images(items)
        embed_rows: list[np.ndarray] = []        # prompt_embeds, images: flat rows whose embedding is given ...
        embed_values: list[torch.Tensor] = []    # ... and those embeddings
        mrope = getattr(self.model, "mrope_input_positions", None)     # M-RoPE models (Qwen2-VL)
        mrope_items: list[tuple[CachedRequestState, int, int, int]] = []     # (state, first row, computed, tokens)
        for i, (st, n) in enumerate(items):
            s = starts[i]
            c = st.num_computed_tokens
            if st.prompt_embeds is not None and c < st.num_prompt_tokens:
                k = min(n, st.num_prompt_tokens - c)
                embed_rows.append(np.arange(s, s + k))
                embed_values.append(st.prompt_embeds[c:c + k])
            if st.mm_features is not None and c < st.num_prompt_tokens:
                self._image_embeds(st, c, n, int(s), embed_rows, embed_values)
            known = st.token_ids[c:c + n]
            input_ids[s:s + len(known)] = known
            if len(known) < n:
                if spec and st.req_id in spec:       # the last token, then its drafts
                    input_ids[s + len(known):s + n] = spec[st.req_id]
                else:
                    fix_dst.append(int(s) + len(known))
                    fix_src.append(self._prev_sampled_rows[st.req_id])
            positions[s:s + n] = np.arange(c, c + n)
            if mrope is not None and st.mm_features is not None:
                mrope_items.append((st, int(s), c, n))
            seq_lens[i] = c + n
            tables[i, :len(st.block_ids)] = st.block_ids[:width]
            st.num_computed_tokens = c + n
            if partial and st.req_id in partial:
                continue
            if spec and st.req_id in spec:
                spec_rows.append(i)
                continue
            sampled_rows.append(i)
        req_index = np.repeat(np.arange(num_reqs), q_lens)
        slots = tables[req_index, positions // bs].astype(np.int64) * bs + positions % bs
        # From here ``positions`` are the rotary's: a token's index, but for M-RoPE requests with images
        # (mrope_positions for the step's image rows, the text's shifted by the request's delta).
        mrope_positions = None
        if mrope_items:
            positions, mrope_positions = self._mrope_positions(mrope, positions, mrope_items)
        fixup = None
        if fix_dst:
            fixup = (to_device(fix_dst, self.device), self._prev_sampled[to_device(fix_src, self.device)])
        # Pipeline parallel: the previous stage's output for this step (stages run steps in launch order, so a
        # stage's receives pair with the previous stage's sends without tags). Outside any graph.
        received = None
        if not self.first_stage:
            received = IntermediateTensors(*pp_recv_hidden(total, self.config.hf_config.hidden_size, self.dtype,
                                                           self.device))
        lora_step = None
        if self.lora is not None:
            lora_step = self.lora.step_inputs([st.lora_request for st, _ in items], q_lens)
        # A step with given embeddings (prompt_embeds, images) runs eagerly: the graphs embed input_ids inside them.
        input_embeds = None
        if embed_values:
            input_embeds = (torch.from_numpy(np.concatenate(embed_rows)).to(self.device, non_blocking=True),
                            torch.cat(embed_values))
        # Image rows (the only ones whose three M-RoPE positions differ) come with their embeddings: eager steps.
        assert mrope_positions is None or input_embeds is not None
        graphed = True       # ``hidden`` is a view of a graph's static output
        if (total == num_reqs and input_embeds is None and self.graph_runner is not None
                and self.graph_runner.can_run(num_reqs)):
            hidden = self.graph_runner.run(input_ids, positions, slots, seq_lens, tables, fixup, received, lora_step)
        else:
            batch = self._make_batch(input_ids, positions, slots, starts, seq_lens, tables, self.kv_caches,
                                     num_decodes, lora_step)
            batch.input_embeds = input_embeds
            if mrope_positions is not None:
                batch.mrope_positions = torch.from_numpy(mrope_positions).to(self.device, non_blocking=True)
            if self.pooler is not None:
                batch.token_type_ids = self._token_type_ids(items, starts, total)
            if fixup is not None:
                batch.input_ids[fixup[0]] = fixup[1]
            if (input_embeds is None and self.piecewise_runner is not None
                    and self.piecewise_runner.can_run(total)):
                hidden = self.piecewise_runner.run(batch, received)
            elif self.pp_size > 1:
                hidden, graphed = self.model(batch.input_ids, batch.positions, batch, received), False
            else:
                hidden, graphed = self.model(batch.input_ids, batch.positions, batch), False
        if not self.last_stage:      # nothing to sample or pool here: the last stage does it
            self._send_to_next_stage(hidden)
            return LaunchedStep([st for st, _ in items], [n for _, n in items], None, starts, [])
        if graphed and self.pp_size > 1 and any(st.sampling_params.prompt_logprobs is not None for st, _ in items):
            # Pipeline parallel's batch queue launches the next step before this one finishes, and that step's
            # replay overwrites the static output that ``finish`` reads for prompt logprobs.
            hidden = hidden.clone()

        step = LaunchedStep([st for st, _ in items], [n for _, n in items], hidden, starts,
                            [items[i][0] for i in sampled_rows])
        if self.pooler is not None:
            # Every request of a pooling step is its whole prompt (the scheduler does not chunk them).
            vectors = self.pooler(hidden, starts.tolist(), [st.pooling_params for st, _ in items], input_ids)
            step.pooled = {st.req_id: vec for (st, _), vec in zip(items, vectors)}
            return step
        if sampled_rows:
            rows = to_device([int(starts[i + 1]) - 1 for i in sampled_rows], self.device)
            step.logits = self.model.compute_logits(hidden[rows])
        if spec_rows:     # every position of a request with drafts: its last token's and each draft's
            rows = to_device([r for i in spec_rows for r in range(int(starts[i]), int(starts[i + 1]))], self.device)
            step.spec_logits = self.model.compute_logits(hidden[rows])
            step.spec_requests = [items[i][0] for i in spec_rows]
            step.spec_drafts = [spec[items[i][0].req_id] for i in spec_rows]
        if sched.sample_async:
            tokens = (self.sampler.sample(step.logits, step.sampled_requests) if sampled_rows
                      else torch.empty(0, dtype=torch.long, device=self.device))
            self._remember_sampled(tokens, step.sampled_requests)
            step.tokens_host = tokens.to("cpu", non_blocking=True)
            if self.device.type == "cuda":
                step.ready = torch.cuda.Event()
                step.ready.record()
        return step

    def _token_type_ids(self, items: list, starts: np.ndarray, total: int) -> torch.Tensor | None:
        """BERT's segment ids for a pooling step: 1 from each cross-encoder pair's second text on (every request of
        a pooling step is its whole prompt); None when no request is a pair."""
        pairs = [(i, st.pooling_params.second_segment_start) for i, (st, _) in enumerate(items)
                 if st.pooling_params is not None and st.pooling_params.second_segment_start is not None]
        if not pairs:
            return None
        types = np.zeros(total, dtype=np.int64)
        for i, start in pairs:
            types[starts[i] + start:starts[i + 1]] = 1
        return torch.from_numpy(types).to(self.device, non_blocking=True)

    def _send_to_next_stage(self, out: IntermediateTensors) -> None:
        """A stage before the last: its output (hidden states and residual) to the same tensor-parallel rank of the
        next stage. The send copies them out first (a graph's static output is overwritten by its next replay)."""
        if self._pending_send is not None:
            self._pending_send[0].wait()
        self._pending_send = pp_send_hidden(out.hidden, out.residual)

    def append_sampled_tokens(self, sampled: dict[str, int]) -> None:
        """Pipeline stages before the last: the tokens the last stage sampled in a finished step, appended to these
        requests' states as the last stage appended them (the first stage embeds them at the request's next step).
        The executor forwards the last stage's output before the next launch (MultiprocExecutor.launch)."""
        requests = self.requests
        for rid, token in sampled.items():
            state = requests.get(rid)
            if state is not None:
                state.token_ids.append(token)

    @staticmethod
    def _apply_grammar(step: "LaunchedStep", grammar: GrammarOutput) -> None:
        """Structured output: tokens a request's grammar forbids get -inf before sampling. Logprobs are those of
        the constrained distribution then (as in vLLM). A request verifying drafts has one bitmask row per
        verification row (GrammarOutput lists its id that many times)."""
        ids = grammar.structured_output_request_ids
        if not step.spec_requests:
            logits_row = {st.req_id: j for j, st in enumerate(step.sampled_requests)}
            step.logits = step.logits.float()
            apply_grammar_bitmask(step.logits, grammar.grammar_bitmask, [logits_row[rid] for rid in ids])
            return
        spec_row, start = {}, 0
        for st, drafts in zip(step.spec_requests, step.spec_drafts):
            spec_row[st.req_id] = start
            start += len(drafts) + 1
        logits_row = {st.req_id: j for j, st in enumerate(step.sampled_requests)}
        plain, spec, seen = ([], []), ([], []), {}
        for i, rid in enumerate(ids):
            if rid in spec_row:
                spec[0].append(i)
                spec[1].append(spec_row[rid] + seen.get(rid, 0))
                seen[rid] = seen.get(rid, 0) + 1
            else:
                plain[0].append(i)
                plain[1].append(logits_row[rid])
        if plain[0]:
            step.logits = step.logits.float()
            apply_grammar_bitmask(step.logits, grammar.grammar_bitmask[plain[0]], plain[1])
        if spec[0]:
            step.spec_logits = step.spec_logits.float()
            apply_grammar_bitmask(step.spec_logits, grammar.grammar_bitmask[spec[0]], spec[1])

    def _remember_sampled(self, tokens: torch.Tensor, requests: list[CachedRequestState]) -> None:
        self._prev_sampled = tokens
        self._prev_sampled_rows = {r.req_id: j for j, r in enumerate(requests)}

    @torch.inference_mode()
    def finish(self, step: "LaunchedStep", grammar: GrammarOutput | None = None) -> ModelRunnerOutput:
        """The host side of a step: wait for its tokens (async), or sample now with logprobs (synchronous). The
        sampled tokens join the worker's request states. ``grammar``: the bitmask of the step's constrained rows,
        filled by the engine core while the forward pass ran (such a step is always sampled here, synchronously)."""
        out = ModelRunnerOutput()
        if not self.last_stage:       # the last stage samples; its tokens reach this one by append_sampled_tokens
            return out
        if step.pooled is not None:
            out.pooled = step.pooled
            return out
        if step.tokens_host is not None:
            assert grammar is None, "a constrained step is sampled synchronously"
            if step.ready is not None:
                step.ready.synchronize()
            for r, t in zip(step.sampled_requests, step.tokens_host.tolist()):
                out.sampled[r.req_id] = t
                r.token_ids.append(t)
            return out
        # Which rows need logits besides the sampled ones: every prompt position of requests that asked for
        # prompt logprobs.
        prompt_rows: list[tuple[CachedRequestState, int, int]] = []   # (request, flat row, prompt position)
        for i, (r, n) in enumerate(zip(step.states, step.num_new)):
            if r.sampling_params.prompt_logprobs is None:
                continue
            c = r.num_computed_tokens - n
            for p in range(c, min(c + n, r.num_prompt_tokens - 1)):
                prompt_rows.append((r, int(step.starts[i]) + p - c, p))
        if prompt_rows:
            self._prompt_logprobs(step.hidden, prompt_rows, out)
        if grammar is not None:
            self._apply_grammar(step, grammar)
        if step.spec_requests:
            self._verify_drafts(step, out)
        if step.sampled_requests:
            result = self.sampler(step.logits, step.sampled_requests)
            self._remember_sampled(result.tokens, step.sampled_requests)
            for r, tok, lp in zip(step.sampled_requests, result.token_ids, result.logprobs):
                out.sampled[r.req_id] = tok
                r.token_ids.append(tok)
                if lp is not None:
                    out.logprobs[r.req_id] = lp
        return out

    def _verify_drafts(self, step: "LaunchedStep", out: ModelRunnerOutput) -> None:
        """Speculative decoding: keep the drafts the model agrees with and sample one token after them
        (model/layers/rejection_sampler.py); a request's progress falls back past its rejected drafts, whose KV
        slots later steps write over."""
        # logprobs: raw (a raw logprobs_mode, the only kind allowed with drafts), taken before verification
        # processes the logits.
        raw_rows: dict[str, torch.Tensor] = {}
        start = 0
        for r, drafts in zip(step.spec_requests, step.spec_drafts):
            if r.sampling_params.logprobs is not None:
                raw_rows[r.req_id] = self.sampler.raw_values(step.spec_logits[start:start + len(drafts) + 1])
            start += len(drafts) + 1
        results = rejection_sample(self.sampler, step.spec_logits, step.spec_requests, step.spec_drafts)
        for r, drafts, (accepted, token) in zip(step.spec_requests, step.spec_drafts, results):
            r.num_computed_tokens -= len(drafts) - len(accepted)
            r.token_ids.extend(accepted)
            r.token_ids.append(token)
            out.sampled[r.req_id] = token
            out.accepted_draft_ids[r.req_id] = accepted
            raw = raw_rows.get(r.req_id)
            if raw is not None:       # one entry per token: the accepted drafts', then the sampled token's
                k = r.sampling_params.logprobs
                out.accepted_draft_logprobs[r.req_id] = [top_logprobs(raw[j], t, k) for j, t in enumerate(accepted)]
                out.logprobs[r.req_id] = top_logprobs(raw[len(accepted)], token, k)

    def _prompt_logprobs(self, hidden: torch.Tensor, prompt_rows, out: ModelRunnerOutput) -> None:
        rows = torch.tensor([row for _, row, _ in prompt_rows], device=self.device)
        logprobs = torch.log_softmax(self.model.compute_logits(hidden[rows]).float(), dim=-1)
        for j, (r, _, p) in enumerate(prompt_rows):
            target = r.token_ids[p + 1]
            ids, vals, lp, rank = top_logprobs(logprobs[j], target, r.sampling_params.prompt_logprobs)
            out.prompt_logprobs.setdefault(r.req_id, []).append((p + 1, target, lp, rank, ids, vals))




def _lora_manager(model: torch.nn.Module, config: EngineConfig) -> LoRAManager:
    """The adapters' slots over the model's projections (enable_lora); the CUDA graphs capture their deltas
    (worker/cuda_graphs.py)."""
    if not getattr(model, "supports_lora", False):
        raise ValueError(f"{type(model).__name__} does not support LoRA yet (LoRA adapters run on the generative "
                         f"decoder families, on the language model of LLaVA and Qwen2-VL, and on the attention and "
                         f"shared experts of the mixtures of experts; not on encoder / embedding models).")
    if config.is_pooling:
        raise ValueError("enable_lora=True with a pooling (embedding) model is not supported yet by pagedllm.")
    args = config.args
    dtype = config.dtype if args.lora_dtype == "auto" else getattr(torch, args.lora_dtype)
    return LoRAManager(model, args.max_loras, args.max_lora_rank, args.max_cpu_loras or args.max_loras, dtype,
                       config.device, hf_token=args.hf_token)


def _offload_layers(model: torch.nn.Module, cpu_offload_gb: float, device: torch.device) -> LayerOffloader:
    """Move ``cpu_offload_gb`` GiB of the model's decoder layers to CPU memory (worker/cpu_offload.py)."""
    layers = getattr(getattr(model, "model", model), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"cpu_offload_gb is not supported for {type(model).__name__}: it has no decoder layers "
                         f"(model.layers) to stream; use 0.")
    offloader = LayerOffloader(list(layers), int(cpu_offload_gb * (1 << 30)), device)
    if device.type == "cuda":
        torch.cuda.empty_cache()      # the offloaded layers' device copies
    logger.info("cpu_offload_gb=%s: %d of %d decoder layers (%.2f GiB) live in pinned CPU memory and stream to "
                "the device layer by layer.", cpu_offload_gb, offloader.num_layers, len(layers),
                offloader.offloaded_bytes / 2**30)
    return offloader


def weights_oom_message(device: torch.device, gpu_memory_utilization: float) -> str:
    """The error when loading the weights ran the device out of memory: what was loaded, what is short."""
    total = torch.cuda.get_device_properties(device).total_memory
    loaded = torch.cuda.memory_allocated(device)
    free, _ = torch.cuda.mem_get_info(device)
    # At least what was loaded plus what was still free: the weights need more than that.
    return weights_do_not_fit_message(loaded + free + 1, int(total * gpu_memory_utilization), total,
                                      gpu_memory_utilization).replace("need ", "need more than ", 1)


def _calloc_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero tensor whose pages the OS zero-fills on first touch (numpy's calloc), instead of ``torch.zeros``'s
    memset: a 4 GiB CPU KV cache then costs nothing at start (13 s under load with torch.zeros). Zeros matter:
    the torch backend's padded decode multiplies unused slots by zero probabilities, and garbage could be NaN."""
    elem = torch.tensor([], dtype=dtype).element_size()
    raw = np.zeros(int(np.prod(shape)) * elem, dtype=np.uint8)
    return torch.from_numpy(raw).view(dtype).view(shape)
