"""Settings in one place: only pagedllm/envs.py reads the environment; the kernel and graph switches are engine
arguments whose defaults are the PAGEDLLM_* variables, resolved once into EngineConfig and applied to the kernels."""
import logging
import pathlib
import re

import pytest
import torch
import transformers

from pagedllm import config as cfg_mod
from pagedllm import envs
from pagedllm.config import EngineArgs, EngineConfig, ResolvedModel
from pagedllm.kernels import settings as kernel_settings

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "pagedllm"
_ENV_READ = re.compile(r"\bos\.environ\b|\bgetenv\b|\bfrom\s+os\s+import\s+[^\n]*\benviron\b|\bos\.putenv\b")


def test_only_envs_reads_the_environment():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "envs.py" and path.parent == PACKAGE:
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _ENV_READ.search(line):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{lineno}: {line.strip()}")
    assert not offenders, "read the variable through pagedllm.envs instead:\n" + "\n".join(offenders)


def test_every_variable_is_documented(monkeypatch):
    for name in dir(envs):
        assert envs._VARIABLES[name][1].strip(), name
    monkeypatch.delenv("PAGEDLLM_LOGGING_LEVEL", raising=False)
    assert envs.PAGEDLLM_LOGGING_LEVEL == "INFO"
    monkeypatch.setenv("PAGEDLLM_LOGGING_LEVEL", "debug")
    assert envs.PAGEDLLM_LOGGING_LEVEL == "DEBUG"
    with pytest.raises(AttributeError):
        envs.PAGEDLLM_NO_SUCH_VARIABLE


@pytest.mark.parametrize("value, default_on, default_off", [
    (None, True, False), ("", True, False), ("0", False, False), ("off", False, False), ("No", False, False),
    ("1", True, True), ("true", True, True), ("ON", True, True), ("garbage", True, False)])
def test_switch_parsing(monkeypatch, value, default_on, default_off):
    for name in ("PAGEDLLM_PDL", "PAGEDLLM_USE_MODELSCOPE"):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert envs.PAGEDLLM_PDL is default_on              # default-on switch: off only for 0/false/no/off
    assert envs.PAGEDLLM_USE_MODELSCOPE is default_off  # default-off switch: on only for 1/true/yes/on


def test_values_read_at_access(monkeypatch):
    monkeypatch.setenv("PAGEDLLM_CACHE_DIR", "/tmp/x")
    assert envs.PAGEDLLM_CACHE_DIR == "/tmp/x"
    monkeypatch.setenv("PAGEDLLM_CPU_KVCACHE_SPACE", "0.5")
    assert envs.PAGEDLLM_CPU_KVCACHE_SPACE == 0.5
    monkeypatch.setenv("PAGEDLLM_CPU_KVCACHE_SPACE", "lots")
    with pytest.raises(ValueError, match="PAGEDLLM_CPU_KVCACHE_SPACE must be a number"):
        envs.PAGEDLLM_CPU_KVCACHE_SPACE


def test_counts_are_checked_not_replaced(monkeypatch):
    import os
    cores = len(os.sched_getaffinity(0))
    # The compile threads default to the usable cores, at most 16.
    assert envs.PAGEDLLM_PIECEWISE_MAX_TOKENS == 512 and envs.PAGEDLLM_COMPILE_THREADS == min(cores, 16)
    # Start-up switch (kernels/parallel_compile.py): Triton prepared off the critical path by default.
    assert envs.PAGEDLLM_TRITON_PREP is True
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert envs.PAGEDLLM_COMPILE_THREADS == 16
    monkeypatch.setenv("PAGEDLLM_PIECEWISE_MAX_TOKENS", "2048")
    monkeypatch.setenv("PAGEDLLM_COMPILE_THREADS", "0")      # one by one
    assert envs.PAGEDLLM_PIECEWISE_MAX_TOKENS == 2048 and envs.PAGEDLLM_COMPILE_THREADS == 0
    monkeypatch.setenv("PAGEDLLM_PIECEWISE_MAX_TOKENS", "0")     # was silently 512
    with pytest.raises(ValueError, match="PAGEDLLM_PIECEWISE_MAX_TOKENS must be at least 1, got 0"):
        envs.PAGEDLLM_PIECEWISE_MAX_TOKENS
    assert envs.PAGEDLLM_SKINNY_MAX_M == 128
    monkeypatch.setenv("PAGEDLLM_SKINNY_MAX_M", "129")          # above the kernel's 128 rows: not silently 128
    with pytest.raises(ValueError, match="PAGEDLLM_SKINNY_MAX_M must be at most 128, got 129"):
        envs.PAGEDLLM_SKINNY_MAX_M
    monkeypatch.setenv("PAGEDLLM_COMPILE_THREADS", "-2")
    with pytest.raises(ValueError, match="PAGEDLLM_COMPILE_THREADS must be at least 0, got -2"):
        envs.PAGEDLLM_COMPILE_THREADS


