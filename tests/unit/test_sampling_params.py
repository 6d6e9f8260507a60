"""SamplingParams: vLLM's defaults and ValueErrors, and the checks ``LLM.generate`` makes against the model
(vocabulary, max_logprobs, max_model_len, empty prompts), each followed by a generate that must still work."""
from __future__ import annotations

import pytest

from pagedllm import LLM, SamplingParams
from tiny_models import save_tiny_llama

VOCAB = 1000
MAX_MODEL_LEN = 64


# ---- construction: defaults and normalisation ------------------------------------------------------------------

def test_defaults_match_vllm():
    sp = SamplingParams()
    assert sp.n == 1 and sp.best_of == 1
    assert sp.max_tokens == 16
    assert sp.temperature == 1.0 and sp.top_p == 1.0 and sp.top_k == 0 and sp.min_p == 0.0
    assert sp.presence_penalty == 0.0 and sp.frequency_penalty == 0.0 and sp.repetition_penalty == 1.0
    assert sp.seed is None
    assert sp.stop == [] and sp.stop_token_ids == []
    assert sp.ignore_eos is False and sp.min_tokens == 0
    assert sp.logprobs is None and sp.prompt_logprobs is None
    assert sp.detokenize is True and sp.skip_special_tokens is True and sp.spaces_between_special_tokens is True
    assert sp.include_stop_str_in_output is False
    assert sp.logit_bias is None and sp.allowed_token_ids is None


def test_normalisation():
    assert SamplingParams(top_k=-1).top_k == 0            # old "disabled" spelling
    assert SamplingParams(seed=-1).seed is None
    assert SamplingParams(seed=7).seed == 7
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(n=3, best_of=None).best_of == 3
    # Tiny temperatures are raised to 0.01 (not treated as greedy), like vLLM.
    sp = SamplingParams(temperature=0.001)
    assert sp.temperature == pytest.approx(0.01)
    assert SamplingParams(temperature=0.5).temperature == 0.5
    # Greedy disables the other sampling knobs.
    g = SamplingParams(temperature=0.0, top_k=5, top_p=0.5, min_p=0.3)
    assert (g.top_k, g.top_p, g.min_p) == (0, 1.0, 0.0)
    # logit_bias: string keys cast to int, values clamped to [-100, 100].
    assert SamplingParams(logit_bias={"5": 200, 7: -300.0, 9: 1.5}).logit_bias == {5: 100.0, 7: -100.0, 9: 1.5}
    # max_tokens=None means "until the context limit".
    assert SamplingParams(max_tokens=None).max_tokens is None


