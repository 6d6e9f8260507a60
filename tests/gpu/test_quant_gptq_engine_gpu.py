"""GPTQ end to end through the Triton packed kernels (the GPU path; on the CPU under TRITON_INTERPRET=1 with the
layers kept in the canonical form the GPU uses): the tokens and log-probabilities of the dequantized checkpoint, for
symmetric and asymmetric checkpoints. Until session 22 the GPU read GPTQ's zero-point offsets, which its unpacking
left transposed, with the wrong row stride: every GPTQ model gave garbage on the GPU while the CPU was right."""
from __future__ import annotations

import importlib.util
import os
import pathlib

import numpy as np
import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and not INTERPRET, reason="needs a CUDA GPU")

_spec = importlib.util.spec_from_file_location(
    "quant_int_formats", pathlib.Path(__file__).parent.parent / "unit" / "test_quant_int_formats.py")
qf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qf)


def _run(path):
    from pagedllm import LLM
    kw = {"kv_cache_memory_gb": 1.0 if torch.cuda.is_available() else 0.01}
    llm = LLM(model=path, skip_tokenizer_init=True, dtype="float32", max_model_len=128, **kw)
    outs = llm.generate([{"prompt_token_ids": p} for p in qf.PROMPTS], qf.GREEDY, use_tqdm=False)
    del llm
    return ([list(o.outputs[0].token_ids) for o in outs],
            [[lp[t].logprob for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)] for o in outs])


@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
def test_gptq_through_the_packed_kernels_matches_dequantized_reference(tmp_path, monkeypatch, sym):
    from pagedllm.model.quantization.int_weight import PackedIntLinearMethod
    config, state = qf._tiny("qwen2")
    quant_config, quant, dense = qf._gptq_checkpoint(state, 4, 32, sym=sym, desc_act=False)
    ref_tokens, ref_logprobs = _run(qf._save(tmp_path / "ref", config, dense))
    if not torch.cuda.is_available():      # the interpreter: the GPU's canonical form and kernels on the CPU
        monkeypatch.setattr(PackedIntLinearMethod, "cpu_form", staticmethod(lambda w: False))
    tokens, logprobs = _run(qf._save(tmp_path / "quant", dict(config, quantization_config=quant_config), quant))
    assert tokens == ref_tokens
    np.testing.assert_allclose(np.array(logprobs), np.array(ref_logprobs), rtol=0, atol=5e-3)