def build(monkeypatch, device="cuda", **kwargs) -> EngineConfig:
    monkeypatch.setattr(cfg_mod, "_pick_device", lambda name: torch.device(device))
    monkeypatch.setattr(cfg_mod, "_pick_dtype", lambda name, hf, dev: torch.bfloat16)
    return EngineConfig.build(EngineArgs(model="m", **kwargs),
                              ResolvedModel("m", transformers.LlamaConfig(max_position_embeddings=4096), None))


SWITCHES = {"triton_gemv": "PAGEDLLM_TRITON_GEMV", "pdl": "PAGEDLLM_PDL",
            "piecewise_cuda_graphs": "PAGEDLLM_PIECEWISE_GRAPHS", "cpu_onednn": "PAGEDLLM_CPU_ONEDNN"}


@pytest.mark.parametrize("field, variable", SWITCHES.items())
def test_switch_argument_defaults_to_its_variable(monkeypatch, field, variable):
    for name in SWITCHES.values():
        monkeypatch.delenv(name, raising=False)
    assert getattr(build(monkeypatch), field) is True                         # nothing set: on
    monkeypatch.setenv(variable, "0")
    assert getattr(build(monkeypatch), field) is False                        # the variable is the default
    assert getattr(build(monkeypatch, **{field: True}), field) is True        # the argument wins
    monkeypatch.delenv(variable)
    assert getattr(build(monkeypatch, **{field: False}), field) is False


def test_disable_custom_kernels(monkeypatch):
    cfg = build(monkeypatch, disable_custom_kernels=True)
    assert (cfg.attention_backend, cfg.triton_gemv, cfg.pdl) == ("torch", False, False)
    with pytest.raises(ValueError, match="attention_backend='triton' contradicts disable_custom_kernels"):
        build(monkeypatch, disable_custom_kernels=True, attention_backend="triton")
    with pytest.raises(ValueError, match="pdl=True contradicts disable_custom_kernels"):
        build(monkeypatch, disable_custom_kernels=True, pdl=True)


def test_configure_kernels(monkeypatch):
    monkeypatch.setattr(kernel_settings, "current", kernel_settings.KernelSettings())
    kernel_settings.configure_kernels(build(monkeypatch, pdl=False, cpu_onednn=False))
    assert kernel_settings.current == kernel_settings.KernelSettings(pdl=False, triton_gemv=True, cpu_onednn=False)


def test_async_scheduling_variable_is_gone(monkeypatch):
    monkeypatch.setenv("PAGEDLLM_ASYNC_SCHEDULING", "1")
    assert build(monkeypatch, device="cpu").async_scheduling is False     # the argument alone decides
    assert build(monkeypatch, device="cpu", async_scheduling=True).async_scheduling is True


def test_kv_cache_size(monkeypatch):
    gib = 1 << 30
    monkeypatch.delenv("PAGEDLLM_CPU_KVCACHE_SPACE", raising=False)
    assert build(monkeypatch, device="cpu").kv_cache_memory_bytes == 4 * gib
    monkeypatch.setenv("PAGEDLLM_CPU_KVCACHE_SPACE", "2")
    assert build(monkeypatch, device="cpu").kv_cache_memory_bytes == 2 * gib
    assert build(monkeypatch, device="cpu", kv_cache_memory_gb=0.5).kv_cache_memory_bytes == gib // 2
    assert build(monkeypatch, device="cuda").kv_cache_memory_bytes is None          # gpu_memory_utilization
    assert build(monkeypatch, device="cuda", kv_cache_memory_gb=3).kv_cache_memory_bytes == 3 * gib
    assert build(monkeypatch, device="cuda", kv_cache_memory_bytes=12345).kv_cache_memory_bytes == 12345
    with pytest.raises(ValueError, match="kv_cache_memory_gb or kv_cache_memory_bytes, not both"):
        build(monkeypatch, kv_cache_memory_gb=1, kv_cache_memory_bytes=1 << 30)


def test_warnings_for_changed_or_ignored_values(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="pagedllm.config"):
        build(monkeypatch, device="cpu", gpu_memory_utilization=0.5)
        build(monkeypatch, device="cpu")
        build(monkeypatch, device="cuda", gpu_memory_utilization=0.5)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("gpu_memory_utilization=0.5 has no effect on the CPU" in m and "kv_cache_memory_gb" in m
               and "VLLM_CPU_KVCACHE_SPACE" in m and "else 4 GiB" in m for m in messages) == 1
