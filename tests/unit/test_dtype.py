"""dtype="auto" picks what vLLM would: on CPU bf16 where the CPU computes it natively, else fp32; explicit dtypes win."""
import pytest
import torch
import transformers

from pagedllm import config as cfg_mod

CPU = torch.device("cpu")


@pytest.mark.parametrize("native_bf16, expected", [(True, torch.bfloat16), (False, torch.float32)])
@pytest.mark.parametrize("config_dtype", [None, "float32", "bfloat16"])
def test_auto_on_cpu(monkeypatch, native_bf16, expected, config_dtype):
    monkeypatch.setattr(cfg_mod, "_cpu_has_native_bf16", lambda: native_bf16)
    hf = transformers.LlamaConfig()
    hf.dtype = config_dtype
    assert cfg_mod._pick_dtype("auto", hf, CPU) == expected


@pytest.mark.parametrize("name, expected", [("float32", torch.float32), ("float", torch.float32),
                                            ("bfloat16", torch.bfloat16), ("half", torch.bfloat16)])
def test_explicit_on_cpu(monkeypatch, name, expected):
    monkeypatch.setattr(cfg_mod, "_cpu_has_native_bf16", lambda: True)
    assert cfg_mod._pick_dtype(name, transformers.LlamaConfig(), CPU) == expected


def test_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match="Unknown dtype 'fp8'"):
        cfg_mod._pick_dtype("fp8", transformers.LlamaConfig(), CPU)
