"""Session 33: the spawned engine-core process's start-up before the GPU work, on the CPU (issue 18).

    OMP_NUM_THREADS=1 python benchmarks/cpu_session33/engine_start.py spawn   [serve flags ...]
    OMP_NUM_THREADS=1 python benchmarks/cpu_session33/engine_start.py imports [serve flags ...]
    OMP_NUM_THREADS=1 python benchmarks/cpu_session33/engine_start.py profile [serve flags ...]

``spawn``: start the engine process as `pagedllm serve` does on a GPU host (entrypoints/early_engine.py: spawned,
the same target, the same command line), and stop it once its config is built. Prints the timeline's first two
phases: "engine process start" (spawn -> run_engine_core's entry: the new interpreter, its imports, the command
line parsed) and "config" (create_engine_config). The model is not built: EngineCore is replaced by a stub there.
``imports``: the same imports and parse in this one process, then create_engine_config (for ``-X importtime``).
``profile``: as ``imports``, with cProfile around create_engine_config (top 40 by cumulative time).
Flags: those after ``serve`` (none: the bundled SmolLM2); the 7B runs used
``DIR --load-format dummy --skip-tokenizer-init --max-model-len 4096 --dtype bfloat16`` (DIR: a Qwen2.5-7B
config.json from shared/bench/workloads.py), as benchmarks/gpu_session9/s9e.sh.
"""
import os
import sys
import time

from pagedllm.entrypoints.cli import make_parser   # what the `pagedllm` script imports, so the spawned child does too


def _probe_child(argv, make_parser, conn, spawned_at, parent_pid):
    """early_engine._child_main, with run_engine_core's EngineCore replaced by a stub that reports and exits."""
    if os.environ.get("S33_TF_THREAD") == "1":     # experiment: transformers imported on a thread meanwhile
        import threading

        import importlib
        threading.Thread(target=importlib.import_module, args=("transformers.models",), daemon=True).start()
    from pagedllm.worker.executor import die_with_parent
    die_with_parent(parent_pid)
    from pagedllm.engine import core
    times = {}
    real_create = core.create_engine_config

    def timed_create(args):
        times["entered"] = time.monotonic()
        return real_create(args)

    class Stub:
        def __init__(self, config):
            conn.send({"engine process start": times["entered"] - spawned_at,
                       "config": time.monotonic() - times["entered"], "modules": len(sys.modules)})
            conn.close()
            os._exit(0)

    core.create_engine_config, core.EngineCore = timed_create, Stub
    from pagedllm.engine.core_client import run_prestarted_core
    from pagedllm.entrypoints import early_engine
    run_prestarted_core(early_engine._engine_args(argv, make_parser), conn, spawned_at)


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
    print({k: round(v, 3) for k, v in conn.recv().items()}, flush=True)
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