def test_boundary_values_accepted():
    SamplingParams(top_p=1.0)
    SamplingParams(top_p=1e-6)
    SamplingParams(min_p=0.0)
    SamplingParams(min_p=1.0)
    SamplingParams(presence_penalty=2.0, frequency_penalty=-2.0)
    SamplingParams(repetition_penalty=1e-3)
    SamplingParams(temperature=0.0)
    SamplingParams(min_tokens=16, max_tokens=16)
    SamplingParams(logprobs=-1, prompt_logprobs=0)
    SamplingParams(n=4, best_of=4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=0), "n must be at least 1, got 0"),
    (dict(n=-3), "n must be at least 1"),
    (dict(n=3, best_of=2), "best_of must be greater than or equal to n, got n=3 and best_of=2"),
    (dict(temperature=-0.5), "temperature must be non-negative, got -0.5"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
    (dict(top_p=1.01), r"top_p must be in \(0, 1\]"),
    (dict(top_k=-2), r"top_k must be 0 \(disable\), or at least 1, got -2"),
    (dict(top_k=2.5), "top_k must be an integer, got float"),
    (dict(min_p=-0.1), r"min_p must be in \[0, 1\], got -0.1"),
    (dict(min_p=1.5), r"min_p must be in \[0, 1\]"),
    (dict(presence_penalty=2.1), r"presence_penalty must be in \[-2, 2\], got 2.1"),
    (dict(presence_penalty=-2.5), r"presence_penalty must be in \[-2, 2\]"),
    (dict(frequency_penalty=3.0), r"frequency_penalty must be in \[-2, 2\], got 3.0"),
    (dict(frequency_penalty=-2.01), r"frequency_penalty must be in \[-2, 2\]"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be greater than zero, got 0.0"),
    (dict(repetition_penalty=-1.0), "repetition_penalty must be greater than zero"),
    (dict(max_tokens=0), "max_tokens must be at least 1, got 0"),
    (dict(max_tokens=-5), "max_tokens must be at least 1"),
    (dict(min_tokens=-1), "min_tokens must be greater than or equal to 0, got -1"),
    (dict(min_tokens=5, max_tokens=4), "min_tokens must be less than or equal to max_tokens=4, got 5"),
    (dict(logprobs=-2), "logprobs must be non-negative or -1, got -2"),
    (dict(prompt_logprobs=-2), "prompt_logprobs must be non-negative or -1, got -2"),
    (dict(stop=""), "stop cannot contain an empty string"),
    (dict(stop=["ok", ""]), "stop cannot contain an empty string"),
    (dict(temperature=0.0, n=2), "n must be 1 when using greedy sampling, got 2"),
    (dict(stop=["x"], detokenize=False), "stop strings are only supported when detokenize is True"),
    (dict(allowed_token_ids=[]), "allowed_token_ids is not None and empty"),
    (dict(logit_bias={"abc": 1.0}), "logit_bias"),
    # NaN / inf / wrong types / 64-bit overflow: a ValueError naming the field, never a TypeError or a silent NaN.
    (dict(temperature=float("nan")), "temperature must be a finite number, got nan"),
    (dict(temperature=float("inf")), "temperature must be a finite number, got inf"),
    (dict(top_p=float("nan")), "top_p must be a finite number"),
    (dict(min_p=float("nan")), "min_p must be a finite number"),
    (dict(presence_penalty=float("-inf")), "presence_penalty must be a finite number"),
    (dict(frequency_penalty=float("nan")), "frequency_penalty must be a finite number"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty must be a finite number"),
    (dict(temperature="hot"), "temperature must be a number, got str"),
    (dict(top_p=None), "top_p must be a number, got NoneType"),
    (dict(logit_bias={5: float("nan")}), "logit_bias values must be finite numbers, got nan for token 5"),
    (dict(logit_bias={5: float("inf")}), "logit_bias values must be finite numbers"),
    (dict(logit_bias=[1, 2]), "logit_bias must map token ids to numbers"),
    (dict(max_tokens=1.5), "max_tokens must be an integer, got float"),
    (dict(max_tokens=2 ** 63), "max_tokens must fit in a 64-bit integer"),
    (dict(top_k=10 ** 30), "top_k must fit in a 64-bit integer"),
    (dict(n=True), "n must be an integer, got bool"),
    (dict(logprobs="5"), "logprobs must be an integer, got str"),
    (dict(stop_token_ids=["a"]), "stop_token_ids must be a list of token ids"),
    (dict(allowed_token_ids="12"), "allowed_token_ids must be a list of token ids"),
    # One id or word where a list is expected: a ValueError naming the field, not "'int' object is not iterable".
    (dict(stop_token_ids=5), "stop_token_ids must be a list of token ids"),
    (dict(allowed_token_ids=5), "allowed_token_ids must be a list of token ids"),
    (dict(bad_words=5), "bad_words must be a list of non-empty strings"),
    (dict(seed=2 ** 64), r"seed must be in \[-9223372036854775808, 18446744073709551615\]"),
    (dict(seed=-(2 ** 63) - 1), "seed must be in"),
    (dict(seed=2 ** 64 - 1, n=2), r"seed must be in \[-9223372036854775808, 18446744073709551614\] .*with n=2"),
    (dict(seed=1.5), "seed must be an integer"),
])
def test_invalid_values_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_structured_outputs_choice_of_one_value_is_a_value_error():
    from pagedllm.sampling_params import StructuredOutputsParams
    for choice in (5, {"yes": 1}):
        with pytest.raises(ValueError, match="choice must be a non-empty list of strings"):
            StructuredOutputsParams(choice=choice)
    assert StructuredOutputsParams(choice=("yes", "no")).choice == ["yes", "no"]


# ---- checks at generate time, against a tiny model ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama_params")
    save_tiny_llama(path, VOCAB)
    llm = LLM(model=str(path), skip_tokenizer_init=True, dtype="float32", max_model_len=MAX_MODEL_LEN)
    return llm


PROMPT = {"prompt_token_ids": [11, 12, 13, 14, 15]}
GREEDY = SamplingParams(temperature=0.0, max_tokens=8)


@pytest.fixture(scope="module")
def baseline(tiny_llm):
    return tiny_llm.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids


def _assert_still_works(llm, baseline):
    assert not llm.llm_engine.has_unfinished_requests()
    out = llm.generate([PROMPT, PROMPT], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in out] == [baseline, baseline]
    assert all(o.outputs[0].finish_reason == "length" for o in out)


@pytest.mark.parametrize("prompt, params, message", [
    (PROMPT, SamplingParams(logprobs=21), "Requested sample logprobs of 21, which is greater than max allowed: 20"),
    (PROMPT, SamplingParams(logprobs=-1), f"Requested sample logprobs of {VOCAB}, which is greater than max allowed: 20"),
    (PROMPT, SamplingParams(prompt_logprobs=21), "Requested prompt logprobs of 21, which is greater than max allowed: 20"),
    (PROMPT, SamplingParams(stop_token_ids=[VOCAB]), "out-of-vocab"),
    (PROMPT, SamplingParams(stop_token_ids=[-1]), "out-of-vocab"),
    (PROMPT, SamplingParams(logit_bias={VOCAB + 5: 3.0}), "out-of-vocab"),
    (PROMPT, SamplingParams(allowed_token_ids=[1, VOCAB]), "out-of-vocab"),
    (PROMPT, SamplingParams(stop=["x"]), "tokenizer"),      # stop strings need a tokenizer
    ({"prompt_token_ids": [1, 2, VOCAB]}, GREEDY, f"Token id {VOCAB} is out of vocabulary"),
    ({"prompt_token_ids": [1, -1, 2]}, GREEDY, "Token id -1 is out of vocabulary"),
    ({"prompt_token_ids": []}, GREEDY, "The decoder prompt cannot be empty"),
    ({"prompt_token_ids": list(range(1, MAX_MODEL_LEN + 6))}, GREEDY,
     rf"^This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested 0 output tokens and "
     rf"your prompt contains {MAX_MODEL_LEN + 5} input tokens, for a total of {MAX_MODEL_LEN + 5} tokens. Please "
     rf"reduce the length of the input prompt or the number of requested output tokens. \(parameter=input_tokens, "
     rf"value={MAX_MODEL_LEN + 5}\)$"),
    ("a text prompt", GREEDY, "skip_tokenizer_init"),
    ({"neither": 1}, GREEDY, "'prompt', 'prompt_token_ids' or 'prompt_embeds'"),
])
def test_generate_rejects_and_engine_survives(tiny_llm, baseline, prompt, params, message):
    with pytest.raises(ValueError, match=message):
        tiny_llm.generate(prompt, params, use_tqdm=False)
    _assert_still_works(tiny_llm, baseline)


def test_bad_prompt_in_a_batch_rejects_the_whole_call(tiny_llm, baseline):
    # The first prompt is valid and was already queued when the second one fails: nothing may leak.
    with pytest.raises(ValueError, match="out of vocabulary"):
        tiny_llm.generate([PROMPT, {"prompt_token_ids": [VOCAB + 1]}], GREEDY, use_tqdm=False)
    _assert_still_works(tiny_llm, baseline)
    with pytest.raises(ValueError, match="greater than max allowed"):
        tiny_llm.generate([PROMPT, PROMPT], [GREEDY, SamplingParams(logprobs=50)], use_tqdm=False)
    _assert_still_works(tiny_llm, baseline)


def test_logprobs_at_limits_accepted(tiny_llm):
    out = tiny_llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=2, logprobs=20, prompt_logprobs=20),
                            use_tqdm=False)[0]
    assert all(len(d) in (20, 21) for d in out.outputs[0].logprobs)
    assert out.prompt_logprobs[0] is None and all(len(d) in (20, 21) for d in out.prompt_logprobs[1:])


