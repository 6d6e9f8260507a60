"""AsyncLLMEngine: the LLMEngine driven by a thread of its own, for asyncio servers.

One engine thread owns the LLMEngine (it builds it too, so CUDA state and inference mode live in that thread). It
loops: take the requests that arrived and the aborts since the last step, apply them, run one ``step``, hand each
request's outputs to the event loop that is waiting for them. Requests that arrive while a step runs join the next
step's batch (continuous batching), and the event loop never blocks on the model: it only tokenizes, formats JSON and
moves bytes.

Failure rules: a bad request fails alone (``add_request`` raises in its caller); a client that goes away aborts its
request, whose KV blocks are freed before the next step; an exception inside ``step`` marks the engine dead: every
request in flight gets the error, ``check_health`` raises (``/health`` answers 500), new requests are refused.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from typing import Any, AsyncIterator

from pagedllm.config import EngineArgs
from pagedllm.engine.engine import LLMEngine, PromptType
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop stopped after an error; the server must be restarted."""


class RequestStream:
    """The outputs of one request, as an async iterator. Leaving the iteration early (break, cancellation, a
    disconnected client) aborts the request."""

    def __init__(self, request_id: str, engine: "AsyncLLMEngine", loop: asyncio.AbstractEventLoop):
        self.request_id = request_id
        self._engine = engine
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self.finished = False

    def put(self, item: RequestOutput | BaseException) -> None:   # event loop thread
        self._queue.put_nowait(item)

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except BaseException:   # cancelled: the caller is gone
            self.abort()
            raise
        if isinstance(item, BaseException):
            self.finished = True
            raise item
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


