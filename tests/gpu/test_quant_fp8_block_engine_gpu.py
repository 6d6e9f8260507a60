"""A block-quantized FP8 checkpoint (Qwen3-FP8 / DeepSeek form: ``weight_scale_inv`` per 32 x 64 tile here) end to
end on the GPU: the weights stay e4m3 (half the bf16 bytes, on the start-up line) and the block GEMM's output
follows the dequantized checkpoint's (the activations are quantized per token and 64 columns, so log-probabilities
move by a few hundredths, not more; the greedy tokens are the reference's)."""
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
BLOCK = (32, 64)


def _run(path):
    from pagedllm import LLM
    llm = LLM(model=path, skip_tokenizer_init=True, dtype="bfloat16", max_model_len=128, kv_cache_memory_gb=1.0)
    outs = llm.generate([{"prompt_token_ids": p} for p in qf.PROMPTS], qf.GREEDY, use_tqdm=False)
    weights_gib = llm.llm_engine.core.runner.startup_info()["weights_gib"]
    del llm
    torch.cuda.empty_cache()
    return ([list(o.outputs[0].token_ids) for o in outs],
            [[lp[t].logprob for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)] for o in outs],
            weights_gib)


def test_block_fp8_checkpoint_keeps_fp8_weights_and_follows_its_dequantized_reference(tmp_path):
    from test_quant_fp8_block import _block_quantize

    from pagedllm.kernels.quant.fp8 import block_dequantize
    config, state = qf._tiny("qwen2")
    quant, reference = dict(state), dict(state)
    for name, w in state.items():
        if not any(f".{n}." in name for n in qf.LINEARS) or not name.endswith("weight"):
            continue
        quant[name], quant[name.replace(".weight", ".weight_scale_inv")] = _block_quantize(w, BLOCK)
        reference[name] = block_dequantize(quant[name], quant[name.replace(".weight", ".weight_scale_inv")], BLOCK,
                                           torch.float32)
    quant_config = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": list(BLOCK)}
    qpath = qf._save(tmp_path / "fp8", dict(config, quantization_config=quant_config), quant)
    ref_tokens, ref_logprobs, ref_gib = _run(qf._save(tmp_path / "ref", config, reference))
    tokens, logprobs, gib = _run(qpath)
    linear = sum(w.numel() for n, w in state.items() if any(f".{p}." in n for p in qf.LINEARS) and n.endswith("weight"))
    assert (ref_gib - gib) * 2**30 == pytest.approx(linear, rel=0.05)       # 2 -> 1 byte a linear weight
    assert tokens == ref_tokens
    np.testing.assert_allclose(np.array(logprobs), np.array(ref_logprobs), rtol=0, atol=0.08)
