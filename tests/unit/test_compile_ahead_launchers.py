"""kernels/parallel_compile._LauncherBuilds on the CPU (the GPU test builds real launchers): each compiled variant's
launcher is built on the pool once per distinct signature, also when the compile finishes before or after it is
registered, and ``wait`` returns only after every build ran."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace

from pagedllm.kernels import parallel_compile


def _kernel(signature: dict, constants: dict | None = None):
    return SimpleNamespace(src=SimpleNamespace(signature=signature, constants=constants or {}),
                           metadata=SimpleNamespace())


def test_one_launcher_per_signature_built_on_the_pool_and_waited_for(monkeypatch):
    built = []
    lock = threading.Lock()

    def build(kernel):
        time.sleep(0.01)
        with lock:
            built.append((kernel.src.signature, threading.current_thread().name))

    monkeypatch.setattr(parallel_compile, "_build_launcher", build)
    a, b, a_again = _kernel({0: "*bf16", 1: "i32"}), _kernel({0: "*fp32", 1: "i32"}), _kernel({0: "*bf16", 1: "i32"})
    c = _kernel({0: "*bf16", 1: "i32"}, constants={(2,): 4})          # a constant changes the launcher
    failed = Future()
    failed.set_exception(RuntimeError("this variant does not build"))
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="pool") as pool:
        builds = parallel_compile._LauncherBuilds(pool)
        done_before = Future()
        done_before.set_result(a)                      # compiled before it is registered: the callback runs now
        builds.after(SimpleNamespace(future=done_before))
        later = [Future() for _ in range(3)]
        for f in later:
            builds.after(SimpleNamespace(future=f))
        builds.after(SimpleNamespace(future=failed))   # left to the first launch, which raises it
        builds.after(a)                                # not a FutureKernel (no .future): nothing to do
        threading.Timer(0.2, lambda: [f.set_result(k) for f, k in zip(later, [b, a_again, c])]).start()
        assert builds.wait() == 3
        assert len(built) == 3                          # all done when wait returns
    assert sorted(str(s) for s, _ in built) == sorted(str(k.src.signature) for k in (a, b, c))
    assert all(name.startswith("pool") for _, name in built)


def test_the_engine_prepares_triton_while_reading_its_config_only_on_a_gpu_host(tmp_path, monkeypatch):
    # engine/core.create_engine_config starts kernels/parallel_compile.prepare_triton_in_background where a CUDA
    # device node exists, the engine is not asked for the CPU and the model runs in this process; else nothing.
    import os

    from tiny_models import save_tiny_llama

    from pagedllm.config import EngineArgs
    from pagedllm.engine.core import create_engine_config
    save_tiny_llama(tmp_path, 64)
    started = []
    monkeypatch.setattr(parallel_compile, "prepare_triton_in_background", lambda: started.append(True))
    real_exists = os.path.exists
    cases = [("auto", True, None, 1), ("cpu", True, None, 0), ("auto", False, None, 0),
             ("auto", True, "mp", 0)]     # mp: the model runs in a worker process
    for device, gpu_host, backend, expected in cases:
        started.clear()
        monkeypatch.setattr(os.path, "exists", lambda p, g=gpu_host: g if p == "/dev/nvidiactl" else real_exists(p))
        config = create_engine_config(EngineArgs(model=str(tmp_path), skip_tokenizer_init=True, device=device,
                                                 distributed_executor_backend=backend))
        assert config.device.type == "cpu"      # this host has no GPU: "auto" resolves to the CPU all the same
        assert len(started) == expected, (device, gpu_host, backend)