def test_prompt_at_context_limit_is_cut_at_max_model_len(tiny_llm):
    # vLLM's offline engine stops at the context limit ("length") instead of failing.
    prompt = {"prompt_token_ids": [7] * (MAX_MODEL_LEN - 3)}
    out = tiny_llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True),
                            use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 3
    assert out.outputs[0].finish_reason == "length"

    # max_tokens=None: until the context is full.
    out = tiny_llm.generate({"prompt_token_ids": [9] * (MAX_MODEL_LEN - 5)},
                            SamplingParams(temperature=0.0, max_tokens=None, ignore_eos=True), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 5 and out.outputs[0].finish_reason == "length"


def test_truncate_prompt_tokens_keeps_the_last_tokens(tiny_llm):
    long_prompt = {"prompt_token_ids": [30, 31, 32, 33, 34, 35, 36]}
    out = tiny_llm.generate(long_prompt, SamplingParams(temperature=0.0, max_tokens=6, truncate_prompt_tokens=3),
                            use_tqdm=False)[0]
    short = tiny_llm.generate({"prompt_token_ids": [34, 35, 36]}, SamplingParams(temperature=0.0, max_tokens=6),
                              use_tqdm=False)[0]
    assert out.prompt_token_ids == [34, 35, 36]
    assert out.outputs[0].token_ids == short.outputs[0].token_ids


def test_truncate_prompt_tokens_minus_one_keeps_max_model_len(tiny_llm):
    # vLLM: -1 truncates to max_model_len (the last tokens); 0 and < -1 are errors.
    ids = list(range(20, 20 + MAX_MODEL_LEN + 10))
    out = tiny_llm.generate({"prompt_token_ids": ids}, SamplingParams(temperature=0.0, max_tokens=1,
                                                                     truncate_prompt_tokens=-1), use_tqdm=False)[0]
    assert out.prompt_token_ids == ids[-MAX_MODEL_LEN:]
    short = {"prompt_token_ids": [34, 35, 36]}
    out = tiny_llm.generate(short, SamplingParams(temperature=0.0, max_tokens=4, truncate_prompt_tokens=-1),
                            use_tqdm=False)[0]
    assert out.prompt_token_ids == [34, 35, 36] and len(out.outputs[0].token_ids) == 4
    for bad in (0, -2):
        with pytest.raises(ValueError, match="truncate_prompt_tokens must be -1 or >= 1"):
            SamplingParams(truncate_prompt_tokens=bad)


def test_64_bit_seed_edges_and_logit_bias_clamp():
    """The largest seed works with n=1, and with n=2 the largest that leaves room for seed + 1."""
    assert SamplingParams(seed=2 ** 64 - 1).seed == 2 ** 64 - 1
    assert SamplingParams(seed=2 ** 64 - 2, n=2).seed == 2 ** 64 - 2
    assert SamplingParams(seed=-(2 ** 63)).seed == -(2 ** 63)
    assert SamplingParams(seed=-1).seed is None
    assert SamplingParams(logit_bias={"5": 250, 6: -1e9}).logit_bias == {5: 100.0, 6: -100.0}
