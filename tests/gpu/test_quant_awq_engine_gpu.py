"""AWQ end to end on the GPU: a tiny model quantized by tests/unit/test_quant_int_formats.py's AutoAWQ packer runs
through ``LLM`` one request at a time, so every decode step is a batch-1 int4 GEMV (triton_packed_gemv; for shapes
outside M1_TABLE the f16x2 path, session 19), and must give the dequantized fp32 checkpoint's greedy tokens and
log-probabilities (the kernel's fp16 products are ~6e-4 of a matmul's norm: a looser bound than the CPU test's 1e-3
relative, which compares two fp32 paths)."""
from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

_spec = importlib.util.spec_from_file_location(
    "quant_int_formats", pathlib.Path(__file__).parent.parent / "unit" / "test_quant_int_formats.py")
qf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qf)


def _run(path, enforce_eager):
    from pagedllm import LLM
    llm = LLM(model=path, skip_tokenizer_init=True, dtype="float32", max_model_len=128, kv_cache_memory_gb=1.0,
              enforce_eager=enforce_eager)
    tokens, logprobs = [], []
    for p in qf.PROMPTS:           # one request at a time: M = 1 decode steps
        out = llm.generate([{"prompt_token_ids": p}], qf.GREEDY, use_tqdm=False)[0].outputs[0]
        tokens.append(list(out.token_ids))
        logprobs.append([lp[t].logprob for t, lp in zip(out.token_ids, out.logprobs)])
    del llm
    torch.cuda.empty_cache()
    return tokens, logprobs


@pytest.mark.parametrize("enforce_eager", [True, False])
def test_awq_batch1_gemv_matches_dequantized_reference(tmp_path, enforce_eager):
    from pagedllm.kernels.quant import triton_packed
    config, state = qf._tiny("qwen2")
    quant_config, quant, dense = qf._awq_checkpoint(state, 128)
    qpath = qf._save(tmp_path / "quant", dict(config, quantization_config=quant_config), quant)
    rpath = qf._save(tmp_path / "ref", config, dense)
    ref_tokens, ref_logprobs = _run(rpath, enforce_eager)
    triton_packed._PLANS.clear()
    tokens, logprobs = _run(qpath, enforce_eager)
    gemv = [p for p in triton_packed._PLANS.values() if p.kind == "gemv"]
    assert gemv and all(p.constexprs["HALF"] == triton_packed._M1_DEFAULT.half for p in gemv)
    assert tokens == ref_tokens
    np.testing.assert_allclose(np.array(logprobs), np.array(ref_logprobs), rtol=0, atol=5e-3)
