"""Session 33: the spawned engine-core process's start-up before the GPU work, on the CPU (issue 18).

    OMP_NUM_THREADS=1 python benchmarks/cpu_session33/engine_start.py spawn   [serve flags ...]
    OMP_NUM_THREADS=1 python benchmarks/cpu_session33/engine_start.py imports [serve flags ...]
    OMP_NUM_THREADS=1 python benchmarks/cpu_session33/engine_start.py profile [serve flags ...]

``spawn``: start the engine process as `pagedllm serve` does on a GPU host (entrypoints/early_engine.py: spawned,
the same target, the same command line), and stop it once its config is built. Prints the timeline's first two
phases: "engine process start" (spawn -> run_engine_core's entry: the new interpreter, its imports, the command
line parsed) and "config" (create_engine_config). The model is not built: EngineCore is replaced by a stub there
(S33_BUILD=1: the stub builds the real EngineCore first and reports its seconds; for small models only).
``imports``: the same imports and parse in this one process, then create_engine_config (for ``-X importtime``).
``profile``: as ``imports``, with cProfile around create_engine_config (top 40 by cumulative time).
Flags: those after ``serve`` (none: the bundled SmolLM2); the 7B runs used
``DIR --load-format dummy --skip-tokenizer-init --max-model-len 4096 --dtype bfloat16`` (DIR: a Qwen2.5-7B
config.json from shared/bench/workloads.py), as benchmarks/gpu_session9/s9e.sh.
"""
import gc
import os
import sys
import time

from pagedllm.entrypoints.cli import make_parser   # what the `pagedllm` script imports, so the spawned child does too


def _probe_child(argv, make_parser, conn, spawned_at, parent_pid):
    """early_engine._child_main itself, with run_engine_core's EngineCore replaced by a stub that reports and exits
    (installed when pagedllm.engine.core has been imported, so nothing is imported earlier than in the real child).
    S33_OFF=gcpause: gc_heap.collections_paused, park_start_up_heap and gc.disable() do nothing (the collector runs
    as before session 33)."""
    times = {}

    def patch(core):
        real_create = core.create_engine_config

        def timed_create(args):
            times["entered"] = time.monotonic()
            times["collections"] = [g["collections"] for g in gc.get_stats()]
            return real_create(args)

        real_core = core.EngineCore

        class Stub:
            def __init__(self, config):
                if os.environ.get("S33_BUILD") == "1":     # the CPU engine built too (a small model only)
                    t = time.monotonic()
                    real_core(config)
                    times["core build"] = time.monotonic() - t
                t_end = time.monotonic()
                conn.send({**({"core build": times["core build"]} if "core build" in times else {}),
                           "engine process start": times["entered"] - spawned_at,
                           "config": t_end - times["entered"] - times.get("core build", 0.0),
                           "modules": len(sys.modules),
                           "collections before entry / in config": (times["collections"], [
                               g["collections"] - n for g, n in zip(gc.get_stats(), times["collections"])])})
                conn.close()
                os._exit(0)
        core.create_engine_config, core.EngineCore = timed_create, Stub

    _after_import("pagedllm.engine.core", patch)
    if "gcpause" in os.environ.get("S33_OFF", ""):
        import contextlib

        from pagedllm import gc_heap
        gc_heap.collections_paused = contextlib.nullcontext
        gc_heap.park_start_up_heap = lambda: None
        gc.disable = lambda: None      # early_engine._child_main's and run_engine_core's
    if os.environ.get("S33_TF_THREAD") == "1":     # experiment: transformers imported on a thread meanwhile
        import importlib
        import threading
        threading.Thread(target=importlib.import_module, args=("transformers.models",), daemon=True).start()
    from pagedllm.entrypoints import early_engine
    early_engine._child_main(argv, make_parser, conn, spawned_at, parent_pid)


def _after_import(name: str, fn) -> None:
    """Call fn(module) as soon as module ``name`` has been executed (a meta-path finder wrapping its loader)."""
    import importlib.abc
    import importlib.machinery

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            real_exec = spec.loader.exec_module

            def exec_module(module):
                real_exec(module)
                fn(module)
            spec.loader.exec_module = exec_module
            return spec
    sys.meta_path.insert(0, Finder())


def spawn(argv):
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe(duplex=True)
    p = ctx.Process(target=_probe_child, daemon=True,
                    args=(argv, make_parser, child_conn, time.monotonic(), os.getpid()))
    p.start()
    child_conn.close()
    early = conn.recv()       # EarlyEngineArgs
    assert early.fingerprint is not None, "the child will not serve this command line"
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in conn.recv().items()}, flush=True)
    p.join()


def in_process(argv, profile: bool):
    import importlib
    for name in ("multiprocessing.connection", "multiprocessing.spawn"):      # the spawned child's own imports
        importlib.import_module(name)
    t0 = time.perf_counter()
    for name in ("pagedllm.worker.executor", "pagedllm.engine.core_client"):   # as early_engine._child_main
        importlib.import_module(name)
    from pagedllm.entrypoints import early_engine
    args = early_engine._engine_args(argv, make_parser)
    t1 = time.perf_counter()
    from pagedllm.engine.core import create_engine_config
    pr = None
    if profile:
        import cProfile
        pr = cProfile.Profile()
        pr.enable()
    create_engine_config(args)
    t2 = time.perf_counter()
    if pr is not None:
        pr.disable()
    print(f"imports + parse {t1 - t0:.3f} s, config {t2 - t1:.3f} s, {len(sys.modules)} modules", flush=True)
    if pr is not None:
        import pstats
        pstats.Stats(pr).sort_stats("cumtime").print_stats(40)


if __name__ == "__main__":
    mode, flags = sys.argv[1], ["serve", *sys.argv[2:]]
    if mode == "spawn":
        spawn(flags)
    else:
        in_process(flags, profile=mode == "profile")
