"""Prompts given as input embeddings (``enable_prompt_embeds=True``, ``{"prompt_embeds": tensor}``), against HF
transformers' ``generate(inputs_embeds=...)`` on tiny random models (CPU, fp32).

The embeddings are the model's own embeddings of random ids plus noise, so that no token id reproduces them: an
engine that looked up the placeholder ids, or scaled the given rows where HF does not (Gemma's embedding layer
scales; Granite multiplies HF's inputs_embeds), gives other tokens.
"""
from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.sampling_params import BeamSearchParams
from test_models_vs_hf import TinyModel

NEW_TOKENS = 12


def _embeds(tiny: TinyModel, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 1000, (1, length), generator=gen)
    with torch.no_grad():
        emb = tiny.hf.get_input_embeddings()(ids)[0]
    return emb + 0.3 * emb.std() * torch.randn(emb.shape, generator=gen)


@torch.no_grad()
def _hf_greedy(tiny: TinyModel, embeds: torch.Tensor) -> list[int]:
    out = tiny.hf.generate(inputs_embeds=embeds[None], attention_mask=torch.ones(1, len(embeds), dtype=torch.long),
                           do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0, output_logits=True,
                           return_dict_in_generate=True)
    top2 = torch.cat(out.logits).topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-4, "near-tie in HF's greedy choice; pick another seed"
    return out.sequences[0].tolist()


def _greedy(**kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, **kwargs)


# Llama (plain), Gemma (its embedding layer scales by sqrt(hidden)), Granite (HF multiplies inputs_embeds),
# OPT-350m's layout (embeddings of word_embed_proj_dim, projected in; learned positions added).
@pytest.fixture(scope="module", params=["llama", "gemma", "granite", "opt-350m-style"])
def tiny(request, tmp_path_factory) -> TinyModel:
    model = TinyModel(request.param, str(tmp_path_factory.mktemp(request.param)))
    model.name = request.param
    return model


def test_prompt_embeds_match_hf(tiny):
    """A batch of embeds prompts and a token prompt, whole and in 16-token chunks (chunks of an embeds prompt
    mixed with other requests' decodes)."""
    embeds = [_embeds(tiny, n, seed) for n, seed in ((5, 1), (37, 2))]
    token_prompt = [5, 6, 7, 8, 9, 10, 11]
    for budget in (2048, 16):
        llm = tiny.llm(enable_prompt_embeds=True, max_num_batched_tokens=budget)
        outs = llm.generate([{"prompt_embeds": e} for e in embeds] + [{"prompt_token_ids": token_prompt}],
                            _greedy(), use_tqdm=False)
        for e, out in zip(embeds, outs):
            assert out.prompt_token_ids is None and out.prompt is None
            assert list(out.outputs[0].token_ids) == _hf_greedy(tiny, e), f"{len(e)} embeddings, budget {budget}"
        assert list(outs[2].outputs[0].token_ids) == tiny.greedy(token_prompt)[:NEW_TOKENS]
        assert outs[2].prompt_token_ids == token_prompt


def test_prompt_embeds_prefix_cache_and_preemption(tiny):
    if tiny.name != "llama":
        pytest.skip("engine bookkeeping, not model code: one architecture is enough")
    base, other = _embeds(tiny, 40, 3), _embeds(tiny, 40, 4)
    llm = tiny.llm(enable_prompt_embeds=True, block_size=16)
    first = llm.generate({"prompt_embeds": base}, _greedy(), use_tqdm=False)[0]
    again = llm.generate({"prompt_embeds": base.clone()}, _greedy(), use_tqdm=False)[0]
    # Same placeholder ids, other embeddings: no block of the first prompt may be reused.
    differ = llm.generate({"prompt_embeds": other}, _greedy(), use_tqdm=False)[0]
    assert list(first.outputs[0].token_ids) == list(again.outputs[0].token_ids) == _hf_greedy(tiny, base)
    assert again.num_cached_tokens == 32           # two full blocks of the 40 rows
    assert differ.num_cached_tokens == 0
    assert list(differ.outputs[0].token_ids) == _hf_greedy(tiny, other)
    # 8 blocks of 16 tokens for three requests that need 4 + 4 + 3: preempted ones recompute their embeddings.
    small = tiny.llm(enable_prompt_embeds=True, block_size=16, num_gpu_blocks_override=8, max_model_len=128)
    prompts = [base, other, _embeds(tiny, 30, 5)]
    outs = small.generate([{"prompt_embeds": e} for e in prompts], _greedy(), use_tqdm=False)
    assert small.llm_engine.scheduler.num_preemptions > 0
    for e, out in zip(prompts, outs):
        assert list(out.outputs[0].token_ids) == _hf_greedy(tiny, e)


