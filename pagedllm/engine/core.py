"""The engine core: the scheduler, the KV-cache bookkeeping and the model runner, driven one step at a time.

It takes validated, tokenized requests (``EngineCoreRequest``) and returns per-request token ids, finish reasons and
raw logprobs (``EngineCoreOutputs``): no strings. The front end (``LLMEngine`` offline, ``AsyncLLMEngine`` behind the
server) tokenizes, detokenizes, applies stop strings and fans out ``n``. ``run_engine_core`` is its one loop, the same
whether it runs in a thread of the front end's process or in a process of its own (engine/core_client.py).
"""
from __future__ import annotations

import gc
import logging
import os
import time
import traceback
from collections import deque
from typing import Any

from pagedllm.config import (EngineArgs, EngineConfig, verify_engine_args, verify_graph_sizes,
                             verify_tensor_parallel)
from pagedllm.engine.input_processor import load_tokenizer
from pagedllm.engine.kv_cache import KVCacheManager
from pagedllm.engine.messages import (AbortRequests, CoreBuildFailed, CoreDead, CoreReady, CoreSnapshot,
                                      CoreStepOutputs, EngineCoreOutputs, EngineCoreRequest, EngineSnapshot,
                                      Shutdown, UtilityCall, UtilityResult)
from pagedllm.engine.request import Request, RequestStatus
from pagedllm.engine.scheduler import Scheduler, StepStats
from pagedllm.engine.structured_output import StructuredOutputManager
from pagedllm.gc_heap import freeze_gc_heap, park_start_up_heap
from pagedllm.step_data import GrammarOutput, SchedulerOutput
from pagedllm.worker.executor import picklable
from pagedllm.worker.sleep_mode import MEMORY_TAGS, check_sleep_enabled, check_sleep_level, check_wake_up_tags

logger = logging.getLogger(__name__)


def create_engine_config(args: EngineArgs) -> EngineConfig:
    """Validate every argument, find the model's files (hub, GGUF conversion, local folder), read its config, and
    check the attention backend's name against the registry (which may hold backends registered at run time)."""
    from pagedllm.attention.registry import resolve_attention_backend
    from pagedllm.model.loader import resolve_model
    from pagedllm.model.quantization import quantization_config_class, resolve_quantization
    from pagedllm.model.registry import check_parallel_support
    verify_engine_args(args)       # before any download: a rejected argument fails at once
    if (args.device != "cpu" and os.path.exists("/dev/nvidiactl") and args.distributed_executor_backend in (None, "uni")
            and args.tensor_parallel_size == 1 and args.pipeline_parallel_size == 1):
        # Triton's GPU-less set-up (its source hash, its CUDA helper module) on a thread while the config loads, where
        # the model runs in this process (rank workers are processes of their own).
        from pagedllm.kernels.parallel_compile import prepare_triton_in_background
        prepare_triton_in_background()
    if args.quantization:
        quantization_config_class(args.quantization)     # an unknown method fails before any download too
    config = EngineConfig.build(args, resolve_model(args))
    check_parallel_support(config.hf_config, config.tensor_parallel_size, config.pipeline_parallel_size)
    if args.logits_processors:
        from pagedllm.model.layers.logits_processors import load_logits_processor_classes
        load_logits_processor_classes(args.logits_processors)      # a bad name or class fails now
        if config.is_pooling:
            raise ValueError("Pooling models do not support custom logits processors.")     # vLLM's words
    if args.kv_offloading_size and config.is_pooling:
        raise ValueError("kv_offloading_size is a CPU tier of the prefix cache, which pooling models do not use (each "
                         "prompt is computed whole); leave it out.")
    if args.speculative_config is not None and config.is_pooling:
        raise ValueError("speculative_config is for generative models: a pooling model generates no tokens to "
                         "speculate on; leave it out.")
    spec = args.speculative_config
    if spec is not None and spec.method == "draft_model":
        config.draft_model = _resolve_draft_model(args, config)
    config.attention_backend = resolve_attention_backend(config.attention_backend, config.device)
    config.quant_config = resolve_quantization(args.quantization, config.hf_config, config.model.model_dir,
                                               config.model.gguf_file, config.device, config.dtype,
                                               cpu_fp16_weights=config.cpu_fp16_weights)
    verify_graph_sizes(args, config.device.type == "cuda", config.runner_type, config.quant_config)
    return config


