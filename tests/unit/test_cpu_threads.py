"""The CPU engine's thread policy (issue 19): ``import pagedllm`` makes idle OpenMP threads sleep (PASSIVE) unless the
user chose a policy or imported torch first (then a warning says so); the torch thread count is cpu_threads, else
PAGEDLLM_CPU_THREADS, else OMP_NUM_THREADS, else the cores this process may use; the start-up log prints both."""
import logging
import os
import subprocess
import sys

import pytest
import torch
import transformers

from pagedllm import LLM, SamplingParams, envs
from pagedllm import config as cfg_mod
from pagedllm.config import EngineArgs, EngineConfig, ResolvedModel

from tiny_models import save_tiny_llama

THREAD_VARIABLES = ("PAGEDLLM_CPU_THREADS", "OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND",
                    "VLLM_CPU_NUM_OF_RESERVED_CPU",
                    "VLLM_CPU_SGL_KERNEL", "VLLM_CPU_MOE_PREPACK")


def build(monkeypatch, device: str = "cpu", **kwargs) -> EngineConfig:
    monkeypatch.setattr(cfg_mod, "_pick_device", lambda name: torch.device(device))
    return EngineConfig.build(EngineArgs(model="m", **kwargs),
                              ResolvedModel("m", transformers.LlamaConfig(max_position_embeddings=4096), None))


@pytest.fixture
def no_thread_variables(monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cfg_mod.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)


def test_thread_count_order(monkeypatch, no_thread_variables):
    assert build(monkeypatch).cpu_threads == 3                            # the cores this process may use
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert build(monkeypatch).cpu_threads == 2                            # OpenMP's own variable
    monkeypatch.setenv("PAGEDLLM_CPU_THREADS", "5")
    assert build(monkeypatch).cpu_threads == 5                            # ours wins over it
    assert build(monkeypatch, cpu_threads=1).cpu_threads == 1             # the argument wins over both


