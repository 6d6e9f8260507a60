"""`pagedllm serve` starts its engine-core process first, from the raw command line, before its own imports.

Where the engine process is spawned (a GPU host), it re-imports torch and pagedllm and builds the model: ~20 s of a
cold start on an H200 (docs/perf.md, session 9). The server process spent ~5.6 s before spawning it (the
interpreter, torch, FastAPI, pagedllm's own modules), and the two ran one after the other. Here the CLI spawns the
engine process before importing anything heavy; the child parses the same command line with the same code
(the CLI's parser, ``finalize_args``, ``serve_engine_args``) and starts building at once, while the server
imports and parses in parallel. When the server reaches ``build_engine``, ``EngineCoreClient`` adopts the child if it
parsed the same ``EngineArgs`` (its first message, ``EarlyEngineArgs``), else ends it and starts one as before.

The child prints nothing while parsing (the server reports a bad command line) and ends quietly when it will not
serve (a parse error, ``--help``, tensor/pipeline parallel or ``--disable-frontend-multiprocessing``: the engine
then runs in the server's process). It dies with the server (PR_SET_PDEATHSIG on Linux, and an exit hook here kills
one still alive when the server's interpreter exits). ``PAGEDLLM_EARLY_ENGINE=0`` turns this off.

This module imports nothing heavy at the top: it runs before torch is imported.
"""
from __future__ import annotations

import atexit
import os
import sys
import time


class PrestartedCore:
    """An engine-core process started from the command line: ``process``, the server's end ``conn`` of its pipe."""

    def __init__(self, process, conn):
        self.process, self.conn = process, conn
        self._discarded = False
        # Registered after multiprocessing's own exit hook, so it runs first: that hook would SIGTERM the daemonic
        # child (ignored by every engine-core process) and then wait for it, e.g. after Ctrl-C during start-up.
        atexit.register(self._kill)

    def discard(self) -> None:
        """Not adopted by the engine client: end it now."""
        if self._discarded:
            return
        self._discarded = True
        self._kill()
        self.conn.close()

    def _kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)


def _spawned(argv: list[str]) -> bool:
    """Would `serve` spawn its engine process (not fork it)? As core_client._start_method, from the raw flags."""
    from pagedllm import envs
    forced = envs.PAGEDLLM_ENGINE_START_METHOD
    if forced:
        return forced == "spawn"
    if not sys.platform.startswith("linux"):
        return True
    on_cpu = any(a in ("--device=cpu",) for a in argv) or any(
        a == "--device" and i + 1 < len(argv) and argv[i + 1] == "cpu" for i, a in enumerate(argv))
    return not on_cpu and os.path.exists("/dev/nvidiactl")


def start(argv: list[str], make_parser) -> PrestartedCore | None:
    """Spawn the engine process for a `serve` command line (``argv`` without the program name), or None when this
    command line does not start one this way. ``make_parser``: the CLI's (cli.make_parser; passed, not imported,
    so that the CLI can import this module), pickled by reference into the child."""
    from pagedllm import envs
    if not argv or argv[0] != "serve" or any(a in ("-h", "--help") or a.startswith("--help=") for a in argv):
        return None
    if not envs.PAGEDLLM_EARLY_ENGINE or not _spawned(argv):
        return None
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe(duplex=True)
    process = ctx.Process(target=_child_main, name="pagedllm-engine-core", daemon=True,
                          args=(list(argv), make_parser, child_conn, time.monotonic(), os.getpid()))
    process.start()
    child_conn.close()
    return PrestartedCore(process, conn)


def _child_main(argv: list[str], make_parser, conn, spawned_at: float, parent_pid: int) -> None:
    import gc
    # No collections through torch's and pagedllm's imports (module objects, kept for the process's life) and the
    # config: run_engine_core parks what they made and turns the collector on (gc_heap.park_start_up_heap).
    gc.disable()
    from pagedllm.worker.executor import die_with_parent
    die_with_parent(parent_pid)      # as the rank workers (the server's exit hook covers other platforms)
    from pagedllm.engine.core_client import run_prestarted_core
    run_prestarted_core(_engine_args(argv, make_parser), conn, spawned_at)


def _engine_args(argv: list[str], make_parser):
    """The EngineArgs the server will build from ``argv``, or None when it will not use an engine process."""
    import contextlib
    import io
    import logging

    from pagedllm.entrypoints.openai.cli_args import finalize_args, serve_engine_args
    logging.disable(logging.WARNING)           # the server logs the command line's warnings once
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = finalize_args(make_parser().parse_args(argv))
        engine_args, _, engine_process = serve_engine_args(args)
    except (SystemExit, Exception):   # noqa: BLE001 - the server reports it
        return None
    finally:
        logging.disable(logging.NOTSET)
    return engine_args if engine_process else None
