"""Sampling semantics and token-level finish reasons, checked against a direct computation from the logits of the
same tiny random Llama run with HF transformers."""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from pagedllm import LLM, SamplingParams
from tiny_models import save_tiny_llama

VOCAB = 1000
EOS = 2   # LlamaConfig's default eos_token_id

P1 = [11, 12, 13, 14, 15]
P2 = [101, 57, 300, 42, 42, 9, 871, 5, 5, 5, 77, 640, 13, 250, 999, 3, 18, 400, 21, 8, 66, 700, 31]  # 23 tokens
P3 = [(7 * i + 3) % VOCAB for i in range(40)]                                                      # > 2 blocks


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama_sampling")
    hf = save_tiny_llama(path, VOCAB)
    llm = LLM(model=str(path), skip_tokenizer_init=True, dtype="float32")
    assert llm.llm_engine.eos_token_ids == {EOS}
    return hf, llm


@pytest.fixture(scope="module")
def hf(models):
    return models[0]


@pytest.fixture(scope="module")
def llm(models):
    return models[1]


@torch.no_grad()
def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    """[len(ids), V] float32 logits; row i predicts token i + 1."""
    return hf(torch.tensor([ids])).logits[0].float()


def ref_greedy(hf, prompt: list[int], steps: int, process=None) -> list[int]:
    """Greedy decoding with an optional ``process(logits, prompt, output_so_far) -> logits`` step."""
    ids, out = list(prompt), []
    for _ in range(steps):
        logits = hf_logits(hf, ids)[-1].clone()
        if process is not None:
            logits = process(logits, prompt, out)
        tok = int(logits.argmax())
        out.append(tok)
        ids.append(tok)
    return out


def gen(llm, prompts, params):
    if isinstance(prompts[0], int):
        prompts = [prompts]
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)


def toks(out):
    return list(out.outputs[0].token_ids)


@pytest.fixture(scope="module")
def greedy_ref(hf):
    return {tuple(p): ref_greedy(hf, p, 24) for p in (P1, P2, P3)}


# ---- greedy and its equivalents ----------------------------------------------------------------------------------

def test_temperature_zero_equals_hf_greedy_batched(llm, greedy_ref):
    outs = gen(llm, [P1, P2, P3], SamplingParams(temperature=0.0, max_tokens=24))
    for p, out in zip((P1, P2, P3), outs):
        assert out.prompt_token_ids == p
        assert toks(out) == greedy_ref[tuple(p)]
        assert out.outputs[0].finish_reason == "length"


def test_restrictive_sampling_equals_greedy(llm, greedy_ref):
    expected = greedy_ref[tuple(P2)][:10]
    params = [SamplingParams(temperature=1.0, top_k=1, max_tokens=10),
              SamplingParams(temperature=1.0, min_p=1.0, max_tokens=10),
              SamplingParams(temperature=1.0, top_p=1e-6, max_tokens=10),
              SamplingParams(temperature=0.7, top_k=1, seed=5, max_tokens=10)]
    outs = gen(llm, [P2] * len(params), params)
    for sp, out in zip(params, outs):
        assert toks(out) == expected, sp


# ---- seeds ---------------------------------------------------------------------------------------------------------

def test_seeded_sampling_is_reproducible_and_batch_independent(llm, greedy_ref):
    sp = SamplingParams(temperature=1.0, seed=1234, max_tokens=12)
    alone = toks(gen(llm, P1, sp)[0])
    assert len(alone) == 12
    assert alone != greedy_ref[tuple(P1)][:12]          # it really samples
    assert toks(gen(llm, P1, sp)[0]) == alone

    others = [P2, P3, [5, 6], P1, list(range(30, 47))]
    other_params = [SamplingParams(temperature=1.0, max_tokens=7), SamplingParams(temperature=0.0, max_tokens=20),
                    SamplingParams(temperature=0.8, seed=99, max_tokens=3), SamplingParams(temperature=1.0),
                    SamplingParams(temperature=1.2, top_k=50, max_tokens=15)]
    prompts = others[:2] + [P1] + others[2:]
    params = other_params[:2] + [sp] + other_params[2:]
    batched = gen(llm, prompts, params)
    assert toks(batched[2]) == alone

    different = toks(gen(llm, P1, SamplingParams(temperature=1.0, seed=4321, max_tokens=12))[0])
    assert different != alone


