"""Speculative decoding on a CUDA GPU (skipped without CUDA); written and tested on the CPU in
tests/unit/test_spec_decode.py. Steps with drafts run through the piecewise CUDA graphs or eagerly (the full decode
graphs replay only steps without drafts), so these cover that hand-off too.

* fp32, torch attention backend: greedy tokens with n-gram drafts and with a draft model equal those without drafts,
  while drafts are accepted.
* bf16, the default (Triton) backend: the same up to the first near-tie (a verification step computes several
  positions in one forward, whose bf16 rounding may flip a near-tie), with CUDA graphs on.
"""
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from pagedllm import LLM, SamplingParams  # noqa: E402
from tiny_models import save_tiny_llama  # noqa: E402

NEAR_TIE = 0.05
PROMPTS = [[5, 17, 42, 9, 33, 71, 2, 88, 14, 60, 23, 99, 4, 51, 77, 30, 12, 8, 65, 41, 19], [7, 3, 90],
           [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3]]


@pytest.fixture(scope="module")
def tiny128(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny128_gpu")
    save_tiny_llama(path, 128)     # greedy outputs of a tiny random model fall into loops: drafts get accepted
    return str(path)


def _run(model, spec, params, **kwargs):
    llm = LLM(model, skip_tokenizer_init=True, kv_cache_memory_gb=1.0, max_model_len=256, seed=0,
              speculative_config=spec, disable_log_stats=spec is None, **kwargs)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    accepted = None
    if spec is not None:
        accepted = {m.name: m for m in llm.get_metrics()}["pagedllm:spec_decode_num_accepted_tokens"].value
    del llm
    torch.cuda.empty_cache()
    return outs, accepted


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_fp32_greedy_equals_decoding_without_drafts(tiny128, method):
    spec = ({"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
            if method == "ngram" else {"model": tiny128, "num_speculative_tokens": 3})
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    kwargs = dict(dtype="float32", attention_backend="torch")
    want, _ = _run(tiny128, None, params, **kwargs)
    got, accepted = _run(tiny128, spec, params, **kwargs)
    assert [list(o.outputs[0].token_ids) for o in got] == [list(o.outputs[0].token_ids) for o in want]
    assert accepted > 0


def test_bf16_triton_greedy_equals_decoding_without_drafts_up_to_a_near_tie(tiny128):
    spec = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=2)
    want, _ = _run(tiny128, None, params, dtype="bfloat16")
    got, accepted = _run(tiny128, spec, params, dtype="bfloat16")
    assert accepted > 0
    for g, w in zip(got, want):
        for token, ref, top in zip(g.outputs[0].token_ids, w.outputs[0].token_ids, w.outputs[0].logprobs):
            assert token == ref, (list(g.outputs[0].token_ids), list(w.outputs[0].token_ids))
            best = sorted((lp.logprob for lp in top.values()), reverse=True)
            if len(best) > 1 and best[0] - best[1] < NEAR_TIE:
                break