def _resolve_draft_model(args: EngineArgs, config: EngineConfig):
    """speculative_config's draft model: its files and config (as the target's are found), checked to share the
    target's vocabulary (its tokens are the target's tokens)."""
    import dataclasses

    from pagedllm.model.loader import resolve_model
    from pagedllm.model.registry import check_parallel_support
    draft_args = dataclasses.replace(args, model=args.speculative_config.model, tokenizer=None, revision=None,
                                     quantization=None, speculative_config=None)
    draft = resolve_model(draft_args)
    # Tensor parallel splits the draft over the same ranks as the target (each rank runs its shard's passes).
    check_parallel_support(draft.hf_config, config.tensor_parallel_size, 1)
    verify_tensor_parallel(config.tensor_parallel_size, draft.hf_config)
    positions = getattr(draft.hf_config, "max_position_embeddings", None)
    if draft.hf_config.model_type == "opt" and positions is not None and positions < config.max_model_len:
        # OPT learns a table of positions: the draft cannot run past it (rotary models extend theirs).
        raise ValueError(f"speculative_config draft model {args.speculative_config.model!r} has "
                         f"{positions} positions, fewer than max_model_len={config.max_model_len}; lower "
                         f"max_model_len or use another draft.")
    spec_len = args.speculative_config.max_model_len
    if spec_len is not None and spec_len > config.max_model_len:
        raise ValueError(f"speculative_config max_model_len={spec_len} cannot be larger than the target's "
                         f"max_model_len={config.max_model_len}.")
    if spec_len is not None and spec_len < config.max_model_len:
        raise ValueError(f"speculative_config max_model_len={spec_len} below max_model_len={config.max_model_len} "
                         f"is not supported yet by pagedllm (drafting would stop for longer sequences); leave it "
                         f"out or set it to max_model_len.")
    target_vocab, draft_vocab = config.hf_config.vocab_size, draft.hf_config.vocab_size
    if draft_vocab != target_vocab:
        raise ValueError(f"speculative_config draft model {args.speculative_config.model!r} has a vocabulary of "
                         f"{draft_vocab} tokens, the target model {target_vocab}: the draft must share the target's "
                         f"tokenizer.")
    return draft


