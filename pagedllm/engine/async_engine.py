"""AsyncLLMEngine: the engine for asyncio servers — the front end in the server's process, the engine core in a
thread or a process of its own (engine/core_client.py).

The front end does the string work: the input processor tokenizes and validates (a bad request fails alone, in its
caller, before anything reaches the core), the output processor detokenizes, applies stop strings, gathers ``n``
completions and formats logprobs, in the client's reader thread. The core only schedules and runs steps; requests
that arrive during a step join the next one (continuous batching).

Failure rules: a client that goes away aborts its request, whose KV blocks are freed before the next step; an
exception inside a step (or a dead engine process) marks the engine dead: every request in flight gets the error,
``check_health`` raises (``/health`` answers 500) and new requests are refused.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import warnings
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Mapping

from pagedllm import envs
from pagedllm.config import EngineArgs, EngineConfig, ModelConfig
from pagedllm.engine.core_client import EngineCoreClient
from pagedllm.engine.input_processor import EarlyTokenizers, InputProcessor, PromptType, warn_trace_headers_unused
from pagedllm.engine.messages import (AbortRequests, CoreDead, CoreSnapshot, CoreStepOutputs, EngineSnapshot,
                                      UtilityCall, UtilityResult)
from pagedllm.engine.multimodal import has_media
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.engine.scheduler import StepStats
from pagedllm.inputs import is_embeds_prompt
from pagedllm.logger import log_engine_start, printable_id
from pagedllm.lora.request import LoRARequest, needs_loading
from pagedllm.outputs import CompletionOutput, PoolingRequestOutput, RequestOutput
from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import RequestOutputKind, SamplingParams
from pagedllm.usage.usage_lib import UsageContext
from pagedllm.worker.sleep_mode import (SLEEP_MODES, check_sleep_enabled, check_sleep_level, check_sleep_mode,
                                       check_wake_up_tags)

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine stopped after an error; the server must be restarted."""


class EngineSleepingError(RuntimeError):
    """A request in flight was aborted because the engine was put to sleep (``sleep(mode="abort")``)."""


class EngineShutdownError(RuntimeError):
    """The server is shutting down: the request was aborted (``abort_all``)."""


# ---- output streams --------------------------------------------------------------------------------------------------
def merge_outputs(a: RequestOutput, b: RequestOutput, kind: RequestOutputKind) -> RequestOutput:
    """``b`` came after ``a`` for the same request; one output saying both. Deltas concatenate, cumulative and
    final-only outputs are replaced by the newer one."""
    if kind != RequestOutputKind.DELTA:
        return b
    by_index = {c.index: c for c in a.outputs}
    merged = []
    for c in b.outputs:
        old = by_index.pop(c.index, None)
        if old is None:
            merged.append(c)
            continue
        logprobs = None if old.logprobs is None and c.logprobs is None else (old.logprobs or []) + (c.logprobs or [])
        merged.append(CompletionOutput(index=c.index, text=old.text + c.text, token_ids=old.token_ids + c.token_ids,
                                       cumulative_logprob=c.cumulative_logprob, logprobs=logprobs,
                                       finish_reason=c.finish_reason or old.finish_reason,
                                       stop_reason=c.stop_reason if c.finish_reason else old.stop_reason,
                                       lora_request=c.lora_request))
    merged.extend(by_index.values())
    merged.sort(key=lambda c: c.index)
    return RequestOutput(request_id=b.request_id, prompt=b.prompt, prompt_token_ids=b.prompt_token_ids,
                         prompt_logprobs=b.prompt_logprobs if b.prompt_logprobs is not None else a.prompt_logprobs,
                         outputs=merged, finished=b.finished, metrics=b.metrics,
                         num_cached_tokens=b.num_cached_tokens, lora_request=b.lora_request)