def test_n_with_seed(llm):
    sp = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=6)
    out = gen(llm, P1, sp)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 6 and c.finish_reason == "length" for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) == 3
    again = gen(llm, P1, sp)[0]
    assert [list(c.token_ids) for c in again.outputs] == [list(c.token_ids) for c in out.outputs]


def test_sampling_follows_the_tempered_distribution(llm, hf):
    """Empirical frequencies against softmax(logits / T) and the top-k / top-p / min-p supports."""
    logits = hf_logits(hf, P1)[-1]
    params = [SamplingParams(n=200, temperature=0.02, seed=0, max_tokens=1),
              SamplingParams(n=60, temperature=0.02, top_p=0.8, seed=1000, max_tokens=1),
              SamplingParams(n=60, temperature=0.05, top_k=3, seed=2000, max_tokens=1),
              SamplingParams(n=60, temperature=0.05, min_p=0.3, seed=3000, max_tokens=1)]
    outs = gen(llm, [P1] * 4, params)
    firsts = [[c.token_ids[0] for c in o.outputs] for o in outs]

    # Plain sampling at T=0.02: frequencies within 4 sigma of the probabilities.
    probs = torch.softmax(logits / 0.02, dim=-1)
    counts = Counter(firsts[0])
    n = len(firsts[0])
    for tok in probs.topk(3).indices.tolist():
        p = float(probs[tok])
        assert abs(counts[tok] / n - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (tok, counts[tok], p)

    # top_p=0.8: the smallest prefix whose mass reaches 0.8.
    sorted_p, order = probs.sort(descending=True)
    keep = int((sorted_p.cumsum(0) - sorted_p < 0.8).sum())
    nucleus = set(order[:keep].tolist())
    assert 1 < len(nucleus) < 10
    assert set(firsts[1]) <= nucleus and len(set(firsts[1])) > 1

    # top_k=3 at T=0.05.
    top3 = set(logits.topk(3).indices.tolist())
    assert set(firsts[2]) <= top3 and len(set(firsts[2])) == 3

    # min_p=0.3 at T=0.05: tokens with p >= 0.3 * p_max.
    p05 = torch.softmax(logits / 0.05, dim=-1)
    allowed = set(torch.nonzero(p05 >= 0.3 * p05.max()).flatten().tolist())
    assert 1 < len(allowed) < 10
    assert set(firsts[3]) <= allowed and len(set(firsts[3])) > 1


# ---- logprobs --------------------------------------------------------------------------------------------------------

def _check_sample_logprobs(hf, prompt, completion, k):
    ids = list(prompt) + list(completion.token_ids)
    ref = torch.log_softmax(hf_logits(hf, ids), dim=-1)
    assert len(completion.logprobs) == len(completion.token_ids)
    total = 0.0
    for j, (tok, entry) in enumerate(zip(completion.token_ids, completion.logprobs)):
        row = ref[len(prompt) - 1 + j]
        assert tok in entry
        # Top-k plus the sampled token when it is not among them.
        assert len(entry) == (k if entry[tok].rank <= k else k + 1)
        assert set(row.topk(k).indices.tolist()) <= set(entry) if k > 0 else set(entry) == {tok}
        for tid, lp in entry.items():
            assert lp.logprob == pytest.approx(float(row[tid]), abs=1e-4)
            assert lp.rank == int((row > row[tid]).sum()) + 1
        total += float(row[tok])
    assert completion.cumulative_logprob == pytest.approx(total, abs=1e-3)


def test_sample_logprobs_match_hf(llm, hf):
    params = [SamplingParams(temperature=0.0, max_tokens=6, logprobs=5),
              SamplingParams(temperature=1.0, seed=3, max_tokens=6, logprobs=5),
              SamplingParams(temperature=1.0, seed=4, max_tokens=4, logprobs=0)]
    outs = gen(llm, [P1, P2, P3], params)
    _check_sample_logprobs(hf, P1, outs[0].outputs[0], 5)
    _check_sample_logprobs(hf, P2, outs[1].outputs[0], 5)
    _check_sample_logprobs(hf, P3, outs[2].outputs[0], 0)
    # Greedy tokens are rank 1.
    assert all(d[t].rank == 1 for t, d in zip(outs[0].outputs[0].token_ids, outs[0].outputs[0].logprobs))
    # Without logprobs requested, none are returned.
    plain = gen(llm, P1, SamplingParams(max_tokens=2))[0]
    assert plain.outputs[0].logprobs is None and plain.outputs[0].cumulative_logprob is None
    assert plain.prompt_logprobs is None


def test_prompt_logprobs_match_hf(llm, hf):
    # Run P2 once first so its blocks are in the prefix cache: prompt logprobs must still cover every position.
    gen(llm, P2 + [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], SamplingParams(max_tokens=1))
    prompt = P2 + [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    out = gen(llm, prompt, SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=3))[0]
    ref = torch.log_softmax(hf_logits(hf, prompt), dim=-1)
    assert len(out.prompt_logprobs) == len(prompt)
    assert out.prompt_logprobs[0] is None
    for i in range(1, len(prompt)):
        entry, row, tok = out.prompt_logprobs[i], ref[i - 1], prompt[i]
        assert tok in entry and len(entry) <= 4
        assert set(row.topk(3).indices.tolist()) <= set(entry)
        for tid, lp in entry.items():
            assert lp.logprob == pytest.approx(float(row[tid]), abs=1e-4)
            assert lp.rank == int((row > row[tid]).sum()) + 1


# ---- penalties, bias and masks ---------------------------------------------------------------------------------------

def _find_prompt_repeating_its_argmax(hf):
    """A prompt whose greedy next token is one of its own tokens (so a repetition penalty must matter)."""
    for start in range(0, 400, 20):
        prompt = list(range(start, start + 40))
        if int(hf_logits(hf, prompt)[-1].argmax()) in prompt:
            return prompt
    pytest.fail("no prompt found whose argmax is in the prompt")


def test_repetition_penalty_matches_direct_computation(llm, hf):
    prompt = _find_prompt_repeating_its_argmax(hf)
    penalty = 2.0

    def rep(logits, prompt_ids, out):
        seen = torch.tensor(sorted(set(prompt_ids) | set(out)))
        vals = logits[seen]
        logits[seen] = torch.where(vals > 0, vals / penalty, vals * penalty)
        return logits

    expected = ref_greedy(hf, prompt, 4, rep)
    plain = ref_greedy(hf, prompt, 1)
    assert expected[0] != plain[0] and plain[0] in prompt
    out = gen(llm, prompt, SamplingParams(temperature=0.0, repetition_penalty=penalty, max_tokens=4))[0]
    assert toks(out) == expected
    assert not set(toks(out)) & set(prompt)


def test_frequency_and_presence_penalties_match_direct_computation(llm, hf, greedy_ref):
    forced = 777
    bias = {forced: 1.0}            # logits span < 1, so +1 makes 777 win every step without penalties
    n = 8
    biased = toks(gen(llm, P1, SamplingParams(temperature=0.0, logit_bias=bias, max_tokens=n))[0])
    assert biased == [forced] * n

    def penalized(freq, pres):
        def f(logits, _prompt, out):
            logits[forced] += 1.0
            for tok, c in Counter(out).items():
                logits[tok] -= freq * c + pres
            return logits
        return f

    cases = [(2.0, 0.0), (0.0, 2.0), (0.3, 0.2), (-2.0, 0.0)]
    params = [SamplingParams(temperature=0.0, logit_bias=bias, frequency_penalty=f, presence_penalty=p, max_tokens=n)
              for f, p in cases]
    outs = gen(llm, [P1] * len(cases), params)
    for (f, p), out in zip(cases, outs):
        expected = ref_greedy(hf, P1, n, penalized(f, p))
        assert toks(out) == expected, (f, p)
    assert toks(outs[0]).count(forced) < n and toks(outs[1]).count(forced) < n
    # A negative frequency penalty makes greedy decoding repeat its first token.
    no_bias = toks(gen(llm, P1, SamplingParams(temperature=0.0, frequency_penalty=-2.0, max_tokens=n))[0])
    assert len(set(greedy_ref[tuple(P1)][:n])) > 1
    assert no_bias == [greedy_ref[tuple(P1)][0]] * n


def test_logit_bias_and_allowed_token_ids(llm, hf, greedy_ref):
    g = greedy_ref[tuple(P1)]
    first_logits = hf_logits(hf, P1)[-1]
    second_best = int(first_logits.topk(2).indices[1])
    a, b = 123, 456

    def only_ab(logits, _p, _o):
        mask = torch.full_like(logits, float("-inf"))
        mask[[a, b]] = 0
        return logits + mask

    params = [SamplingParams(temperature=0.0, logit_bias={"321": 100}, max_tokens=5),
              SamplingParams(temperature=0.0, logit_bias={g[0]: -100}, max_tokens=1),
              SamplingParams(temperature=0.0, allowed_token_ids=[a, b], max_tokens=6),
              SamplingParams(temperature=1.0, seed=11, allowed_token_ids=[a, b], max_tokens=16)]
    outs = gen(llm, [P1] * 4, params)
    assert toks(outs[0]) == [321] * 5
    assert toks(outs[1]) == [second_best]
    assert toks(outs[2]) == ref_greedy(hf, P1, 6, only_ab)
    sampled = toks(outs[3])
    assert set(sampled) == {a, b}


# ---- finish reasons (token level) ----------------------------------------------------------------------------------

def test_max_tokens_gives_length(llm):
    out = gen(llm, P1, SamplingParams(max_tokens=7, seed=0))[0]
    c = out.outputs[0]
    assert len(c.token_ids) == 7
    assert c.finish_reason == "length" and c.stop_reason is None
    assert out.finished and c.finished()


def test_stop_token_ids(llm, greedy_ref):
    g = greedy_ref[tuple(P2)]
    k = next(i for i in range(2, len(g)) if g[i] not in g[:i])
    later = next(t for t in g[k + 1:] if t not in g[:k + 1])
    out = gen(llm, P2, SamplingParams(temperature=0.0, max_tokens=24, stop_token_ids=[later, g[k]]))[0]
    c = out.outputs[0]
    assert list(c.token_ids) == g[:k + 1]       # the stop token is kept in token_ids
    assert c.finish_reason == "stop"
    assert c.stop_reason == g[k]


def test_eos_ignore_eos_and_min_tokens(llm, greedy_ref):
    g = greedy_ref[tuple(P1)]
    assert EOS not in g
    force_eos = {EOS: 100.0}
    x = 555
    assert x not in g[:3]
    params = [SamplingParams(temperature=0.0, logit_bias=force_eos, max_tokens=10),
              SamplingParams(temperature=0.0, logit_bias=force_eos, ignore_eos=True, max_tokens=4),
              SamplingParams(temperature=0.0, logit_bias=force_eos, min_tokens=3, max_tokens=10),
              SamplingParams(temperature=0.0, logit_bias={x: 100.0}, stop_token_ids=[x], min_tokens=3, max_tokens=10),
              SamplingParams(temperature=0.0, logit_bias={x: 100.0}, stop_token_ids=[x], max_tokens=10)]
    outs = [o.outputs[0] for o in gen(llm, [P1] * len(params), params)]

    assert list(outs[0].token_ids) == [EOS]                       # EOS: "stop", no stop_reason
    assert (outs[0].finish_reason, outs[0].stop_reason) == ("stop", None)

    assert list(outs[1].token_ids) == [EOS] * 4                   # ignore_eos runs past EOS
    assert (outs[1].finish_reason, outs[1].stop_reason) == ("length", None)

    assert list(outs[2].token_ids) == g[:3] + [EOS]               # EOS masked for the first 3 tokens
    assert (outs[2].finish_reason, outs[2].stop_reason) == ("stop", None)

    assert list(outs[3].token_ids) == g[:3] + [x]                 # stop ids masked too
    assert (outs[3].finish_reason, outs[3].stop_reason) == ("stop", x)

    assert list(outs[4].token_ids) == [x]
    assert (outs[4].finish_reason, outs[4].stop_reason) == ("stop", x)


# ---- batch composition: chunked prefill and preemption -------------------------------------------------------------

def test_chunked_prefill_and_preemption_do_not_change_results(models, llm, greedy_ref, tmp_path_factory):
    hf, _ = models
    path = llm.engine_args.model
    seeded = [SamplingParams(temperature=1.0, seed=100 + i, max_tokens=30, ignore_eos=True) for i in range(4)]
    prompts = [P3[:20], P2[:20], P3[5:25], P2[3:23]]
    reference = [toks(o) for o in gen(llm, prompts, seeded)]

    # 16-token budget: a 40-token prompt is prefilled in 3 chunks, mixed with decodes of the other requests.
    chunked = LLM(model=path, skip_tokenizer_init=True, dtype="float32", max_num_batched_tokens=16)
    outs = gen(chunked, [P3, P1] + prompts,
               [SamplingParams(temperature=0.0, max_tokens=24, logprobs=3, prompt_logprobs=2),
                SamplingParams(temperature=0.0, max_tokens=24)] + seeded)
    assert toks(outs[0]) == greedy_ref[tuple(P3)] and toks(outs[1]) == greedy_ref[tuple(P1)]
    _check_sample_logprobs(hf, P3, outs[0].outputs[0], 3)
    ref = torch.log_softmax(hf_logits(hf, P3), dim=-1)
    assert outs[0].prompt_logprobs[0] is None and len(outs[0].prompt_logprobs) == len(P3)
    for i in range(1, len(P3)):
        assert outs[0].prompt_logprobs[i][P3[i]].logprob == pytest.approx(float(ref[i - 1, P3[i]]), abs=1e-4)
    assert [toks(o) for o in outs[2:]] == reference

    # 8 KV blocks of 16 tokens for 4 requests that need 4 blocks each: some are preempted and recomputed.
    small = LLM(model=path, skip_tokenizer_init=True, dtype="float32", max_model_len=64, num_gpu_blocks_override=8)
    outs = gen(small, prompts, seeded)
    assert small.llm_engine.scheduler.num_preemptions > 0
    assert [toks(o) for o in outs] == reference


def test_prompt_logprobs_of_a_chunked_prompt_beside_decodes(models):
    """A long prompt with prompt_logprobs, prefilled in chunks while a short request decodes, and scheduled before
    it (higher priority): the model runner puts the decode first in each mixed batch, yet the chunks' rows must
    still map to the prompt's positions and the decode's token to the decode."""
    hf, base = models
    llm = LLM(model=base.llm_engine.config.args.model, skip_tokenizer_init=True, dtype="float32",
              max_num_batched_tokens=16, enable_prefix_caching=False, scheduling_policy="priority")
    engine = llm.llm_engine
    engine.add_request("short", {"prompt_token_ids": P1},
                       SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    engine.step()                                # the short prompt: now decoding
    long_prompt = (P3 + P2)[:60]                 # chunks of 15, 16, 16 and 13 tokens beside the decode
    engine.add_request("long", {"prompt_token_ids": long_prompt},
                       SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=2), priority=-1)
    chunk_first = 0                              # steps scheduling a chunk of the long prompt before a decode
    launch = engine.runner.launch

    def record(sched, *args):
        nonlocal chunk_first
        q = list(sched.num_scheduled_tokens.items())     # scheduling order
        chunk_first += len(q) == 2 and q[0][0] == "long" and q[0][1] > 1 and q[1] == ("short", 1)
        return launch(sched, *args)
    engine.runner.launch = record
    outs = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            outs[o.request_id] = o
    assert chunk_first >= 1
    ref = torch.log_softmax(hf_logits(hf, long_prompt), dim=-1)
    got = outs["long"].prompt_logprobs
    assert len(got) == len(long_prompt) and got[0] is None
    for i in range(1, len(long_prompt)):
        tok = long_prompt[i]
        assert got[i][tok].logprob == pytest.approx(float(ref[i - 1][tok]), abs=1e-4)
    assert list(outs["short"].outputs[0].token_ids) == ref_greedy(hf, P1, 8)
    assert list(outs["long"].outputs[0].token_ids) == ref_greedy(hf, long_prompt, 2)
