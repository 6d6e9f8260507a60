"""Transports between the front end and the engine core, and the front end's client of the core.

The core runs ``run_engine_core`` (engine/core.py) in one of two places, behind the same client:
- a thread of this process (``engine_process=False``): the two ends of a ``_QueuePair`` connect them;
- a child process, the "engine core" (``engine_process=True``, what ``pagedllm serve`` uses): a pipe connects them, and
  the HTTP side never competes with the engine for the GIL. The event loop's per-chunk work (HTTP framing, one socket
  send per chunk per stream) otherwise starves the engine thread: on one H100 (2026-11-22,
  shared/bench/serve_workload.py, Qwen2.5-1.5B dummy weights) the engine process gave 5.9k output tok/s against 3.8k in
  a thread for 25 streams (TPOT 3.6 vs 5.8 ms) and 8.3k against 6.8k for 1,000 ShareGPT-like requests at
  concurrency 256; one stream is the same either way (ITL 2.7 ms). With a GPU the child is spawned (~12 s more
  start-up on that host: it imports torch again); on a CPU-only host it is forked.
Either way the same typed messages (engine/messages.py) go through ``poll / recv / send``; a reader thread of the
client hands what the core sends to the front end, and a writer thread sends, so a full pipe (the core busy in a
long step) never blocks the event loop.
"""
from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import pickle
import queue
import sys
import threading
import time
from typing import Callable

from pagedllm import envs
from pagedllm.config import EngineArgs
from pagedllm.engine.core import EngineCore, run_engine_core
from pagedllm.engine.messages import CoreBuildFailed, CoreDead, EarlyEngineArgs, Shutdown
from pagedllm.logger import configure_logging, log_format

logger = logging.getLogger(__name__)


class _Closed:
    """Sent by an end that closes: the other end's ``recv`` raises EOFError, as a pipe's does."""


class _QueueEnd:
    """One end of an in-process transport, with a pipe end's ``poll / recv / send / close``."""

    def __init__(self, inbox: queue.SimpleQueue, outbox: queue.SimpleQueue):
        self._inbox, self._outbox = inbox, outbox
        self._peeked: list = []

    def send(self, msg) -> None:
        self._outbox.put(msg)

    def poll(self, timeout: float | None = 0.0) -> bool:
        if self._peeked:
            return True
        try:
            self._peeked.append(self._inbox.get(block=timeout != 0.0, timeout=timeout if timeout else None))
        except queue.Empty:
            return False
        return True

    def recv(self):
        msg = self._peeked.pop() if self._peeked else self._inbox.get()
        if isinstance(msg, _Closed):
            self._peeked.append(msg)     # stays closed
            raise EOFError
        return msg

    def close(self) -> None:
        self._outbox.put(_Closed())


def _queue_pair() -> tuple[_QueueEnd, _QueueEnd]:
    a, b = queue.SimpleQueue(), queue.SimpleQueue()
    return _QueueEnd(a, b), _QueueEnd(b, a)


def _core_process_main(engine_args: EngineArgs, conn, fmt: tuple | None, step_trace: str | None,
                       parent_end=None, spawned_at: float | None = None) -> None:
    import signal
    # Ctrl-C, and a SIGTERM sent to the whole group (systemd's default, `kill -- -PGID`), reach this process too:
    # the server shuts us down itself once its in-flight requests are done (--shutdown-timeout). Our end of the pipe
    # reads EOF if the server dies, so we never outlive it; SIGKILL still ends us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if parent_end is not None:
        parent_end.close()   # forked: keep no copy of the server's end, or its death would never read as EOF
    if fmt is not None:     # spawned: set up like the parent
        configure_logging(logging.getLogger("pagedllm").getEffectiveLevel())
    run_engine_core(engine_args, conn, step_trace=step_trace, spawned_at=spawned_at, freeze_heap=True)


def engine_args_fingerprint(engine_args: EngineArgs) -> str:
    """What must match between a core started early from the command line and the front end's own EngineArgs."""
    import dataclasses
    return repr((sorted(dataclasses.asdict(engine_args).items()), engine_args.usage_context))


