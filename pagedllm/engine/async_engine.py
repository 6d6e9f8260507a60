"""AsyncLLMEngine: the LLMEngine driven in the background, for asyncio servers.

The engine runs in one of two places, behind the same API:
- a thread of this process that owns it (``engine_process=False``; it builds the engine too, so CUDA state and
  inference mode live in that thread);
- a child process, the "engine core" (``engine_process=True``, what ``pagedllm serve`` uses): the HTTP side then never
  competes with the engine for the GIL. The event loop's per-chunk work (HTTP framing, one socket send per chunk per
  stream) otherwise starves the engine thread: on one H100 (2026-11-22, shared/bench/serve_workload.py, Qwen2.5-1.5B
  dummy weights) the engine process gave 5.9k output tok/s against 3.8k in a thread for 25 streams (TPOT 3.6 vs
  5.8 ms) and 8.3k against 6.8k for 1,000 ShareGPT-like requests at concurrency 256; one stream is the same either
  way (ITL 2.7 ms). With a GPU the child is spawned (~12 s more startup on that host: it imports torch again); on a
  CPU-only host it is forked.
Either way the loop is: take the requests that arrived and the aborts since the last step, apply them, run one
``step``, hand each request's outputs to the event loop waiting for them. Requests that arrive during a step join the
next one (continuous batching); tokenizing and formatting happen on the asyncio side, never in the step.

Failure rules: a bad request fails alone (``add_request`` raises in its caller); a client that goes away aborts its
request, whose KV blocks are freed before the next step; an exception inside ``step`` (or a dead engine process) marks
the engine dead: every request in flight gets the error, ``check_health`` raises (``/health`` answers 500) and new
requests are refused.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import queue
import sys
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, AsyncIterator

from pagedllm.config import EngineArgs, EngineConfig
from pagedllm.engine.engine import LLMEngine, PromptType, StepStats
from pagedllm.outputs import CompletionOutput, RequestMetrics, RequestOutput
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine stopped after an error; the server must be restarted."""