def test_parallel_ranks_share_the_cores(monkeypatch, no_thread_variables):
    """Tensor / pipeline parallel on the CPU: each rank gets its share of the cores (vLLM's CPU backend gives each
    rank cores of its own); every rank took every core, so 2 ranks on 2 cores ran 4 OpenMP threads. A count that is
    given is each rank's."""
    monkeypatch.setattr(cfg_mod.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert build(monkeypatch).cpu_threads == 8
    assert build(monkeypatch, tensor_parallel_size=2).cpu_threads == 4
    assert build(monkeypatch, tensor_parallel_size=2, pipeline_parallel_size=2).cpu_threads == 2
    assert build(monkeypatch, tensor_parallel_size=4, pipeline_parallel_size=4).cpu_threads == 1     # at least one
    assert build(monkeypatch, tensor_parallel_size=2, cpu_threads=3).cpu_threads == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert build(monkeypatch, tensor_parallel_size=2).cpu_threads == 6


def test_thread_count_errors_and_gpu(monkeypatch, no_thread_variables, caplog):
    with pytest.raises(ValueError, match="cpu_threads must be >= 1, got 0"):
        build(monkeypatch, cpu_threads=0)
    monkeypatch.setenv("PAGEDLLM_CPU_THREADS", "0")
    with pytest.raises(ValueError, match="PAGEDLLM_CPU_THREADS must be >= 1, got 0"):
        build(monkeypatch)
    monkeypatch.setenv("PAGEDLLM_CPU_THREADS", "two")
    with pytest.raises(ValueError, match="PAGEDLLM_CPU_THREADS must be a whole number, got 'two'"):
        build(monkeypatch)
    monkeypatch.delenv("PAGEDLLM_CPU_THREADS")
    with caplog.at_level(logging.WARNING, logger="pagedllm.config"):
        assert build(monkeypatch, device="cuda").cpu_threads is None      # the GPU path keeps torch's default
        assert build(monkeypatch, device="cuda", cpu_threads=2).cpu_threads is None
    assert sum("cpu_threads=2 has no effect on the GPU" in r.getMessage() for r in caplog.records) == 1


def test_vllm_cpu_omp_threads_bind(monkeypatch, no_thread_variables):
    """vLLM's VLLM_CPU_OMP_THREADS_BIND: a CPU list binds each rank to its CPUs with one thread per CPU (over
    OMP_NUM_THREADS, as vLLM's CPU worker sets its threads); '|' separates the ranks' lists; auto / nobind bind
    nothing. It was ignored: '0' on a 3-core machine ran 3 unbound threads."""
    def bound(**kwargs):
        config = build(monkeypatch, **kwargs)
        return config.cpu_threads, config.cpu_bind
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")
    assert bound() == (1, ((0,),))
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert bound() == (2, ((0, 1),))
    assert bound(cpu_threads=1) == (1, ((0, 1),))                       # a count given wins, the binding stays
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1-2")
    assert bound(tensor_parallel_size=2) == (1, ((0,), (1, 2)))         # rank 1 runs 2 threads (its list)
    assert build(monkeypatch, tensor_parallel_size=2).cpu_threads_from_bind
    for value in ("auto", "nobind"):
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", value)
        assert bound() == (3, None)                                     # OMP_NUM_THREADS
    for value, message in (("0-1", "gives 1 CPU list\\(s\\) for 2 rank"), ("0|x", "'x' is not a list of CPU ids"),
                           ("0|1-5", "names CPU\\(s\\) \\[3, 4, 5\\] this process may not run on"),
                           ("0,0|1", "one CPU twice")):
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", value)
        with pytest.raises(ValueError, match=message):
            build(monkeypatch, tensor_parallel_size=2)
    assert build(monkeypatch, device="cuda").cpu_bind is None             # the GPU: nothing to bind
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    monkeypatch.delattr(cfg_mod.os, "sched_setaffinity")
    with pytest.raises(ValueError, match="binding threads to CPUs needs Linux"):
        build(monkeypatch, tensor_parallel_size=2)                          # macOS / Windows


def test_vllm_cpu_reserved_cores_and_kernel_switches(monkeypatch, no_thread_variables, caplog):
    """VLLM_CPU_NUM_OF_RESERVED_CPU leaves cores of each rank's default share to other processes (ignored: it was
    all cores); VLLM_CPU_SGL_KERNEL / VLLM_CPU_MOE_PREPACK, vLLM kernels pagedllm lacks, are named when asked for."""
    monkeypatch.setattr(cfg_mod.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")
    assert build(monkeypatch).cpu_threads == 7
    assert build(monkeypatch, tensor_parallel_size=2).cpu_threads == 3
    assert build(monkeypatch, cpu_threads=8).cpu_threads == 8                # a count given is taken as it is
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "4")
    with pytest.raises(ValueError, match=r"VLLM_CPU_NUM_OF_RESERVED_CPU \(4\) must be >= 0 and less than the 4"):
        build(monkeypatch, tensor_parallel_size=2)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    assert build(monkeypatch).cpu_threads == 8                              # only with auto binding, as vLLM's
    monkeypatch.setenv("VLLM_CPU_SGL_KERNEL", "1")
    monkeypatch.setenv("VLLM_CPU_MOE_PREPACK", "1")
    with caplog.at_level(logging.WARNING, logger="pagedllm.config"):
        build(monkeypatch)
    messages = [r.getMessage() for r in caplog.records]
    assert any("VLLM_CPU_SGL_KERNEL is set" in m and "no effect" in m for m in messages)
    assert any("VLLM_CPU_MOE_PREPACK=1 has no effect" in m for m in messages)


@pytest.fixture
def fresh_openmp_state(monkeypatch):
    """configure_openmp as if called for the first time, its changes to os.environ undone afterwards."""
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.setenv(name, "placeholder")   # so that monkeypatch restores the variable's original state
        monkeypatch.delenv(name)
    monkeypatch.setattr(envs, "openmp_wait_policy", "not configured")
    monkeypatch.setattr(envs, "openmp_passive_missed", False)


def test_passive_unless_the_user_chose(monkeypatch, fresh_openmp_state):
    monkeypatch.delitem(sys.modules, "torch")          # as at `import pagedllm` before torch
    assert envs.configure_openmp() == "OMP_WAIT_POLICY=PASSIVE (set by pagedllm)"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    assert envs.configure_openmp() == "GOMP_SPINCOUNT=10000 (from the environment)"
    assert "OMP_WAIT_POLICY" not in os.environ
    assert not envs.openmp_passive_missed


def test_torch_imported_first_is_reported(monkeypatch, fresh_openmp_state, caplog):
    assert "spin-wait" in envs.configure_openmp()      # torch is in sys.modules here
    assert "OMP_WAIT_POLICY" not in os.environ and envs.openmp_passive_missed
    monkeypatch.setattr(cfg_mod.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with caplog.at_level(logging.WARNING, logger="pagedllm.config"):
        build(monkeypatch)
    assert any("torch was imported before pagedllm" in r.getMessage() and "OMP_WAIT_POLICY=PASSIVE" in r.getMessage()
               for r in caplog.records)


def test_import_pagedllm_sets_the_policy_before_torch_loads():
    """A fresh interpreter: `import pagedllm` must set the policy before torch (and its OpenMP runtime) loads."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = "import pagedllm, os; print(os.environ.get('OMP_WAIT_POLICY'), pagedllm.envs.openmp_passive_missed)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["PASSIVE", "False"]


def test_engine_applies_threads_and_logs_them(tmp_path, monkeypatch, no_thread_variables):
    save_tiny_llama(tmp_path, vocab_size=128)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    root = logging.getLogger("pagedllm")
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)     # the start-up block is INFO (PAGEDLLM_LOGGING_LEVEL may be higher)
    old = torch.get_num_threads()
    try:
        llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, cpu_threads=1, max_model_len=64,
                  kv_cache_memory_gb=0.01)
        assert torch.get_num_threads() == 1
        out = llm.generate([{"prompt_token_ids": [1, 2, 3]}], SamplingParams(max_tokens=2, ignore_eos=True),
                           use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) == 2
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        torch.set_num_threads(old)
    start = [r.getMessage() for r in records if "engine ready" in r.getMessage()]
    assert start and "CPU threads  1 torch threads" in start[0]
    assert f"OpenMP wait: {envs.openmp_wait_policy}" in start[0]


def test_engine_binds_to_vllms_cpu_list(tmp_path, monkeypatch, no_thread_variables, caplog):
    """VLLM_CPU_OMP_THREADS_BIND=<one CPU>: the engine's process runs on that CPU with one torch thread, and the
    start-up block says so (the process's affinity and thread count are restored after)."""
    save_tiny_llama(tmp_path, vocab_size=128)
    monkeypatch.undo()                  # the real affinity: the engine binds this process
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    cpu = min(os.sched_getaffinity(0))
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", str(cpu))
    old_threads, old_affinity = torch.get_num_threads(), os.sched_getaffinity(0)
    try:
        with caplog.at_level(logging.INFO, logger="pagedllm"):
            llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, max_model_len=64, kv_cache_memory_gb=0.01)
        assert os.sched_getaffinity(0) == {cpu} and torch.get_num_threads() == 1
        out = llm.generate([{"prompt_token_ids": [1, 2, 3]}], SamplingParams(max_tokens=2, ignore_eos=True),
                           use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) == 2
    finally:
        os.sched_setaffinity(0, old_affinity)
        torch.set_num_threads(old_threads)
    start = [r.getMessage() for r in caplog.records if "engine ready" in r.getMessage()]
    assert start and f"1 torch threads a rank, bound to CPUs [{cpu}] (VLLM_CPU_OMP_THREADS_BIND)" in start[0]
