"""vLLM's ``logprobs_mode``: what a request's logprobs hold, checked against a tiny random Llama's HF logits.

raw_logprobs (the default) is tested in test_sampling.py; here raw_logits (the model's logits, before any bias),
processed_logprobs / processed_logits (after logit_bias for a greedy row; after temperature and top-k for a random
row, the dropped tokens -inf), prompt logprobs (raw logprobs in every mode, as vLLM's) and the settings' errors.
"""
from __future__ import annotations

import math

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.config import EngineArgs
from pagedllm.sampling_params import BeamSearchParams
from tiny_models import save_tiny_llama

VOCAB = 300
PROMPT = [11, 12, 13, 14, 15, 16]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama_logprobs_mode")
    return str(path), save_tiny_llama(path, VOCAB)


def _llm(path: str, mode: str) -> LLM:
    llm = LLM(model=path, skip_tokenizer_init=True, dtype="float32", logprobs_mode=mode, max_model_len=64,
              kv_cache_memory_gb=0.01)
    assert llm.llm_engine.config.args.logprobs_mode == mode
    return llm


@torch.no_grad()
def _hf_rows(hf, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """[len(tokens), V] logits: row j is what token j was drawn from."""
    ids = prompt + tokens
    return hf(torch.tensor([ids])).logits[0, len(prompt) - 1:len(ids) - 1].float()


def _check(entries, tokens, expected_rows, k):
    """Each step's entries (top-k and the sampled token) against the expected values of the whole row."""
    assert len(entries) == len(tokens)
    for tok, entry, row in zip(tokens, entries, expected_rows):
        assert tok in entry
        finite = row[torch.isfinite(row)]
        assert set(row.topk(min(k, len(finite))).indices.tolist()) <= set(entry)
        for tid, lp in entry.items():
            if math.isinf(float(row[tid])):     # a dropped token: after every kept one
                assert lp.logprob == float("-inf") and lp.rank > len(finite)
            else:
                assert lp.logprob == pytest.approx(float(row[tid]), abs=1e-4)
                assert lp.rank == int((row > row[tid]).sum()) + 1


def test_raw_logits_are_the_models_logits_before_the_bias(model):
    path, hf = model
    llm = _llm(path, "raw_logits")
    bias = {7: 4.0, 8: -3.0}
    params = SamplingParams(temperature=0.0, max_tokens=4, logprobs=5, logit_bias=bias, prompt_logprobs=3)
    (out,) = llm.generate([{"prompt_token_ids": PROMPT}], params, use_tqdm=False)
    comp = out.outputs[0]
    rows = _hf_rows(hf, PROMPT, list(comp.token_ids))
    _check(comp.logprobs, comp.token_ids, rows, 5)
    biased = rows.clone()
    for t, b in bias.items():
        biased[:, t] += b
    assert list(comp.token_ids) == biased.argmax(-1).tolist()     # the bias steered the tokens, not the values
    assert comp.cumulative_logprob == pytest.approx(sum(float(rows[j, t]) for j, t in enumerate(comp.token_ids)),
                                                    abs=1e-3)
    # Prompt logprobs stay log-probabilities.
    with torch.no_grad():
        prompt_ref = torch.log_softmax(hf(torch.tensor([PROMPT])).logits[0].float(), -1)
    for p in range(1, len(PROMPT)):
        entry = out.prompt_logprobs[p]
        assert entry[PROMPT[p]].logprob == pytest.approx(float(prompt_ref[p - 1, PROMPT[p]]), abs=1e-4)


def test_processed_logprobs_of_a_greedy_row_include_the_bias(model):
    path, hf = model
    llm = _llm(path, "processed_logprobs")
    bias = {7: 4.0, 8: -3.0}
    (out,) = llm.generate([{"prompt_token_ids": PROMPT}],
                          SamplingParams(temperature=0.0, max_tokens=4, logprobs=5, logit_bias=bias), use_tqdm=False)
    comp = out.outputs[0]
    rows = _hf_rows(hf, PROMPT, list(comp.token_ids))
    for t, b in bias.items():
        rows[:, t] += b
    _check(comp.logprobs, comp.token_ids, torch.log_softmax(rows, -1), 5)
    assert all(entry[t].rank == 1 for t, entry in zip(comp.token_ids, comp.logprobs))


@pytest.mark.parametrize("mode", ["processed_logprobs", "processed_logits"])
def test_processed_values_of_a_random_row_follow_temperature_and_top_k(model, mode):
    """Temperature 0.7 and top_k 3: the three kept tokens' values are those of logits / 0.7 (log-softmaxed over the
    three for processed_logprobs), the other tokens asked for are -inf; a greedy request in the same batch keeps its
    untempered values."""
    path, hf = model
    llm = _llm(path, mode)
    params = [SamplingParams(temperature=0.7, top_k=3, seed=5, max_tokens=4, logprobs=5),
              SamplingParams(temperature=0.0, max_tokens=4, logprobs=2)]
    random_out, greedy_out = llm.generate([{"prompt_token_ids": PROMPT}, {"prompt_token_ids": PROMPT[:4]}], params,
                                          use_tqdm=False)
    comp = random_out.outputs[0]
    rows = _hf_rows(hf, PROMPT, list(comp.token_ids)) / 0.7
    kept = torch.full_like(rows, float("-inf"))
    top = rows.topk(3, dim=-1).indices
    kept.scatter_(1, top, rows.gather(1, top))
    expected = torch.log_softmax(kept, -1) if mode == "processed_logprobs" else kept
    _check(comp.logprobs, comp.token_ids, expected, 3)
    assert all(len(entry) == 5 for entry in comp.logprobs)
    assert all(sum(math.isinf(lp.logprob) for lp in entry.values()) == 2 for entry in comp.logprobs)
    assert all(t in top[j].tolist() for j, t in enumerate(comp.token_ids))
    g = greedy_out.outputs[0]
    g_rows = _hf_rows(hf, PROMPT[:4], list(g.token_ids))
    _check(g.logprobs, g.token_ids, torch.log_softmax(g_rows, -1) if mode == "processed_logprobs" else g_rows, 2)


def test_logprobs_mode_settings_and_errors(model):
    path, _ = model
    with pytest.raises(ValueError, match="logprobs_mode must be one of raw_logprobs, raw_logits, processed_logprobs, "
                                         "processed_logits, got 'logits'"):
        LLM(model=path, skip_tokenizer_init=True, logprobs_mode="logits")
    with pytest.raises(ValueError, match="logprobs_mode='processed_logprobs' is not supported with "
                                         "speculative_config"):
        LLM(model=path, skip_tokenizer_init=True, logprobs_mode="processed_logprobs",
            speculative_config={"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2})
    llm = _llm(path, "raw_logits")
    with pytest.raises(ValueError, match="beam search scores beams by their log-probabilities"):
        llm.beam_search([{"prompt_token_ids": PROMPT}], BeamSearchParams(beam_width=2, max_tokens=2))
    parser = EngineArgs.add_cli_args(__import__("argparse").ArgumentParser())
    assert EngineArgs.from_cli_args(parser.parse_args(["--logprobs-mode", "processed_logits"])).logprobs_mode == \
        "processed_logits"
    with pytest.raises(SystemExit):
        parser.parse_args(["--logprobs-mode", "nope"])
