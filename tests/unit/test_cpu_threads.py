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

THREAD_VARIABLES = ("PAGEDLLM_CPU_THREADS", "OMP_NUM_THREADS")


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