def test_prompt_embeds_options_and_errors(tiny):
    if tiny.name != "llama":
        pytest.skip("input checks, not model code: one architecture is enough")
    emb = _embeds(tiny, 20, 6)
    off = tiny.llm()
    with pytest.raises(ValueError, match="enable_prompt_embeds=True"):
        off.generate({"prompt_embeds": emb}, _greedy(), use_tqdm=False)
    llm = tiny.llm(enable_prompt_embeds=True)
    # A leading batch axis of 1 (what HF's get_input_embeddings gives for ids of shape [1, n]).
    (out,) = llm.generate({"prompt_embeds": emb[None]}, _greedy(), use_tqdm=False)
    assert list(out.outputs[0].token_ids) == _hf_greedy(tiny, emb)
    # truncate_prompt_tokens keeps the last rows.
    (cut,) = llm.generate({"prompt_embeds": emb}, _greedy(truncate_prompt_tokens=7), use_tqdm=False)
    assert list(cut.outputs[0].token_ids) == _hf_greedy(tiny, emb[-7:])
    bad = [
        ({"prompt_embeds": emb[:, :32]}, "hidden_size=64"),
        ({"prompt_embeds": torch.ones(3, 64, dtype=torch.long)}, "floating point"),
        ({"prompt_embeds": emb.tolist()}, "must be a torch.Tensor"),
        ({"prompt_embeds": torch.full((3, 64), float("nan"))}, "NaN or infinite"),
        ({"prompt_embeds": emb[:0]}, "cannot be empty"),
        ({"prompt_embeds": emb, "prompt_token_ids": [1, 2]}, "either prompt_embeds or"),
    ]
    for prompt, message in bad:
        with pytest.raises(ValueError, match=message):
            llm.generate(prompt, _greedy(), use_tqdm=False)
    with pytest.raises(ValueError, match="prompt_logprobs are not available"):
        llm.generate({"prompt_embeds": emb}, _greedy(prompt_logprobs=1), use_tqdm=False)
    with pytest.raises(ValueError, match="for generation"):
        llm.beam_search([{"prompt_embeds": emb}], BeamSearchParams(beam_width=2, max_tokens=2))
    with pytest.raises(ValueError, match="speculative_config"):
        LLM(tiny.path, skip_tokenizer_init=True, dtype="float32", enable_prompt_embeds=True,
            speculative_config={"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2})
    # The engine still serves after the refusals.
    (after,) = llm.generate({"prompt_embeds": emb}, _greedy(), use_tqdm=False)
    assert list(after.outputs[0].token_ids) == list(out.outputs[0].token_ids)


def test_penalties_ignore_the_placeholder_ids():
    """An embeds prompt's ids are placeholders (0): the repetition penalty and bad words read its output alone,
    as HF's generate(inputs_embeds=...) does."""
    from types import SimpleNamespace

    from pagedllm.model.layers.sampler import Sampler

    def row(known: bool, **kwargs):
        sp = SamplingParams(temperature=0.0, **kwargs)
        if "bad_words" in kwargs:
            sp._bad_words_token_ids = [[0, 0]]      # (what the tokenizer would make of it) bans 0 right after a 0
        return SimpleNamespace(token_ids=[0, 0, 0], num_prompt_tokens=3, output_token_ids=[], generator=None,
                               num_computed_tokens=3, eos_token_ids=frozenset(), prompt_ids_known=known,
                               sampling_params=sp)

    logits = torch.zeros(1, 10)
    logits[0, 0], logits[0, 7] = 2.0, 1.5      # token 0 ahead, unless penalised as seen or banned
    for kwargs in ({"repetition_penalty": 2.0}, {"bad_words": ["x"]}):
        assert Sampler().sample(logits.clone(), [row(False, **kwargs)]).tolist() == [0], kwargs
        assert Sampler().sample(logits.clone(), [row(True, **kwargs)]).tolist() == [7], kwargs