@dataclass
class EngineSnapshot:
    """The engine state that gauges and the stats log show."""
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    prefix_queries: int = 0
    prefix_hits: int = 0

    @classmethod
    def of(cls, engine: LLMEngine) -> "EngineSnapshot":
        pool = engine.kv_cache.pool
        return cls(engine.scheduler.num_running, engine.scheduler.num_waiting, engine.kv_cache.usage(),
                   pool.query_tokens, pool.hit_tokens)


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
                                       stop_reason=c.stop_reason if c.finish_reason else old.stop_reason))
    merged.extend(by_index.values())
    merged.sort(key=lambda c: c.index)
    return RequestOutput(request_id=b.request_id, prompt=b.prompt, prompt_token_ids=b.prompt_token_ids,
                         prompt_logprobs=b.prompt_logprobs if b.prompt_logprobs is not None else a.prompt_logprobs,
                         outputs=merged, finished=b.finished, metrics=b.metrics,
                         num_cached_tokens=b.num_cached_tokens)


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
        self._queue: asyncio.Queue = asyncio.Queue()
        self._error: BaseException | None = None
        self.finished = False

    def put(self, item: RequestOutput | BaseException) -> None:   # event loop thread
        self._queue.put_nowait(item)

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self._error is not None:
            error, self._error = self._error, None
            self.finished = True
            raise error
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
        while not item.finished and not self._queue.empty():
            nxt = self._queue.get_nowait()
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
                 stats_log_interval_s: float = 5.0, engine_process: bool = False):
        self.engine_args = engine_args
        self.log_requests = log_requests
        self.metrics = metrics              # pagedllm.metrics.EngineMetrics or None
        self.stats_log_interval_s = stats_log_interval_s
        self._streams: dict[str, RequestStream] = {}
        self._dead: BaseException | None = None
        self._stopped = False
        self.snapshot = EngineSnapshot()
        self._core: _ThreadCore | _ProcessCore = (_ProcessCore if engine_process else _ThreadCore)(self)
        info = self._core.start()           # blocks until the engine is built; raises its build error
        self.config: EngineConfig = info["config"]
        self.vocab_size: int = info["vocab_size"]
        self._default_params: SamplingParams = info["default_params"]
        self.has_tokenizer: bool = info["has_tokenizer"]
        if self.metrics is not None:
            self.metrics.attach(lambda: self.snapshot)

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs, **kwargs: Any) -> "AsyncLLMEngine":
        return cls(engine_args, **kwargs)

    # ---- facts ----------------------------------------------------------------------------------------------------
    @property
    def engine(self) -> LLMEngine:
        """The LLMEngine itself (in-thread mode only)."""
        if not isinstance(self._core, _ThreadCore):
            raise AttributeError("The engine runs in another process (engine_process=True).")
        return self._core.engine

    @property
    def engine_process(self) -> bool:
        return isinstance(self._core, _ProcessCore)

    def default_sampling_params(self) -> SamplingParams:
        return self._default_params.clone()

    @property
    def is_running(self) -> bool:
        return self._core.alive() and self._dead is None and not self._stopped

    @property
    def errored(self) -> bool:
        return self._dead is not None

    @property
    def dead_error(self) -> BaseException | None:
        return self._dead

    async def check_health(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"Engine loop stopped: {self._dead!r}")
        if not self._core.alive():
            raise EngineDeadError("The engine is not running.")

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
        params = sampling_params if sampling_params is not None else self.default_sampling_params()
        loop = asyncio.get_running_loop()
        accepted = loop.create_future()
        stream = RequestStream(request_id, self, loop, params.output_kind)
        stream.finished = True          # not ours to abort until the engine has it
        self._streams[request_id] = stream
        self._core.add(request_id, prompt, params, arrival_time or time.time(), priority, loop, accepted)
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
        """Thread-safe: the engine frees the request before its next step."""
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.finished = True
        if not self._stopped:
            self._core.abort(request_id)

    def shutdown(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._core.shutdown()

    # ---- called by the core (engine thread / output reader thread) -------------------------------------------------
    def _on_step(self, outputs: list[RequestOutput], stats: StepStats, snapshot: EngineSnapshot, now: float) -> None:
        self.snapshot = snapshot
        if self.metrics is not None:
            try:
                self.metrics.on_step(stats, outputs, snapshot, now)
            except Exception:
                logger.exception("Recording metrics failed (ignored).")
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
        self._log_stats()

    def _on_added(self, request_id: str, params: SamplingParams, arrival: float, num_prompt_tokens: int) -> None:
        if self.metrics is not None:
            self.metrics.on_request_added(request_id, params, arrival, num_prompt_tokens)

    def _on_aborted(self, request_id: str, num_completions: int) -> None:
        if self.metrics is not None:
            self.metrics.on_request_aborted(request_id, num_completions)
        if self.log_requests:
            logger.info("Aborted request %s.", request_id)

    def _log_stats(self) -> None:
        if self.metrics is not None:
            try:
                self.metrics.maybe_log(self.snapshot)
            except Exception:
                logger.exception("Stats logging failed (ignored).")

    def _die(self, error: BaseException) -> None:
        self._dead = error
        streams, self._streams = list(self._streams.values()), {}
        dead = EngineDeadError(f"Engine loop stopped: {error!r}")
        for stream in streams:
            try:
                stream._loop.call_soon_threadsafe(stream.put, dead)
            except RuntimeError:
                pass
        for loop, accepted in self._core.take_pending_adds():
            try:
                loop.call_soon_threadsafe(_resolve, accepted, dead)
            except RuntimeError:
                pass


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


def _engine_info(engine: LLMEngine) -> dict:
    return {"config": engine.config, "vocab_size": engine.vocab_size,
            "default_params": engine.default_sampling_params(), "has_tokenizer": engine.tokenizer is not None}


# ---- engine in a thread of this process ------------------------------------------------------------------------------
class _ThreadCore:
    def __init__(self, front: AsyncLLMEngine):
        self.front = front
        self.engine: LLMEngine | None = None
        self._cv = threading.Condition()     # an RLock inside: __del__ aborts may run in the engine thread
        self._pending_adds: list[tuple] = []
        self._pending_aborts: list[str] = []
        self._stop = False
        self._ready = threading.Event()
        self._build_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="pagedllm-engine", daemon=True)

    def start(self) -> dict:
        self._thread.start()
        self._ready.wait()
        if self._build_error is not None:
            raise self._build_error
        return _engine_info(self.engine)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def add(self, rid, prompt, params, arrival, priority, loop, accepted) -> None:
        with self._cv:
            self._pending_adds.append((rid, prompt, params, arrival, priority, loop, accepted))
            self._cv.notify()

    def abort(self, rid: str) -> None:
        with self._cv:
            self._pending_aborts.append(rid)
            self._cv.notify()

    def take_pending_adds(self) -> list[tuple]:
        with self._cv:
            pending, self._pending_adds = self._pending_adds, []
        return [(loop, accepted) for *_, loop, accepted in pending]

    def shutdown(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    def _main(self) -> None:
        try:
            self.engine = LLMEngine.from_engine_args(self.front.engine_args)
        except BaseException as e:
            self._build_error = e
            self._ready.set()
            return
        self._ready.set()
        engine, front = self.engine, self.front
        front.snapshot = EngineSnapshot.of(engine)
        while True:
            with self._cv:
                while not (self._stop or self._pending_adds or self._pending_aborts
                           or engine.has_unfinished_requests()):
                    self._cv.wait(timeout=front.stats_log_interval_s)
                    front._log_stats()
                if self._stop:
                    return
                adds, self._pending_adds = self._pending_adds, []
                aborts, self._pending_aborts = self._pending_aborts, []
            for rid in aborts:
                parent = engine.parents.get(rid)
                if parent is not None:
                    engine.abort_request(rid)
                    front._on_aborted(rid, len(parent.children))
            for rid, prompt, params, arrival, priority, loop, accepted in adds:
                try:
                    engine.add_request(rid, prompt, params, arrival_time=arrival, priority=priority)
                    front._on_added(rid, params, arrival, len(engine.parents[rid].prompt_token_ids))
                    result: BaseException | None = None
                except BaseException as e:   # noqa: BLE001 - reported to the caller
                    result = e
                try:
                    loop.call_soon_threadsafe(_resolve, accepted, result)
                except RuntimeError:
                    engine.abort_request(rid)
            if not engine.has_unfinished_requests():
                front.snapshot = EngineSnapshot.of(engine)
                continue
            try:
                outputs, stats = engine.step_with_stats()
            except BaseException as e:   # noqa: BLE001 - any failure of the model step kills the engine
                logger.exception("Engine step failed; the engine is dead and the server reports unhealthy.")
                front._die(e)
                return
            front._on_step(outputs, stats, EngineSnapshot.of(engine), time.time())


# ---- engine in a child process ---------------------------------------------------------------------------------------
# Messages, parent -> child: ("add", rid, prompt, params, arrival, priority) | ("abort", rid) | ("shutdown",)
# child -> parent: ("ready", info) | ("build_failed", exc) | ("added", rid, num_prompt_tokens) |
#   ("add_failed", rid, exc) | ("aborted", rid, num_completions) | ("step", packed outputs, stats, snapshot, time) |
#   ("snapshot", snapshot) | ("dead", exc, traceback text)

def _pack(out: RequestOutput) -> tuple:
    """A RequestOutput as plain tuples (pickles several times faster than the dataclasses); prompt and prompt ids
    stay behind, the parent knows them."""
    m = out.metrics
    metrics = (m.arrival_time, m.first_scheduled_time, m.first_token_time, m.last_token_time, m.finished_time) \
        if out.finished and m is not None else None
    return (out.request_id, out.finished, out.num_cached_tokens, out.prompt_logprobs, metrics,
            [(c.index, c.text, c.token_ids, c.cumulative_logprob, c.logprobs, c.finish_reason, c.stop_reason)
             for c in out.outputs])


def _unpack(packed: tuple, prompts: dict[str, tuple]) -> RequestOutput:
    rid, finished, cached, prompt_logprobs, metrics, comps = packed
    prompt, prompt_ids = prompts.get(rid, (None, None))
    return RequestOutput(request_id=rid, prompt=prompt, prompt_token_ids=prompt_ids, prompt_logprobs=prompt_logprobs,
                         outputs=[CompletionOutput(*c) for c in comps], finished=finished,
                         metrics=RequestMetrics(*metrics) if metrics else None, num_cached_tokens=cached)


def _core_process_main(engine_args: EngineArgs, conn, log_format: tuple | None, parent_end=None) -> None:
    """The engine core: build the engine, then apply messages and step while there is work. It ends on "shutdown"
    or when the pipe closes (the server process is gone)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the whole group: the server shuts us down
    if parent_end is not None:
        parent_end.close()   # forked: keep no copy of the server's end, or its death would never read as EOF
    if log_format is not None and not logging.getLogger("pagedllm").handlers:   # spawned: set up like the parent
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(*log_format))
        root = logging.getLogger("pagedllm")
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    try:
        engine = LLMEngine.from_engine_args(engine_args)
    except BaseException as e:   # noqa: BLE001
        conn.send(("build_failed", _picklable(e)))
        return
    conn.send(("ready", _engine_info(engine)))
    trace = _StepTrace.from_env()
    while True:
        # Block only when there is nothing to step.
        if not engine.has_unfinished_requests():
            conn.poll(None)
        t_loop = time.perf_counter()
        changed = False
        while conn.poll(0):
            try:
                msg = conn.recv()
            except EOFError:
                return
            kind = msg[0]
            if kind == "add":
                _, rid, prompt, params, arrival, priority = msg
                try:
                    engine.add_request(rid, prompt, params, arrival_time=arrival, priority=priority)
                    conn.send(("added", rid, len(engine.parents[rid].prompt_token_ids)))
                except BaseException as e:   # noqa: BLE001 - reported to the caller
                    conn.send(("add_failed", rid, _picklable(e)))
            elif kind == "abort":
                parent = engine.parents.get(msg[1])
                if parent is not None:
                    engine.abort_request(msg[1])
                    conn.send(("aborted", msg[1], len(parent.children)))
            elif kind == "shutdown":
                if trace is not None and trace.rows:
                    trace.flush()
                return
            changed = True
        if not engine.has_unfinished_requests():
            if changed:
                conn.send(("snapshot", EngineSnapshot.of(engine)))
            continue
        t_step = time.perf_counter()
        try:
            outputs, stats = engine.step_with_stats()
        except BaseException as e:   # noqa: BLE001 - any failure of the model step kills the engine
            conn.send(("dead", _picklable(e), traceback.format_exc()))
            return
        t_stepped = time.perf_counter()
        snapshot = EngineSnapshot.of(engine)
        conn.send(("step", [_pack(o) for o in outputs],
                   (stats.num_prompt_tokens, stats.num_generation_tokens, stats.num_preemptions),
                   snapshot, time.time()))
        if trace is not None:
            trace.add(t_loop, t_step, t_stepped, time.perf_counter(), snapshot, stats, len(outputs))


class _StepTrace:
    """``PAGEDLLM_STEP_TRACE=FILE``: one JSON line per engine-process step, for finding where a served step's time
    goes (benchmarks/serve_step_trace.py reads it). Times in ms: ``msgs`` applying the requests and aborts that
    arrived, ``step`` scheduling + launching + waiting for the previous step's tokens, ``send`` packing and
    writing the outputs to the server process; ``gap`` from the end of the previous iteration to this one (idle).
    Written in blocks, so a killed process loses at most the last block."""

    def __init__(self, path: str):
        self.path = path
        self.rows: list[str] = []
        self.last_end: float | None = None

    @classmethod
    def from_env(cls) -> "_StepTrace | None":
        path = os.environ.get("PAGEDLLM_STEP_TRACE", "").strip()
        return cls(path) if path else None

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
            "outputs": num_outputs}))
        if len(self.rows) >= 200:
            self.flush()

    def flush(self) -> None:
        with open(self.path, "a") as f:
            f.write("\n".join(self.rows) + "\n")
        self.rows = []


def _picklable(e: BaseException) -> BaseException:
    import pickle
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def _start_method(engine_args: EngineArgs) -> str:
    """How to start the engine process. fork lets the child inherit the imports (seconds less startup) but is only
    used when the engine runs on the CPU; with a GPU the child is spawned, the start method verified on H100
    (a fork after anything touched the CUDA driver would break the child). PAGEDLLM_ENGINE_START_METHOD overrides."""
    forced = os.environ.get("PAGEDLLM_ENGINE_START_METHOD")
    if forced:
        return forced
    if not sys.platform.startswith("linux"):
        return "spawn"
    on_cpu = engine_args.device == "cpu" or (engine_args.device == "auto" and not os.path.exists("/dev/nvidiactl"))
    return "fork" if on_cpu else "spawn"


class _ProcessCore:
    def __init__(self, front: AsyncLLMEngine):
        self.front = front
        ctx = multiprocessing.get_context(_start_method(front.engine_args))
        self._conn, child_conn = ctx.Pipe(duplex=True)
        log_format = None
        for h in logging.getLogger("pagedllm").handlers:
            if h.formatter is not None:
                log_format = (h.formatter._fmt, h.formatter.datefmt)
                break
        forked = ctx.get_start_method() == "fork"
        self._proc = ctx.Process(target=_core_process_main,
                                 args=(front.engine_args, child_conn, log_format, self._conn if forked else None),
                                 name="pagedllm-engine-core", daemon=True)
        self._child_conn = child_conn
        self._pending: dict[str, tuple] = {}          # rid -> (loop, accepted, params, arrival)
        self._prompts: dict[str, tuple] = {}          # rid -> (prompt text, prompt ids) for RequestOutputs
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._closing = False

    def start(self) -> dict:
        self._proc.start()
        self._child_conn.close()
        msg = self._recv_or_die()
        if msg[0] == "build_failed":
            self._proc.join(timeout=10)
            raise msg[1]
        self._reader = threading.Thread(target=self._read_loop, name="pagedllm-engine-reader", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="pagedllm-engine-writer", daemon=True)
        self._reader.start()
        self._writer.start()
        return msg[1]

    def _recv_or_die(self):
        try:
            return self._conn.recv()
        except EOFError:
            self._proc.join(timeout=10)
            raise RuntimeError(f"The engine process exited with code {self._proc.exitcode} before it was ready "
                               f"(its log says why).") from None

    def alive(self) -> bool:
        return self._proc.is_alive()

    # Sending goes through a writer thread: a full pipe (the child busy in a long step) must not block the event loop.
    def add(self, rid, prompt, params, arrival, priority, loop, accepted) -> None:
        with self._lock:
            self._pending[rid] = (loop, accepted, params, arrival)
            if isinstance(prompt, dict):
                self._prompts[rid] = (prompt.get("prompt"), prompt.get("prompt_token_ids"))
            elif isinstance(prompt, str):
                self._prompts[rid] = (prompt, None)
        self._outbox.put(("add", rid, prompt, params, arrival, priority))

    def abort(self, rid: str) -> None:
        self._outbox.put(("abort", rid))

    def take_pending_adds(self) -> list[tuple]:
        with self._lock:
            pending, self._pending = self._pending, {}
        return [(loop, accepted) for loop, accepted, _, _ in pending.values()]

    def shutdown(self) -> None:
        self._closing = True
        self._outbox.put(("shutdown",))
        self._proc.join(timeout=15)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)

    def _write_loop(self) -> None:
        while True:
            msg = self._outbox.get()
            try:
                self._conn.send(msg)
            except (OSError, EOFError, BrokenPipeError):
                return
            if msg[0] == "shutdown":
                return

    def _read_loop(self) -> None:
        front = self.front
        while True:
            try:
                if not self._conn.poll(front.stats_log_interval_s):
                    front._log_stats()
                    continue
                msg = self._conn.recv()
            except (EOFError, OSError):
                if not self._closing:
                    code = self._proc.exitcode
                    logger.error("The engine process died (exit code %s).", code)
                    front._die(RuntimeError(f"engine process exited with code {code}"))
                return
            kind = msg[0]
            if kind == "step":
                _, packed, counts, snapshot, now = msg
                outputs = [_unpack(p, self._prompts) for p in packed]
                for out in outputs:
                    if out.finished:
                        self._prompts.pop(out.request_id, None)
                stats = StepStats(num_prompt_tokens=counts[0], num_generation_tokens=counts[1],
                                  num_preemptions=counts[2])
                front._on_step(outputs, stats, snapshot, now)
            elif kind in ("added", "add_failed"):
                rid = msg[1]
                with self._lock:
                    entry = self._pending.pop(rid, None)
                if entry is None:
                    continue
                loop, accepted, params, arrival = entry
                if kind == "added":
                    front._on_added(rid, params, arrival, msg[2])
                else:
                    self._prompts.pop(rid, None)
                try:
                    loop.call_soon_threadsafe(_resolve, accepted, None if kind == "added" else msg[2])
                except RuntimeError:
                    front._abort_nowait(rid)
            elif kind == "aborted":
                self._prompts.pop(msg[1], None)
                front._on_aborted(msg[1], msg[2])
            elif kind == "snapshot":
                front.snapshot = msg[1]
                front._log_stats()
            elif kind == "dead":
                logger.error("Engine step failed; the engine is dead and the server reports unhealthy.\n%s", msg[2])
                front._die(msg[1])
                return