class RequestStream:
    """The outputs of one request, as an async iterator. Outputs that queued up while the consumer was busy come
    merged into one (a slow client gets bigger chunks, not a growing backlog). A consumer that is cancelled while
    waiting aborts the request; one that stops early must call ``abort()`` (``AsyncLLMEngine.generate`` does), else
    the request is aborted only when the stream is garbage-collected."""

    def __init__(self, request_id: str, engine: "AsyncLLMEngine", loop: asyncio.AbstractEventLoop,
                 kind: RequestOutputKind):
        self.request_id = request_id
        self._engine = engine
        self._loop = loop
        self._kind = kind
        # A deque and the one waiting consumer's future, not an asyncio.Queue: this runs once per token per stream,
        # and the queue's get / put_nowait (a future per get, its getters deque, unfinished-task counting) were
        # ~6% of the API server's CPU in a streamed run (docs/perf.md, session 35 (CPU)).
        self._items: deque = deque()
        self._waiter: asyncio.Future | None = None
        self._error: BaseException | None = None
        self.finished = False

    def put(self, item: RequestOutput | BaseException | None) -> None:   # event loop thread; None: the end
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def fail(self, error: BaseException) -> None:   # event loop thread
        """End the stream with ``error``, whether its consumer waits now or asks next."""
        self._error = error
        self.put(error)

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self._error is not None:
            error, self._error = self._error, None
            self.finished = True
            raise error
        if self.finished:
            raise StopAsyncIteration
        items = self._items
        if not items:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter     # put() sets it after appending: items is not empty afterwards
            except BaseException:   # cancelled: the caller is gone
                self._waiter = None
                self.abort()
                raise
        item = items.popleft()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item is None:
            self.finished = True
            raise StopAsyncIteration
        while not item.finished and items:
            nxt = items.popleft()
            if nxt is None:
                self.finished = True     # the end: this output is the last
                break
            if isinstance(nxt, BaseException):
                self._error = nxt
                break
            item = merge_outputs(item, nxt, self._kind)
        if item.finished:
            self.finished = True
        return item

    def abort(self) -> None:
        if not self.finished:
            self.finished = True
            self._engine._abort_nowait(self.request_id)

    def __del__(self) -> None:   # never started or dropped without aborting: don't leak its KV blocks
        if not self.finished:
            try:
                self._engine._abort_nowait(self.request_id)
            except Exception:
                pass


