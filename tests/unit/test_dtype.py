"""dtype="auto" on the CPU is float32 (HF-exact, batch-independent greedy output, issue 19), also where the CPU has
native bf16; explicit dtypes win, and bf16 asked for on a CPU without native bf16 says it is slower there."""
import logging

import pytest
import torch
import transformers

from pagedllm import config as cfg_mod

CPU = torch.device("cpu")


@pytest.mark.parametrize("native_bf16", [True, False])
@pytest.mark.parametrize("config_dtype", [None, "float32", "bfloat16"])
def test_auto_on_cpu_is_float32(monkeypatch, native_bf16, config_dtype):
    monkeypatch.setattr(cfg_mod, "_cpu_has_native_bf16", lambda: native_bf16)
    hf = transformers.LlamaConfig()
    hf.dtype = config_dtype
    assert cfg_mod._pick_dtype("auto", hf, CPU) == torch.float32


@pytest.mark.parametrize("native_bf16, warned", [(True, False), (False, True)])
def test_bf16_without_native_bf16_warns(monkeypatch, caplog, native_bf16, warned):
    monkeypatch.setattr(cfg_mod, "_cpu_has_native_bf16", lambda: native_bf16)
    with caplog.at_level(logging.WARNING, logger="pagedllm.config"):
        assert cfg_mod._pick_dtype("bfloat16", transformers.LlamaConfig(), CPU) == torch.bfloat16
    slower = [r.getMessage() for r in caplog.records if "without native bf16" in r.getMessage()]
    assert bool(slower) == warned
    if warned:
        assert "slower than float32" in slower[0] and "dtype='auto' gives float32" in slower[0]


@pytest.mark.parametrize("name, expected", [("float32", torch.float32), ("float", torch.float32),
                                            ("bfloat16", torch.bfloat16),
                                            ("half", torch.float32)])     # fp16 weights, fp32 compute
def test_explicit_on_cpu(monkeypatch, name, expected):
    monkeypatch.setattr(cfg_mod, "_cpu_has_native_bf16", lambda: True)
    assert cfg_mod._pick_dtype(name, transformers.LlamaConfig(), CPU) == expected


def test_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match="Unknown dtype 'fp8'"):
        cfg_mod._pick_dtype("fp8", transformers.LlamaConfig(), CPU)


def test_torch_dtype_objects_as_vllm_takes_them():
    # LLM(model, dtype=torch.bfloat16) in vLLM: the same as dtype="bfloat16".
    assert cfg_mod.EngineArgs(dtype=torch.bfloat16).dtype == "bfloat16"
    assert cfg_mod.EngineArgs.from_kwargs("m", dtype=torch.float16).dtype == "float16"
    assert cfg_mod._pick_dtype(cfg_mod.EngineArgs(dtype=torch.float32).dtype, transformers.LlamaConfig(), CPU) \
        == torch.float32
    with pytest.raises(ValueError, match="dtype=torch.int8 is not supported; use one of float32, float16, bfloat16"):
        cfg_mod.EngineArgs(dtype=torch.int8)