class AsyncLLMEngine:
    def __init__(self, engine_args: EngineArgs, *, log_requests: bool = True, metrics: Any = None,
                 stats_log_interval_s: float = 5.0):
        self.engine_args = engine_args
        self.log_requests = log_requests
        self.metrics = metrics              # pagedllm.metrics.EngineMetrics or None
        self.stats_log_interval_s = stats_log_interval_s
        self._cv = threading.Condition()
        self._pending_adds: list[tuple] = []
        self._pending_aborts: list[str] = []
        self._streams: dict[str, RequestStream] = {}
        self._stopped = False
        self._dead: BaseException | None = None
        self._engine: LLMEngine | None = None
        self._ready = threading.Event()
        self._build_error: BaseException | None = None
        self._thread = threading.Thread(target=self._thread_main, name="pagedllm-engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._build_error is not None:
            raise self._build_error

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs, **kwargs: Any) -> "AsyncLLMEngine":
        return cls(engine_args, **kwargs)

    # ---- facts ----------------------------------------------------------------------------------------------------
    @property
    def engine(self) -> LLMEngine:
        assert self._engine is not None
        return self._engine

    @property
    def config(self):
        return self.engine.config

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    async def get_tokenizer(self):
        return self.engine.tokenizer

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and self._dead is None and not self._stopped

    @property
    def errored(self) -> bool:
        return self._dead is not None

    @property
    def dead_error(self) -> BaseException | None:
        return self._dead

    async def check_health(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"Engine loop stopped: {self._dead!r}")
        if not self._thread.is_alive():
            raise EngineDeadError("Engine thread is not running.")

    def num_in_flight(self) -> int:
        return len(self._streams)

    # ---- requests -------------------------------------------------------------------------------------------------
    async def add_request(self, request_id: str, prompt: PromptType, sampling_params: SamplingParams | None,
                          arrival_time: float | None = None, priority: int = 0) -> RequestStream:
        """Queue a request for the next step; returns its output stream once the engine accepted it (a validation
        error raises here, before any output)."""
        if self._dead is not None:
            raise EngineDeadError(f"Engine loop stopped: {self._dead!r}")
        if self._stopped:
            raise EngineDeadError("Engine is shut down.")
        if request_id in self._streams:
            raise ValueError(f"Request id {request_id!r} is already running.")
        loop = asyncio.get_running_loop()
        accepted = loop.create_future()
        stream = RequestStream(request_id, self, loop)
        stream.finished = True          # not ours to abort until the engine has it
        self._streams[request_id] = stream
        with self._cv:
            self._pending_adds.append((request_id, prompt, sampling_params, arrival_time or time.time(), priority,
                                       loop, accepted))
            self._cv.notify()
        try:
            await asyncio.shield(accepted)
        except asyncio.CancelledError:
            # The caller went away while we waited; the engine may still take the request: abort it after.
            self._streams.pop(request_id, None)
            accepted.add_done_callback(lambda f: None if f.cancelled() or f.exception()
                                       else self._abort_nowait(request_id))
            raise
        except BaseException:
            self._streams.pop(request_id, None)
            raise
        stream.finished = False
        return stream

    async def generate(self, prompt: PromptType, sampling_params: SamplingParams | None, request_id: str,
                       priority: int = 0, arrival_time: float | None = None) -> AsyncIterator[RequestOutput]:
        """vLLM's API: yield the request's RequestOutputs as steps produce them (cumulative, delta or final-only,
        as ``sampling_params.output_kind`` says)."""
        stream = await self.add_request(request_id, prompt, sampling_params, arrival_time, priority)
        try:
            async for out in stream:
                yield out
        finally:
            stream.abort()

    async def abort(self, request_id: str | list[str]) -> None:
        for rid in [request_id] if isinstance(request_id, str) else request_id:
            stream = self._streams.get(rid)
            if stream is not None:
                stream.abort()
            else:
                self._abort_nowait(rid)

    def _abort_nowait(self, request_id: str) -> None:
        """Thread-safe: the engine thread frees the request before its next step."""
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.finished = True
        with self._cv:
            self._pending_aborts.append(request_id)
            self._cv.notify()

    def shutdown(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    # ---- the engine thread ---------------------------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            self._engine = LLMEngine.from_engine_args(self.engine_args)
            if self.metrics is not None:
                self.metrics.attach(self._engine)
        except BaseException as e:
            self._build_error = e
            self._ready.set()
            return
        self._ready.set()
        engine = self._engine
        while True:
            with self._cv:
                while not (self._stopped or self._pending_adds or self._pending_aborts
                           or engine.has_unfinished_requests()):
                    self._cv.wait(timeout=self.stats_log_interval_s)
                    self._log_stats()
                if self._stopped:
                    return
                adds, self._pending_adds = self._pending_adds, []
                aborts, self._pending_aborts = self._pending_aborts, []
            self._apply_aborts(aborts)
            self._apply_adds(adds)
            if not engine.has_unfinished_requests():
                continue
            try:
                outputs, stats = engine.step_with_stats()
            except BaseException as e:   # noqa: BLE001 - any failure of the model step kills the engine
                logger.exception("Engine step failed; the engine is dead and the server reports unhealthy.")
                self._die(e)
                return
            now = time.time()
            if self.metrics is not None:
                try:
                    self.metrics.on_step(stats, outputs, engine, now)
                except Exception:
                    logger.exception("Recording metrics failed (ignored).")
            self._deliver(outputs)
            self._log_stats()

    def _apply_aborts(self, aborts: list[str]) -> None:
        if not aborts:
            return
        engine = self.engine
        for rid in aborts:
            parent = engine.parents.get(rid)
            if parent is None:
                continue
            engine.abort_request(rid)
            if self.metrics is not None:
                self.metrics.on_request_aborted(rid, len(parent.children))
            if self.log_requests:
                logger.info("Aborted request %s.", rid)

    def _apply_adds(self, adds: list[tuple]) -> None:
        engine = self.engine
        for rid, prompt, params, arrival, priority, loop, accepted in adds:
            try:
                engine.add_request(rid, prompt, params, arrival_time=arrival, priority=priority)
                if self.metrics is not None:
                    parent = engine.parents[rid]
                    self.metrics.on_request_added(rid, parent.params, arrival, len(parent.prompt_token_ids))
                result: BaseException | None = None
            except BaseException as e:   # noqa: BLE001 - reported to the caller
                result = e
            loop.call_soon_threadsafe(_resolve, accepted, result)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        # One wake-up per event loop per step, not one per output.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, RequestOutput]]] = defaultdict(list)
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            if out.finished:
                self._streams.pop(out.request_id, None)
            by_loop[stream._loop].append((stream, out))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:   # that event loop is closed: its requests are gone
                for stream, _ in items:
                    self._abort_nowait(stream.request_id)

    def _die(self, error: BaseException) -> None:
        self._dead = error
        streams, self._streams = list(self._streams.values()), {}
        dead = EngineDeadError(f"Engine loop stopped: {error!r}")
        for stream in streams:
            try:
                stream._loop.call_soon_threadsafe(stream.put, dead)
            except RuntimeError:
                pass
        with self._cv:
            pending, self._pending_adds = self._pending_adds, []
        for *_, loop, accepted in pending:
            try:
                loop.call_soon_threadsafe(_resolve, accepted, dead)
            except RuntimeError:
                pass

    def _log_stats(self) -> None:
        if self.metrics is not None:
            try:
                self.metrics.maybe_log(self.engine)
            except Exception:
                logger.exception("Stats logging failed (ignored).")


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _put_all(items: list[tuple[RequestStream, RequestOutput]]) -> None:
    for stream, out in items:
        stream.put(out)