def run_prestarted_core(engine_args: EngineArgs | None, conn, spawned_at: float) -> None:
    """The body of an engine-core process started early (entrypoints/early_engine.py): say which EngineArgs it
    parsed (None: it will not serve, and ends), then run as ``_core_process_main``."""
    conn.send(EarlyEngineArgs(None if engine_args is None else engine_args_fingerprint(engine_args)))
    if engine_args is not None:
        _core_process_main(engine_args, conn, log_format(), envs.PAGEDLLM_STEP_TRACE, spawned_at=spawned_at)


def _prepare_to_read_core_info(engine_args: EngineArgs) -> None:
    """While the core builds (seconds), import what unpickling its info will need: the HF config class and whatever
    transformers imports to rebuild one (on some transformers versions that pulls in torch.distributed and sklearn,
    seconds on a fresh machine). Done by loading and round-tripping the checkpoint's config here, so those imports
    run alongside the core's start instead of after it. Best effort: the core reports any real problem."""
    importlib.import_module("pagedllm.model.hf_configs")
    model = engine_args.model
    if engine_args.trust_remote_code or not os.path.isfile(os.path.join(model, "config.json")):
        return     # a hub id or GGUF is resolved by the core; remote code runs there only
    try:
        from pagedllm.model.hf_configs import load_hf_config
        pickle.loads(pickle.dumps(load_hf_config(model)))
    except Exception:   # noqa: BLE001 - an optimisation only
        pass


def _start_method(engine_args: EngineArgs) -> str:
    """How to start the engine process. fork lets the child inherit the imports (seconds less start-up) but is only
    used when the engine runs on the CPU; with a GPU the child is spawned, the start method verified on H100
    (a fork after anything touched the CUDA driver would break the child). PAGEDLLM_ENGINE_START_METHOD overrides."""
    forced = envs.PAGEDLLM_ENGINE_START_METHOD
    if forced:
        return forced
    if not sys.platform.startswith("linux"):
        return "spawn"
    on_cpu = engine_args.device == "cpu" or (engine_args.device == "auto" and not os.path.exists("/dev/nvidiactl"))
    return "fork" if on_cpu else "spawn"