class EngineCore:
    def __init__(self, config: EngineConfig):
        from pagedllm.worker.backends import create_executor

        self.config = config
        t0 = time.perf_counter()
        self.executor = create_executor(config)
        try:
            self._start(config, t0)
        except BaseException:
            # A start that fails or is interrupted here ends the workers now: the exception's traceback keeps this
            # half-built core, and with it the worker processes and their memory, alive (a notebook keeps it in
            # sys.last_traceback).
            self.executor.shutdown()
            raise

    def _start(self, config: EngineConfig, t0: float) -> None:
        """The rest of the start-up, once the executor (the model) is up: the KV cache and the scheduler."""
        # The in-process ModelRunner ("uni"; tests and tools look at it), None when the model runs in workers.
        self.runner = self.executor.runner
        num_blocks = self.executor.determine_num_blocks()    # the smallest over the ranks
        capacity = num_blocks * config.block_size
        if num_blocks <= 0:
            raise ValueError("No memory left for the KV cache: raise gpu_memory_utilization (GPU) or set "
                             "kv_cache_memory_gb, or lower max_num_batched_tokens.")
        if capacity < config.max_model_len and config.args.max_model_len == -1:
            # max_model_len='auto' (vLLM's): the model's own length did not fit, so the longest that does.
            logger.warning("max_model_len='auto': the model's %d tokens do not fit in the KV cache (%d blocks of %d "
                           "tokens); max_model_len is %d.", config.max_model_len, num_blocks, config.block_size,
                           capacity)
            config.max_model_len = capacity
        if capacity < config.max_model_len:
            raise ValueError(
                f"The model's max seq len ({config.max_model_len}) is larger than the maximum number of tokens that "
                f"can be stored in KV cache ({capacity}). Try increasing the KV cache size or decreasing "
                f"max_model_len when initializing the engine.")
        # swap_space: CPU blocks for preempted requests' KV (pooling requests are never preempted mid-way).
        num_swap_blocks = self.executor.num_swap_blocks() if not config.is_pooling else 0
        self.executor.allocate_kv_cache(num_blocks, num_swap_blocks)
        config.num_gpu_blocks, config.num_cpu_blocks = num_blocks, num_swap_blocks     # cache_config reports them
        t_allocated = time.perf_counter()
        # Pooling models: no prefix caching (a mean-pooled or bidirectional prompt needs every token computed).
        self.kv_cache = KVCacheManager(num_blocks, config.block_size,
                                       config.args.enable_prefix_caching and not config.is_pooling,
                                       num_swap_blocks=num_swap_blocks,
                                       offload_to_cpu=bool(config.args.kv_offloading_size))
        self.scheduler = Scheduler(self.kv_cache, config.max_num_seqs, config.max_num_batched_tokens,
                                   config.max_model_len, config.enable_chunked_prefill,
                                   config.long_prefill_token_threshold, config.max_num_seqs_per_request,
                                   preemption_mode=config.args.preemption_mode,
                                   max_loras=config.args.max_loras if config.args.enable_lora else 0,
                                   speculative_config=config.args.speculative_config,
                                   disable_chunked_mm_input=config.args.disable_chunked_mm_input)
        self.num_blocks = num_blocks
        self.structured_output = StructuredOutputManager(config, load_tokenizer)
        self._failed_requests: dict[str, BaseException] = {}
        # Async scheduling: the launched step whose tokens the host has not seen yet.
        self._in_flight: tuple[SchedulerOutput, Any] | None = None
        self._async_scheduling = config.async_scheduling
        # Pipeline parallel: up to pipeline_parallel_size steps in flight (vLLM's batch queue), so stage k runs step
        # N while stage k+1 runs step N-1; a request waits for its sampled token before it is scheduled again.
        self._batch_queue: deque | None = None
        if config.pipeline_parallel_size > 1:
            self._batch_queue = deque()
            self.scheduler.schedule_tokens_in_flight = False
        self.startup_seconds = time.perf_counter() - t0
        # The start-up timeline (info()): what ran before this core (set by run_engine_core), the workers' phases
        # (their startup_info), then ours.
        self.startup_phases_before: dict[str, float] = {}
        self.scheduler_startup_seconds = time.perf_counter() - t_allocated
        # Sleep mode: what is asleep ("weights", "kv_cache"; "scheduling" for level 0). Nothing is scheduled while
        # any tag sleeps; requests that arrive wait in the queue until wake_up (as vLLM's).
        self.sleeping_tags: set[str] = set()
        # pause_generation (vLLM's weight-sync pause): while paused, requests that arrive are held here, outside the
        # scheduler, until resume; ``_frozen`` ("keep") stops scheduling the requests already here as well.
        self.paused = False
        self._frozen = False
        self._held: list[EngineCoreRequest] = []

    # ---- requests -----------------------------------------------------------------------------------------------
    def add_request(self, req: EngineCoreRequest) -> None:
        if self.paused:
            self._held.append(req)
            return
        request = Request(req.request_id, req.prompt_token_ids, req.sampling_params, req.eos_token_ids,
                          req.arrival_time, req.priority, max_tokens=req.max_tokens, cache_salt=req.cache_salt,
                          pooling_params=req.pooling_params, parent_request_id=req.parent_request_id,
                          lora_request=req.lora_request, prompt_embeds=req.prompt_embeds,
                          eos_token_id=req.eos_token_id, mm_features=req.mm_features)
        # A prompt_embeds prompt has no token ids to read (its ids are placeholders).
        prompt_ids = req.prompt_token_ids if req.prompt_embeds is None else []
        so = req.sampling_params.structured_outputs
        if so is not None:
            request.reasoning_end_ids = self.structured_output.reasoning_gate(prompt_ids, req.reasoning_ended)
        request.thinking_budget = self.structured_output.thinking_budget(prompt_ids,
                                                                         req.sampling_params.thinking_token_budget)
        # Compiled once per spec, here in the core (the front end has validated it); a grammar that is not cached
        # compiles in the background and the request joins the scheduler when it is ready (_admit_compiled).
        if so is not None and not self.structured_output.submit(request, so, req.eos_token_ids):
            return
        self.scheduler.add_request(request)

    def abort_requests(self, request_ids) -> None:
        """End these requests now (a user abort, or a stop string the front end found); their blocks are freed."""
        self.structured_output.discard(request_ids)
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)
        if self._held:
            aborted = set(request_ids)
            self._held = [req for req in self._held if req.request_id not in aborted]

    def has_unfinished_requests(self) -> bool:
        return (self.scheduler.has_unfinished() or self._in_flight is not None or bool(self._batch_queue)
                or self.structured_output.num_pending() > 0)

    def can_step(self) -> bool:
        """Whether a step has work: requests here, and neither asleep nor paused with "keep"."""
        return self.has_unfinished_requests() and not self.sleeping_tags and not self._frozen

    def take_failed_requests(self) -> dict[str, BaseException]:
        """Requests that ended with an error outside a step (their grammar failed to compile), for their callers."""
        failed, self._failed_requests = self._failed_requests, {}
        return failed

    def _admit_compiled(self) -> None:
        """Requests whose grammar has compiled join the scheduler. With nothing else to run, wait a little for one
        (10 ms at most, so new requests and aborts are not held up)."""
        so = self.structured_output
        if not so.num_pending():
            return
        if not self.scheduler.has_unfinished() and self._in_flight is None and not self._batch_queue:
            so.wait(0.01)
        ready, failed = so.take_ready()
        for request in ready:
            self.scheduler.add_request(request)
        self._failed_requests.update(failed)

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        """Forget every cached block hash; only when no request holds blocks, unless ``reset_running_requests``
        puts the running requests back in the queue first (their KV is computed again). Returns whether it was
        reset. The prefix cache's CPU tier (kv_offloading_size, vLLM's offloading connector) keeps its blocks, and
        takes the device's, unless ``reset_connector`` (the dev route's reset_external) clears it too, as vLLM's
        reset leaves its connector's cache; without a tier, ``reset_connector`` warns and returns False, as vLLM's
        does without a connector."""
        if reset_running_requests:
            self.scheduler.preempt_all()
        done = self.kv_cache.reset_prefix_cache(keep_cpu_tier=not reset_connector)
        if reset_connector and not self.kv_cache.offload:
            logger.warning("reset_connector called but no KV connector is configured (no kv_offloading_size).")
            return False
        return done

    # ---- sleep mode (worker/sleep_mode.py) ------------------------------------------------------------------------
    def sleep(self, level: int = 1) -> tuple[EngineCoreOutputs, StepStats]:
        """Stop scheduling; finish the steps in flight (their outputs are returned, for the front end); at level 1
        and 2 put every request still here back in the queue (its KV is computed again after wake-up), reset the
        prefix cache and have the workers give back their weights' and KV cache's device memory."""
        check_sleep_level(level)
        check_sleep_enabled(self.config.args.enable_sleep_mode, level)
        tags = {"scheduling"} if level == 0 else set(MEMORY_TAGS)
        if tags <= self.sleeping_tags:
            logger.warning("The engine is already sleeping.")
            return EngineCoreOutputs(), StepStats()
        t0 = time.perf_counter()
        asleep_before = set(self.sleeping_tags)
        self.sleeping_tags |= tags
        drained = self._finish_in_flight()
        if level > 0:
            self.scheduler.preempt_all()
            self.kv_cache.reset_prefix_cache()
            try:
                self.executor.collective_rpc("sleep", (level,))
            except BaseException:
                self.sleeping_tags = asleep_before       # a worker refused (cpu_offload_gb): still awake
                raise
            logger.info("It took %.6f seconds to fall asleep.", time.perf_counter() - t0)
        return drained

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Take back the memory of ``tags`` ("weights", "kv_cache"; "scheduling" ends a level-0 pause; None: all);
        scheduling resumes once no tag sleeps."""
        waking = check_wake_up_tags(tags) & self.sleeping_tags
        if not waking:
            logger.warning("The engine is not sleeping%s.", "" if tags is None else f" (tags {sorted(tags)})")
            return
        t0 = time.perf_counter()
        memory = sorted(waking & set(MEMORY_TAGS))
        if memory:
            self.executor.collective_rpc("wake_up", (memory,))
            logger.info("It took %.6f seconds to wake up tags %s.", time.perf_counter() - t0, memory)
        self.sleeping_tags -= waking

    def is_sleeping(self) -> bool:
        return bool(self.sleeping_tags)

    # ---- pause / resume (vLLM's pause_generation; the front end's AsyncLLMEngine.pause_generation) ----------------
    def pause(self, keep: bool) -> tuple[EngineCoreOutputs, StepStats]:
        """Hold every request that arrives from now on until ``resume``; ``keep``: stop scheduling the requests here
        too (the steps in flight finish; their outputs are returned, for the front end). Otherwise the requests
        here run to their end (the front end aborts them first for vLLM's mode "abort")."""
        self.paused = True
        self._frozen = self._frozen or keep
        return self._finish_in_flight() if self._frozen else (EngineCoreOutputs(), StepStats())

    def clear_cache_after_pause(self) -> bool:
        """vLLM's ``clear_cache`` of a pause (new weights must not meet KV computed with the old ones): the prefix
        cache's hashes are dropped, and requests kept by a "keep" pause give back their KV (computed again after
        resume)."""
        return self.reset_prefix_cache(reset_running_requests=self._frozen, reset_connector=self.kv_cache.offload)

    def resume(self) -> None:
        """Schedule again: the requests held while paused join the queue in their arrival order."""
        self.paused = self._frozen = False
        held, self._held = self._held, []
        for req in held:
            try:
                self.add_request(req)
            except BaseException as e:   # noqa: BLE001 - reported to its caller with the next step
                self._failed_requests[req.request_id] = e

    def is_paused(self) -> bool:
        return self.paused

    # ---- LoRA adapters (vLLM's add_lora / remove_lora / list_loras) ---------------------------------------------
    def add_lora(self, lora_request) -> bool:
        """Load an adapter on every worker now (checked: a bad folder, rank or module is a ValueError here);
        ``load_inplace``: its weights replaced, and the prefix cache told."""
        added = self.executor.collective_rpc("add_lora", (lora_request,))[0]
        if lora_request.load_inplace:
            self.kv_cache.lora_weights_changed(lora_request.lora_int_id)
        return added

    def remove_lora(self, lora_id: int) -> bool:
        self.kv_cache.lora_weights_changed(lora_id)     # the id may come back with other weights in its folder
        return self.executor.collective_rpc("remove_lora", (lora_id,))[0]

    def list_loras(self) -> set[int]:
        return self.executor.collective_rpc("list_loras")[0]

    def pin_lora(self, lora_id: int) -> bool:
        return self.executor.collective_rpc("pin_lora", (lora_id,))[0]

    def collective_rpc(self, method, args: tuple = (), kwargs: dict | None = None) -> list:
        """A worker method (its name, or a function taking the worker first) on every rank; each rank's result."""
        return self.executor.collective_rpc(method, tuple(args), kwargs)

    def _finish_in_flight(self) -> tuple[EngineCoreOutputs, StepStats]:
        """Finish the steps launched and not finished yet (async scheduling, pipeline parallel's queue)."""
        outputs, stats = EngineCoreOutputs(), StepStats()
        if self._in_flight is not None:
            sched, launched = self._in_flight
            self._in_flight = None
            self._add(outputs, stats, *self.scheduler.update_from_output(sched, self.executor.finish(launched)))
        while self._batch_queue:
            sched, launched, grammar = self._batch_queue.popleft()
            self._add(outputs, stats, *self.scheduler.update_from_output(
                sched, self.executor.finish(launched, grammar=grammar)))
        return outputs, stats

    def snapshot(self) -> EngineSnapshot:
        pool, swap, sched = self.kv_cache.pool, self.kv_cache.swap_pool, self.scheduler
        # A request whose grammar is compiling waits too (vLLM counts its WAITING_FOR_FSM requests as waiting).
        waiting = sched.num_waiting + self.structured_output.num_pending() + len(self._held)
        return EngineSnapshot(sched.num_running, waiting, self.kv_cache.usage(),
                              pool.query_tokens, pool.hit_tokens, sched.num_preemptions,
                              pool.num_free_blocks, pool.num_blocks, len(sched.swapped),
                              swap.num_free_blocks if swap is not None else 0, swap.num_blocks if swap is not None else 0,
                              sched.num_blocks_swapped_out, sched.num_blocks_swapped_in,
                              self.kv_cache.num_blocks_offloaded, self.kv_cache.num_offload_hit_blocks,
                              *sched.lora_names(), sched.spec_counters())

    # ---- one step -----------------------------------------------------------------------------------------------
    def step(self) -> tuple[EngineCoreOutputs, StepStats]:
        """Schedule and launch a step; return the outputs of whatever finished on the device.

        Synchronous: the step's own outputs. Async scheduling (CUDA default): step N is launched first, then the
        host waits for step N-1's tokens and turns them into outputs while the device runs step N; step N already
        computes step N-1's tokens, taking them from the device (a request that turns out to have stopped just
        drops its extra token). Steps that need the host's view of every token before sampling (logprobs,
        penalties, structured output) are sampled synchronously, after the step in flight is processed.

        Structured output: the step's forward pass is launched first and the grammar bitmask is filled while the
        device runs it, then handed to ``finish`` (vLLM v1's execute-then-sample with a ``GrammarOutput``). The
        matchers then stand after the previous step's tokens: a step in which a constrained request samples is never
        left in flight (it is sampled here, synchronously), so no constrained request has an unaccepted token when
        the next step is scheduled; the step in flight, processed below, has no constrained request sampling."""
        self._admit_compiled()
        if self.sleeping_tags or self._frozen:       # asleep / paused with "keep": nothing new is scheduled
            return self._finish_in_flight()
        if self._batch_queue is not None:
            return self._step_with_batch_queue()
        sched = self.scheduler.schedule()
        launched = None
        constrained: list[Request] = []
        if not sched.is_empty:
            constrained = self._constrained_requests(sched)
            sched.sample_async = (self._async_scheduling and not constrained and self._can_sample_async(sched))
            launched = self.executor.launch(sched)
        grammar = self._grammar_output(constrained, sched.spec_token_ids)   # on the host, while the device runs
        outputs = EngineCoreOutputs()
        stats = StepStats(num_preemptions=len(sched.preempted_req_ids))
        if self._in_flight is not None:
            prev_sched, prev_step = self._in_flight
            self._in_flight = None
            self._add(outputs, stats, *self.scheduler.update_from_output(prev_sched, self.executor.finish(prev_step)))
        if launched is not None:
            if sched.sample_async:
                self._in_flight = (sched, launched)
            else:
                self._add(outputs, stats, *self.scheduler.update_from_output(
                    sched, self.executor.finish(launched, grammar=grammar)))
        return outputs, stats

    def _step_with_batch_queue(self) -> tuple[EngineCoreOutputs, StepStats]:
        """Pipeline parallel: launch a step while fewer than pipeline_parallel_size are in flight and return at once;
        when the queue is full (or nothing more can be scheduled), finish the oldest step and return its outputs.

        A step's requests that sample hold a placeholder until it is finished, and the scheduler skips them until
        then (``schedule_tokens_in_flight``), so a step in flight never depends on another's token, only on KV
        written by earlier steps, which every stage runs in launch order. Such steps are sampled by the last stage
        as soon as its forward pass ends (``sample_async``) unless they need the host's tokens (logprobs,
        penalties) or a grammar bitmask; the bitmask is made at launch (the request's previous step is finished)."""
        outputs, stats = EngineCoreOutputs(), StepStats()
        queue = self._batch_queue
        if len(queue) < self.config.pipeline_parallel_size:
            sched = self.scheduler.schedule()
            stats.num_preemptions = len(sched.preempted_req_ids)
            if not sched.is_empty:
                constrained = self._constrained_requests(sched)
                sched.sample_async = not constrained and self._can_sample_async(sched)
                queue.append((sched, self.executor.launch(sched), self._grammar_output(constrained)))
                if len(queue) < self.config.pipeline_parallel_size:
                    return outputs, stats
        if queue:
            sched, launched, grammar = queue.popleft()
            self._add(outputs, stats, *self.scheduler.update_from_output(
                sched, self.executor.finish(launched, grammar=grammar)))
        return outputs, stats

    @staticmethod
    def _add(outputs: EngineCoreOutputs, stats: StepStats, new_outputs: EngineCoreOutputs,
             new_stats: StepStats) -> None:
        outputs.extend(new_outputs)
        stats.num_prompt_tokens += new_stats.num_prompt_tokens
        stats.num_generation_tokens += new_stats.num_generation_tokens

    def _constrained_requests(self, sched: SchedulerOutput) -> list[Request]:
        """The constrained requests that sample this step (a prompt chunk that does not reach the end samples
        nothing and needs no mask)."""
        return [item.request for item in self.scheduler.launched_items(sched.step_id)
                if item.will_sample and (item.request.grammar is not None and item.request.reasoning_end_ids is None
                                         or item.request.thinking_budget is not None
                                         and item.request.thinking_budget.forced is not None)]

    def _grammar_output(self, constrained: list[Request],
                        spec_token_ids: dict[str, list[int]] | None = None) -> GrammarOutput | None:
        """One bitmask for every constrained request that samples this step (rows in the order of the ids); a request
        verifying drafts has 1 + k rows in a row (its id repeated), the mask after each draft."""
        if not constrained:
            return None
        drafts = [spec_token_ids.get(r.request_id, ()) for r in constrained] if spec_token_ids else None
        ids = [r.request_id for r in constrained]
        if drafts:
            ids = [rid for rid, d in zip(ids, drafts) for _ in range(1 + len(d))]
        return GrammarOutput(ids, self.structured_output.fill_bitmask(constrained, drafts))

    def _can_sample_async(self, sched: SchedulerOutput) -> bool:
        """Can this step be sampled before the host has seen the previous step's tokens? Not when the sampler
        needs every token on the host (penalties, multi-token bad words) or the host must read logprobs. (Nor when
        a grammar must see the previous token before it can mask the next one: ``step`` checks that.) Nor with
        custom logits processors: they read each request's output tokens as they stand."""
        if self.config.args.logits_processors:
            return False
        for item in self.scheduler.launched_items(sched.step_id):
            sp = item.request.sampling_params
            if (sp.logprobs is not None or sp.prompt_logprobs is not None or sp.repetition_penalty != 1.0
                    or sp.frequency_penalty or sp.presence_penalty
                    or sp.needs_host_tokens):
                return False
            if item.request.reasoning_end_ids is not None or item.request.thinking_budget is not None:
                # Thinking before its grammar, or under a thinking budget: the step after the end-of-thinking token
                # (or the one the budget forces, which a <think> just sampled may start counting for) needs its
                # mask, so the host must see each token before the next step is launched.
                return False
        return True

    def info(self) -> dict:
        """What the front end learns once the core is built."""
        runner = self.executor.startup_info()
        phases = {**self.startup_phases_before, **runner.get("startup_phases", {}),
                  "scheduler + block pool": self.scheduler_startup_seconds}
        # "snapshot": the idle engine's gauges (every block free) until its first step sends one.
        return {"config": self.config, "num_blocks": self.num_blocks, "startup_seconds": self.startup_seconds,
                "runner": runner, "startup_phases": phases, "snapshot": self.snapshot()}

    def shutdown(self) -> None:
        """End the workers (multi-process executor); the core cannot step afterwards."""
        self.executor.shutdown()


# ---- the engine-core loop ----------------------------------------------------------------------------------------
def run_engine_core(engine_args: EngineArgs, conn, *, step_trace: str | None = None, on_built=None,
                    spawned_at: float | None = None, freeze_heap: bool = False) -> None:
    """Build the engine core, then apply the front end's messages and step while there is work; block when there is
    none. ``conn`` is the core's end of a transport (``poll(timeout)``, ``recv()``, ``send(msg)``: a pipe end, or
    the queue pair of engine/core_client.py). Ends on ``Shutdown`` or when the front end's end closes.
    ``freeze_heap``: this is the engine-core process (it only serves): once built, its start-up objects are frozen
    out of the garbage collector (pagedllm/gc_heap.py)."""
    entered = time.monotonic()
    try:
        if freeze_heap:
            # The engine-core process: no collections through transformers' imports and the HF config (one started
            # early ran its own imports so: early_engine._child_main); no device tensor exists yet. What they made
            # is parked until the freeze after the answer, and the collector is on again for the model's build.
            gc.disable()
        config = create_engine_config(engine_args)
        if freeze_heap:
            park_start_up_heap()
        configured = time.monotonic()
        core = EngineCore(config)
    except BaseException as e:   # noqa: BLE001 - reported to the front end
        conn.send(CoreBuildFailed(picklable(e)))
        return
    # ``spawned_at``: time.monotonic() in the front end when it started this process (one clock per host), so the
    # timeline shows the new interpreter's imports too.
    before = {"engine process start": entered - spawned_at} if spawned_at is not None else {}
    core.startup_phases_before = {**before, "config": configured - entered}
    if on_built is not None:
        on_built(core)
    info = core.info()
    info["ready_at"] = time.monotonic()     # the front end times the hand-over of this message (start-up timeline)
    conn.send(CoreReady(info))
    if freeze_heap:
        # After the answer, while the front end reads it and builds its app: before it, its collection held the
        # server back (217 ms of a served SmolLM2 start on the 2-core CPU VM; docs/perf.md, session 33). Messages
        # that come meanwhile wait in the pipe.
        freeze_gc_heap("engine core", parked=True)
    trace = StepTrace(step_trace) if step_trace else None
    while True:
        if not core.can_step():
            conn.poll(None)
        t_loop = time.perf_counter()
        changed = False
        failed: dict[str, BaseException] = {}
        while conn.poll(0):
            try:
                msg = conn.recv()
            except EOFError:
                return
            if isinstance(msg, EngineCoreRequest):
                try:
                    core.add_request(msg)
                except BaseException as e:   # noqa: BLE001 - reported to the caller
                    failed[msg.request_id] = picklable(e)
            elif isinstance(msg, AbortRequests):
                core.abort_requests(msg.request_ids)
            elif isinstance(msg, UtilityCall):
                _run_utility(core, msg, conn)
            elif isinstance(msg, Shutdown):
                if trace is not None:
                    trace.flush()
                return
            changed = True
        if not core.can_step():
            if changed:
                conn.send(CoreStepOutputs(EngineCoreOutputs(), 0, 0, 0, core.snapshot(), time.time(), failed) if failed
                          else CoreSnapshot(core.snapshot()))
            continue
        t_step = time.perf_counter()
        try:
            outputs, stats = core.step()
        except BaseException as e:   # noqa: BLE001 - any failure of the model step kills the engine
            conn.send(CoreDead(picklable(e), traceback.format_exc()))
            return
        failed.update({rid: picklable(e) for rid, e in core.take_failed_requests().items()})
        t_stepped = time.perf_counter()
        snapshot = core.snapshot()
        conn.send(CoreStepOutputs(outputs, stats.num_prompt_tokens, stats.num_generation_tokens,
                                  stats.num_preemptions, snapshot, time.time(), failed))
        if trace is not None:
            trace.add(t_loop, t_step, t_stepped, time.perf_counter(), snapshot, stats, len(outputs))


# What the front end may call on the core by name (UtilityCall): vLLM's engine-core utilities.
CORE_UTILITIES = frozenset({"sleep", "wake_up", "is_sleeping", "reset_prefix_cache", "collective_rpc", "add_lora",
                            "remove_lora", "list_loras", "pin_lora", "pause", "resume", "is_paused",
                            "clear_cache_after_pause"})


def _run_utility(core: EngineCore, msg: UtilityCall, conn) -> None:
    """Run one of CORE_UTILITIES and answer with its result or error. ``sleep`` first sends the outputs of the steps
    it finished (``pause`` too), so no request's tokens are lost."""
    try:
        if msg.method not in CORE_UTILITIES:
            raise ValueError(f"{msg.method!r} is not an engine-core utility.")
        value = getattr(core, msg.method)(*msg.args, **msg.kwargs)
        if msg.method in ("sleep", "pause"):
            outputs, stats = value
            value = None
            conn.send(CoreStepOutputs(outputs, stats.num_prompt_tokens, stats.num_generation_tokens,
                                      stats.num_preemptions, core.snapshot(), time.time()))
        conn.send(UtilityResult(msg.call_id, value, None))
    except BaseException as e:   # noqa: BLE001 - reported to the caller
        conn.send(UtilityResult(msg.call_id, None, picklable(e)))


class StepTrace:
    """``PAGEDLLM_STEP_TRACE=FILE``: one JSON line per engine-core step, for finding where a served step's time
    goes (benchmarks/serve_step_trace.py reads it). Times in ms: ``msgs`` applying the requests and aborts that
    arrived, ``step`` scheduling + launching + waiting for the previous step's tokens, ``send`` handing the outputs
    to the front end; ``gap`` from the end of the previous iteration to this one (idle); ``gc`` the garbage
    collector's own time in this process since the previous line, and ``gc2`` its full (generation-2) collections;
    ``alloc_retries`` the CUDA caching allocator's cumulative retries (cache freed, device synchronized).
    Written in blocks, so a killed process loses at most the last block."""

    def __init__(self, path: str):
        import gc
        self.path = path
        self.rows: list[str] = []
        self.last_end: float | None = None
        self.gc_seconds = 0.0
        self.gc_full = 0
        self._gc_start = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_seconds += time.perf_counter() - self._gc_start
            self.gc_full += info["generation"] == 2

    def add(self, t_loop: float, t_step: float, t_stepped: float, t_end: float, snap: EngineSnapshot,
            stats: StepStats, num_outputs: int) -> None:
        import json
        gap = 0.0 if self.last_end is None else t_loop - self.last_end
        self.last_end = t_end
        ms = lambda x: round(x * 1e3, 3)   # noqa: E731
        self.rows.append(json.dumps({
            "t": round(t_loop, 6), "gap": ms(gap), "msgs": ms(t_step - t_loop), "step": ms(t_stepped - t_step),
            "send": ms(t_end - t_stepped), "running": snap.num_running, "waiting": snap.num_waiting,
            "prompt_tokens": stats.num_prompt_tokens, "gen_tokens": stats.num_generation_tokens,
            "outputs": num_outputs, "gc": ms(self.gc_seconds), "gc2": self.gc_full,
            "alloc_retries": self._alloc_retries()}))
        self.gc_seconds, self.gc_full = 0.0, 0
        if len(self.rows) >= 200:
            self.flush()

    @staticmethod
    def _alloc_retries() -> int:
        """torch's CUDA caching allocator: how many allocations so far had to free its cache and retry (each one
        synchronizes the device) -- in this process, i.e. the uni executor's model runner."""
        import torch
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return 0
        return int(torch.cuda.memory_stats().get("num_alloc_retries", 0))

    def flush(self) -> None:
        if not self.rows:
            return
        with open(self.path, "a") as f:
            f.write("\n".join(self.rows) + "\n")
        self.rows = []