# ---- the engine ------------------------------------------------------------------------------------------------------
class AsyncLLMEngine:
    def __init__(self, engine_args: EngineArgs, *, log_requests: bool = True, metrics: Any = None,
                 stats_log_interval_s: float | None = None, engine_process: bool = False, prestarted=None,
                 while_building: Callable[[], None] | None = None):
        """``while_building``: the caller's own start-up work, run while an engine-core process builds (after this
        engine's tokenizers load; not once the core has answered)."""
        t0 = time.perf_counter()
        self.engine_args = engine_args
        self.log_requests = log_requests
        self.metrics = metrics              # pagedllm.metrics.EngineMetrics or None
        # Seconds between statistics lines, also how often an idle engine looks (None: VLLM_LOG_STATS_INTERVAL, 10).
        self.stats_log_interval_s = (stats_log_interval_s if stats_log_interval_s is not None
                                     else envs.log_stats_interval())
        self._streams: dict[str, RequestStream] = {}
        # Calls of the core's utilities (sleep, wake_up, collective_rpc, ...) waiting for their answer, by call id.
        self._calls: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._call_ids = itertools.count()
        self._dead: BaseException | None = None
        self._stopped = False
        self._loras_added: dict[int, LoRARequest] = {}      # adapters add_lora has checked and loaded, by id
        self.snapshot = EngineSnapshot()
        # The output processor is shared by the event loop (adds, aborts) and the client's reader thread (outputs).
        self._lock = threading.RLock()   # re-entrant: a stream's __del__ may abort while it is held
        self._client = EngineCoreClient(engine_args, engine_process=engine_process, on_message=self._on_message,
                                        on_idle=self._log_stats, on_closed=self._die,
                                        idle_interval_s=self.stats_log_interval_s, prestarted=prestarted)
        # Two tokenizers: HF fast tokenizers must not be used from two threads at once, and inputs are tokenized in
        # ``_tokenizer_pool`` while outputs are detokenized in the reader thread. Loaded while an engine process
        # builds where their folder is known before (EarlyTokenizers).
        tokenizers = EarlyTokenizers(engine_args, count=2)

        def meanwhile(core_answered: Callable[[], bool]) -> None:
            tokenizers.load(core_answered)
            if while_building is not None and not core_answered():
                while_building()
        info = self._client.start(meanwhile)     # blocks until the core is built; raises its build error
        self.config: EngineConfig = info["config"]
        # /metrics before the first step: the built engine's block counts, not EngineSnapshot()'s zeros.
        self.snapshot = info.get("snapshot", self.snapshot)
        skip = self.config.args.skip_tokenizer_init
        self.input_processor = InputProcessor(self.config, None if skip else tokenizers.take(self.config))
        self.output_processor = OutputProcessor(None if skip else tokenizers.take(self.config),
                                                self.config.args.stream_interval)
        self._tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pagedllm-tokenizer")
        self.vocab_size: int = self.input_processor.vocab_size
        self._default_params = self.input_processor.default_sampling_params()
        self.has_tokenizer: bool = not skip
        if self.metrics is None and not self.config.args.disable_log_stats:
            # As vLLM's AsyncLLM: statistics unless disable_log_stats (AsyncEngineArgs' default keeps them), and the
            # throughput / KV-cache line every stats_log_interval_s while requests run (and on do_log_stats()),
            # without a server's metrics object.
            from pagedllm.metrics import EngineMetrics
            self.metrics = EngineMetrics.for_engine(self.config, self.stats_log_interval_s)
        if self.metrics is not None:
            self.metrics.attach(lambda: self.snapshot, self.config.cache_config)
        log_engine_start(logger, info, time.perf_counter() - t0)

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs, usage_context: UsageContext | str | None = None,
                         **kwargs: Any) -> "AsyncLLMEngine":
        """As vLLM's: requests are logged when ``engine_args.enable_log_requests`` says so (unless ``log_requests``
        is given). ``usage_context`` (vLLM's UsageContext) picks the scheduler's defaults as in vLLM (see
        pagedllm/usage/usage_lib.py); pagedllm sends no usage report. None: the arguments' own (the LLM class's, or
        the server's)."""
        kwargs.setdefault("log_requests", bool(engine_args.enable_log_requests))
        return cls(engine_args.for_usage_context(usage_context), **kwargs)

    # ---- facts ----------------------------------------------------------------------------------------------------
    @property
    def engine(self):
        """The engine core itself (in-thread mode only; tests look at its scheduler and KV cache)."""
        if self._client.engine_process:
            raise AttributeError("The engine runs in another process (engine_process=True).")
        return self._client.core

    @property
    def engine_process(self) -> bool:
        return self._client.engine_process

    @property
    def tokenizer(self):
        return self.input_processor.tokenizer

    def get_tokenizer(self):
        """The engine's HF tokenizer (None with skip_tokenizer_init=True), as vLLM's ``AsyncLLM.get_tokenizer``."""
        return self.input_processor.tokenizer

    @property
    def model_config(self) -> ModelConfig:
        return self.config.model_config

    @property
    def vllm_config(self) -> EngineConfig:
        return self.config

    async def get_model_config(self) -> ModelConfig:
        """vLLM's older ``await engine.get_model_config()``."""
        return self.config.model_config

    async def get_supported_tasks(self) -> tuple[str, ...]:
        return self.config.supported_tasks

    async def is_tracing_enabled(self) -> bool:
        return False      # pagedllm exports no OpenTelemetry traces

    async def do_log_stats(self) -> None:
        """Log the periodic statistics line now (vLLM's; nothing when statistics are off)."""
        if self.metrics is not None:
            self.metrics.maybe_log(self.snapshot, force=True)

    def default_sampling_params(self) -> SamplingParams:
        return self._default_params.clone()

    @property
    def is_running(self) -> bool:
        return self._client.alive() and self._dead is None and not self._stopped

    @property
    def errored(self) -> bool:
        return self._dead is not None

    @property
    def dead_error(self) -> BaseException | None:
        return self._dead

    async def check_health(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"Engine loop stopped: {self._dead!r}")
        if not self._client.alive():
            raise EngineDeadError("The engine is not running.")

    def num_in_flight(self) -> int:
        return len(self._streams)

    async def run_tokenizer(self, fn, *args, **kwargs):
        """Run tokenizer work off the event loop, on the input tokenizer's one thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizer_pool, lambda: fn(*args, **kwargs))

    # ---- requests -------------------------------------------------------------------------------------------------
    async def add_request(self, request_id: str, prompt: PromptType,
                          sampling_params: SamplingParams | PoolingParams | None,
                          arrival_time: float | None = None, lora_request=None,
                          tokenization_kwargs: dict | None = None, trace_headers: Mapping[str, str] | None = None,
                          priority: int = 0, *, reasoning_ended: bool | None = None) -> RequestStream:
        """Validate and queue a request for the next step (vLLM's argument order); returns its output stream (a
        validation error raises here, before any output). ``tokenization_kwargs``: see
        ``InputProcessor.apply_tokenization_kwargs``; ``trace_headers``: pagedllm exports no traces (a warning says
        so); ``reasoning_ended``: see ``InputProcessor.process``."""
        if self._dead is not None:
            raise EngineDeadError(f"Engine loop stopped: {self._dead!r}")
        if self._stopped:
            raise EngineDeadError("Engine is shut down.")
        if request_id in self._streams:
            raise ValueError(f"Request id {request_id!r} is already running.")
        warn_trace_headers_unused(trace_headers)
        if tokenization_kwargs is not None:     # tokenized off the event loop, as below
            prompt, sampling_params = await self.run_tokenizer(self.input_processor.apply_tokenization_kwargs,
                                                               prompt, sampling_params, tokenization_kwargs)
        text, ids = None, ()        # a prompt_embeds prompt has nothing to tokenize
        if not is_embeds_prompt(prompt):
            text, ids, _ = self.input_processor.split_prompt(prompt, with_media=True)
        if ids is None:    # a text prompt: tokenize off the event loop, then validate with its ids
            if isinstance(sampling_params, PoolingParams):
                ids = await self.run_tokenizer(self.input_processor.encode_for_pooling, text, sampling_params)
            else:
                ids = await self.run_tokenizer(self.input_processor.encode, text)
            prompt = {**prompt, "prompt_token_ids": ids} if isinstance(prompt, dict) else \
                {"prompt": text, "prompt_token_ids": ids}
        if has_media(prompt):     # the HF processor's image work, off the event loop too
            prompt = await self.run_tokenizer(self.input_processor.with_media_processed, prompt)
        processed = self.input_processor.process(request_id, prompt, sampling_params, arrival_time, priority,
                                                 lora_request, reasoning_ended=reasoning_ended)
        if lora_request is not None and needs_loading(self._loras_added, lora_request):
            await self.add_lora(lora_request)      # loaded and checked now: a bad adapter fails this request
        stream = RequestStream(request_id, self, asyncio.get_running_loop(), processed.params.output_kind)
        with self._lock:
            if request_id in self._streams:
                raise ValueError(f"Request id {request_id!r} is already running.")
            self.output_processor.add_request(processed)
            self._streams[request_id] = stream
        if self.metrics is not None:
            self.metrics.on_request_added(request_id, processed.params, processed.arrival_time,
                                          len(processed.prompt_token_ids))
        for child in processed.children:
            self._client.send(child)
        return stream

    async def generate(self, prompt: PromptType, sampling_params: SamplingParams | None, request_id: str, *,
                       lora_request=None, tokenization_kwargs: dict | None = None,
                       trace_headers: Mapping[str, str] | None = None, priority: int = 0,
                       arrival_time: float | None = None) -> AsyncIterator[RequestOutput]:
        """vLLM's API (its keywords): yield the request's RequestOutputs as steps produce them (cumulative, delta or
        final-only, as ``sampling_params.output_kind`` says)."""
        stream = await self.add_request(request_id, prompt, sampling_params, arrival_time, lora_request,
                                        tokenization_kwargs, trace_headers, priority)
        try:
            async for out in stream:
                yield out
        finally:
            stream.abort()

    async def encode(self, prompt: PromptType, pooling_params: PoolingParams | None, request_id: str,
                     lora_request=None, trace_headers: Mapping[str, str] | None = None, priority: int = 0,
                     tokenization_kwargs: dict | None = None, *,
                     arrival_time: float | None = None) -> AsyncIterator[PoolingRequestOutput]:
        """vLLM's API (its argument order) for pooling models: yields the request's one PoolingRequestOutput (its
        vector)."""
        stream = await self.add_request(request_id, prompt, pooling_params or PoolingParams(), arrival_time,
                                        lora_request, tokenization_kwargs, trace_headers, priority)
        try:
            async for out in stream:
                yield out
        finally:
            stream.abort()

    async def abort(self, request_id: str | list[str]) -> None:
        """vLLM's abort by another task than the request's reader: the reader gets a last output (finished, the
        unfinished completions' finish_reason "abort"; a pooling request's reader just stops) instead of waiting
        forever."""
        for rid in [request_id] if isinstance(request_id, str) else request_id:
            self._abort_nowait(rid, tell_reader=True)

    def _abort_nowait(self, request_id: str, tell_reader: bool = False) -> None:
        """Thread-safe: the core frees the request before its next step. ``tell_reader``: the request's stream
        gets its last output (else it ends where its reader is)."""
        with self._lock:
            stream = self._streams.pop(request_id, None)
            last = self.output_processor.abort_output(request_id) if tell_reader and stream is not None else None
            if stream is not None and not tell_reader:
                stream.finished = True
            state = self.output_processor.requests.get(request_id)
            core_ids = self.output_processor.abort_request(request_id)
        if stream is not None and tell_reader:
            try:
                stream._loop.call_soon_threadsafe(stream.put, last)    # None: the stream ends there
            except RuntimeError:   # that event loop is closed: its reader is gone
                pass
        if state is None:
            return
        if core_ids and not self._stopped:
            self._client.send(AbortRequests(core_ids))
        if self.metrics is not None:
            self.metrics.on_request_aborted(request_id, len(state.completions))
        if self.log_requests:
            logger.info("Aborted request %s.", printable_id(request_id))

    def abort_all(self, error: BaseException) -> int:
        """Abort every request in flight (the server is stopping): the core frees them, and each caller's stream
        raises ``error``. Returns how many there were."""
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            self._abort_nowait(stream.request_id)
            try:
                stream._loop.call_soon_threadsafe(stream.fail, error)
            except RuntimeError:   # that event loop is closed: its caller is gone
                pass
        return len(streams)

    # ---- the core's utilities (engine/core.py CORE_UTILITIES) ----------------------------------------------------
    async def _call_core(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``method`` on the engine core between two steps and return its result (or raise its error)."""
        await self.check_health()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        call_id = next(self._call_ids)
        self._calls[call_id] = (loop, future)
        self._client.send(UtilityCall(call_id, method, args, kwargs))
        return await future

    async def sleep(self, level: int = 1, mode: str = "abort") -> None:
        """vLLM's sleep (see ``LLMEngine.sleep``). Requests that arrive while the engine sleeps wait in its queue
        and run after ``wake_up``; with ``mode="abort"`` the requests in flight end with an EngineSleepingError."""
        check_sleep_level(level)
        check_sleep_mode(mode)
        check_sleep_enabled(self.config.args.enable_sleep_mode, level)
        if mode == "abort":
            self.abort_all(EngineSleepingError("The request was aborted: the engine was put to sleep."))
        elif mode == "wait":      # the requests in flight now finish first (later ones wait for the wake-up)
            in_flight = set(self._streams)
            while in_flight & self._streams.keys():
                await asyncio.sleep(0.05)
        await self._call_core("sleep", level)

    async def pause_generation(self, *, mode: str = "abort", wait_for_inflight_requests: bool | None = None,
                               clear_cache: bool = True) -> None:
        """vLLM's pause for a weight update (RL trainers: pause, update the weights through collective_rpc, resume).
        From now on requests are accepted but not scheduled until ``resume_generation``; the ones in flight:
        ``mode="abort"`` ends them now (each reader's last output has finish_reason "abort"), ``"wait"`` lets them
        finish first (this call returns when they have), ``"keep"`` freezes them where they are, to go on after the
        resume. ``clear_cache``: then drop the prefix cache (and a kept request's KV, computed again after the
        resume), so that no KV of the old weights is reused. ``wait_for_inflight_requests=True`` is vLLM's older
        spelling of ``mode="wait"`` (deprecated there too)."""
        if wait_for_inflight_requests:
            warnings.warn("The `wait_for_inflight_requests` parameter in `AsyncLLMEngine.pause_generation()` is "
                          "deprecated. Please use `mode` argument instead.", DeprecationWarning, stacklevel=2)
            mode = "wait"
        if mode not in SLEEP_MODES:      # vLLM's PauseMode, the modes of sleep() too
            raise ValueError(f"mode={mode!r}: pause_generation's mode is one of {', '.join(SLEEP_MODES)}.")
        in_flight = list(self._streams)
        await self._call_core("pause", mode == "keep")     # requests that come from now on are held
        if mode == "abort":
            await self.abort(in_flight)
        elif mode == "wait":
            waiting = set(in_flight)
            while waiting & self._streams.keys():
                await asyncio.sleep(0.02)
        if clear_cache and not await self._call_core("clear_cache_after_pause"):
            # The core keeps a cache whose blocks a request still holds (vLLM logs the same refusal).
            logger.warning("pause_generation(clear_cache=True): the prefix cache was not reset (a request still "
                           "holds its blocks).")

    async def resume_generation(self) -> None:
        """Schedule again after ``pause_generation``: kept requests go on, held ones start."""
        await self._call_core("resume")

    async def is_paused(self) -> bool:
        return await self._call_core("is_paused")

    async def wake_up(self, tags: list[str] | None = None) -> None:
        check_wake_up_tags(tags)
        await self._call_core("wake_up", tags)

    async def is_sleeping(self) -> bool:
        return await self._call_core("is_sleeping")

    async def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        return await self._call_core("reset_prefix_cache", reset_running_requests, reset_connector)

    async def reset_mm_cache(self) -> None:
        """vLLM's: clears its multimodal processor cache. Nothing to clear here (LLMEngine.reset_mm_cache)."""

    async def reset_encoder_cache(self) -> None:
        """vLLM's: clears its cached encoder outputs. Nothing to clear here (LLMEngine.reset_mm_cache)."""

    async def collective_rpc(self, method: str, timeout: float | None = None, args: tuple = (),
                             kwargs: dict | None = None) -> list:
        """vLLM's: ``method`` on every worker, each one's result (``timeout``: seconds, then TimeoutError)."""
        call = self._call_core("collective_rpc", method, tuple(args), kwargs)
        return await (asyncio.wait_for(call, timeout) if timeout is not None else call)

    async def add_lora(self, lora_request) -> bool:
        """Load an adapter into the workers now (a bad folder, rank or module raises ValueError)."""
        needs_loading(self._loras_added, lora_request)     # an id of another adapter: ValueError
        added = await self._call_core("add_lora", lora_request)
        self._loras_added[lora_request.lora_int_id] = lora_request
        return added

    async def remove_lora(self, lora_id: int) -> bool:
        self._loras_added.pop(lora_id, None)
        return await self._call_core("remove_lora", lora_id)

    async def list_loras(self) -> set[int]:
        return await self._call_core("list_loras")

    async def pin_lora(self, lora_id: int) -> bool:
        return await self._call_core("pin_lora", lora_id)

    async def start_profile(self, profile_prefix: str | None = None) -> None:
        await self._call_core("collective_rpc", "start_profile", (profile_prefix,))

    async def stop_profile(self) -> None:
        await self._call_core("collective_rpc", "stop_profile")

    def _on_utility_result(self, msg: UtilityResult) -> None:     # reader thread
        loop, future = self._calls.pop(msg.call_id, (None, None))
        if future is None:
            return

        def settle() -> None:
            if future.done():
                return
            if msg.error is not None:
                future.set_exception(msg.error)
            else:
                future.set_result(msg.value)
        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:   # that event loop is closed: its caller is gone
            pass

    def shutdown(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._client.shutdown()
            self._tokenizer_pool.shutdown(wait=False)

    # ---- called from the client's reader thread --------------------------------------------------------------------
    def _on_message(self, msg) -> None:
        if isinstance(msg, CoreStepOutputs):
            self._on_step(msg)
        elif isinstance(msg, UtilityResult):
            self._on_utility_result(msg)
        elif isinstance(msg, CoreSnapshot):
            self.snapshot = msg.snapshot
            self._log_stats()
        elif isinstance(msg, CoreDead):
            logger.error("Engine step failed; the engine is dead and the server reports unhealthy.\n%s",
                         msg.traceback)
            self._die(msg.error)

    def _on_step(self, msg: CoreStepOutputs) -> None:
        self.snapshot = msg.snapshot
        with self._lock:
            outputs, stopped = self.output_processor.process_outputs(msg.outputs)
            token_request_ids = self.output_processor.last_token_request_ids
            streams = self._streams
            deliveries = []
            for out in outputs:
                stream = streams.get(out.request_id)
                if stream is None:
                    continue
                if out.finished:
                    streams.pop(out.request_id, None)
                deliveries.append((stream, out))
            failed = [(streams.pop(rid, None), e) for rid, e in msg.failed.items()]
        if stopped:
            self._client.send(AbortRequests(stopped))    # stop strings: the core frees them before its next step
        if self.metrics is not None:
            try:
                self.metrics.on_step(StepStats(msg.num_prompt_tokens, msg.num_generation_tokens,
                                               msg.num_preemptions), outputs, msg.snapshot, msg.time,
                                     token_request_ids=token_request_ids)
            except Exception:
                logger.exception("Recording metrics failed (ignored).")
        # One wake-up per event loop per step, not one per output.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, Any]]] = defaultdict(list)
        for stream, out in deliveries + [(s, e) for s, e in failed if s is not None]:
            by_loop[stream._loop].append((stream, out))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:   # that event loop is closed: its requests are gone
                for stream, _ in items:
                    self._abort_nowait(stream.request_id)
        self._log_stats()

    def _log_stats(self) -> None:
        if self.metrics is not None:
            try:
                self.metrics.maybe_log(self.snapshot)
            except Exception:
                logger.exception("Stats logging failed (ignored).")

    def _die(self, error: BaseException) -> None:
        self._dead = error
        with self._lock:
            streams, self._streams = list(self._streams.values()), {}
        dead = EngineDeadError(f"Engine loop stopped: {error!r}")
        for stream in streams:
            try:
                stream._loop.call_soon_threadsafe(stream.put, dead)
            except RuntimeError:
                pass
        calls, self._calls = self._calls, {}
        for loop, future in calls.values():
            try:
                loop.call_soon_threadsafe(lambda f=future: f.done() or f.set_exception(dead))
            except RuntimeError:
                pass


def _put_all(items: list[tuple[RequestStream, RequestOutput | BaseException]]) -> None:
    for stream, out in items:
        stream.put(out)