class EngineCoreClient:
    """Starts the engine core (thread or process), sends it messages, and calls ``on_message(msg)`` from its reader
    thread for everything the core sends (``on_idle()`` every ``idle_interval_s`` without one; ``on_closed(error)``
    once if the core goes away without being asked to)."""

    def __init__(self, engine_args: EngineArgs, *, engine_process: bool, on_message: Callable,
                 on_idle: Callable[[], None], on_closed: Callable[[BaseException], None], idle_interval_s: float = 5.0,
                 prestarted=None):
        """``prestarted``: an engine-core process already started from the command line (entrypoints/
        early_engine.py: ``.process``, ``.conn``, ``.discard()``); used if it parsed the same
        EngineArgs, else discarded and a core started here."""
        self.engine_args = engine_args
        self._prestarted = prestarted if engine_process else None
        if prestarted is not None and not engine_process:
            prestarted.discard()
        self.engine_process = engine_process
        self._on_message, self._on_idle, self._on_closed = on_message, on_idle, on_closed
        self._idle_interval_s = idle_interval_s
        self._closing = False
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.core: EngineCore | None = None          # in-thread mode: the core itself (tests look at it)
        step_trace = envs.PAGEDLLM_STEP_TRACE
        if engine_process:
            ctx = multiprocessing.get_context(_start_method(engine_args))
            self._conn, child_conn = ctx.Pipe(duplex=True)
            forked = ctx.get_start_method() == "fork"
            # Built in start(), which stamps the time it spawns the process (the start-up timeline's first phase).
            self._make_process = lambda spawned_at: ctx.Process(
                target=_core_process_main, name="pagedllm-engine-core", daemon=True,
                args=(engine_args, child_conn, log_format(), step_trace, self._conn if forked else None, spawned_at))
            self._worker = None
            self._child_conn = child_conn
        else:
            self._conn, core_end = _queue_pair()
            self._worker = threading.Thread(target=self._thread_main, args=(core_end, step_trace),
                                            name="pagedllm-engine", daemon=True)

    def _thread_main(self, core_end: _QueueEnd, step_trace: str | None) -> None:
        def built(core: EngineCore) -> None:
            self.core = core
        try:
            run_engine_core(self.engine_args, core_end, step_trace=step_trace, on_built=built)
        finally:
            core_end.close()

    def start(self, while_building: Callable[[Callable[[], bool]], None] | None = None) -> dict:
        """Start the core and wait until it is built; returns its info, or raises its build error.
        ``while_building(core_answered)``: the front end's own start-up work, run while an engine-core process
        builds (after it was started: nothing runs on another thread of this process at a fork);
        ``core_answered()`` says whether the core has sent its answer already."""
        if self._prestarted is None or not self._adopt(self._prestarted):
            if self.engine_process:
                self._worker = self._make_process(time.monotonic())
            self._worker.start()
        if self.engine_process:
            self._child_conn.close()
            _prepare_to_read_core_info(self.engine_args)
            if while_building is not None:
                while_building(lambda: self._conn.poll(0))
        try:
            msg = self._conn.recv()
        except EOFError:
            self._worker.join(timeout=10)
            code = getattr(self._worker, "exitcode", None)
            raise RuntimeError(f"The engine core exited (code {code}) before it was ready (its log says why).") \
                from None
        if isinstance(msg, CoreBuildFailed):
            self._worker.join(timeout=10)
            raise msg.error
        if self.engine_process:     # operators (and the fault tests) find the process to watch or kill by this line
            logger.info("Started the engine core process pid %d%s.", self._worker.pid,
                        " (from the command line, before the server's own imports)" if self._prestarted else "")
        ready_at = msg.info.pop("ready_at")      # run_engine_core stamps it just before sending
        msg.info["startup_phases"]["hand-over to the front end"] = time.monotonic() - ready_at
        threading.Thread(target=self._read_loop, name="pagedllm-engine-reader", daemon=True).start()
        threading.Thread(target=self._write_loop, name="pagedllm-engine-writer", daemon=True).start()
        return msg.info

    def _adopt(self, prestarted) -> bool:
        """Use the early core if it parsed the same EngineArgs (it says so first); else end it."""
        try:
            msg = prestarted.conn.recv()
        except (EOFError, OSError):
            msg = None
        if not isinstance(msg, EarlyEngineArgs) or msg.fingerprint != engine_args_fingerprint(self.engine_args):
            if isinstance(msg, EarlyEngineArgs) and msg.fingerprint is not None:
                logger.warning("The engine process started from the command line parsed other engine arguments "
                               "than the server; starting another.")
            prestarted.discard()
            self._prestarted = None
            return False
        unused, self._conn, self._worker = self._conn, prestarted.conn, prestarted.process
        unused.close()
        return True

    def alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def send(self, msg) -> None:
        """Thread-safe; never blocks."""
        if not self._closing:
            self._outbox.put(msg)

    def shutdown(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._outbox.put(Shutdown())
        if self._worker is None or self._worker is threading.current_thread():
            return
        self._worker.join(timeout=15 if self.engine_process else 30)
        if self.engine_process and self._worker.is_alive():
            self._worker.kill()          # it ignores SIGTERM (_core_process_main)
            self._worker.join(timeout=5)

    def _write_loop(self) -> None:
        while True:
            msg = self._outbox.get()
            try:
                self._conn.send(msg)
            except (OSError, EOFError, BrokenPipeError):
                return
            if isinstance(msg, Shutdown):
                return

    def _read_loop(self) -> None:
        while True:
            try:
                if not self._conn.poll(self._idle_interval_s):
                    self._on_idle()
                    continue
                msg = self._conn.recv()
            except (EOFError, OSError):
                if not self._closing:
                    code = getattr(self._worker, "exitcode", None)
                    logger.error("The engine core stopped (exit code %s).", code)
                    self._on_closed(RuntimeError(f"engine core exited with code {code}"))
                return
            self._on_message(msg)
            if isinstance(msg, CoreDead):
                return
