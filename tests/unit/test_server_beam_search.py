"""use_beam_search on /v1/completions and /v1/chat/completions (vLLM's request extra): n beams wide, the same beams
as LLM.beam_search, each a choice; what beam search would not apply is a 400 naming the field. In-process on a tiny
random Llama."""
from __future__ import annotations

import pytest

from app_client import post_all, serve_args
from pagedllm.sampling_params import BeamSearchParams


@pytest.fixture(scope="module")
def app(tiny_llama_dir, tiny_engine):
    from pagedllm.entrypoints.openai.api_server import build_app
    return build_app(serve_args(tiny_llama_dir), *tiny_engine)


def test_completion_beams_match_llm_beam_search(app, tiny_llama_dir, tiny_engine):
    from pagedllm import LLM
    prompt = [1, 400, 500, 600]
    (resp, chat) = post_all(app, [
        ("/v1/completions", {"prompt": prompt, "max_tokens": 3, "n": 3, "use_beam_search": True,
                             "return_token_ids": True, "logprobs": 1}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "n": 2,
                                  "use_beam_search": True})])
    assert resp.status_code == 200 and chat.status_code == 200, (resp.text, chat.text)
    choices = resp.json()["choices"]
    llm = LLM(model=tiny_llama_dir, dtype="float32", max_model_len=128, seed=0)
    (offline,) = llm.beam_search([{"prompt_token_ids": prompt}], BeamSearchParams(beam_width=3, max_tokens=3))
    tok = llm.get_tokenizer()
    assert [c["token_ids"] for c in choices] == [s.tokens[len(prompt):] for s in offline.sequences]
    assert [c["text"] for c in choices] == [tok.decode(s.tokens[len(prompt):]) for s in offline.sequences]
    assert [c["index"] for c in choices] == [0, 1, 2] and {c["finish_reason"] for c in choices} == {"length"}
    assert all(len(c["logprobs"]["tokens"]) == 3 for c in choices)
    assert resp.json()["usage"]["completion_tokens"] == 9
    beams = chat.json()["choices"]
    assert len(beams) == 2 and beams[0]["message"]["content"] != beams[1]["message"]["content"]


def test_what_beam_search_would_not_apply_is_a_400(app):
    base = {"prompt": "Hi", "max_tokens": 2, "n": 2, "use_beam_search": True}
    cases = [({"stream": True}, "stream", "Streaming is not currently supported with beam search"),
             ({"top_p": 0.5}, "top_p", "top_p is not applied with use_beam_search"),
             ({"stop": ["x"]}, "stop", "stop is not applied"),
             ({"response_format": {"type": "json_object"}}, "response_format", "no constrained beam search")]
    responses = post_all(app, [("/v1/completions", {**base, **extra}) for extra, _, _ in cases])
    for r, (extra, param, words) in zip(responses, cases):
        error = r.json()["error"]
        assert r.status_code == 400 and error["param"] == param and words in error["message"], (extra, r.text)


def test_beam_search_on_a_server_returning_logits_is_a_400(tiny_llama_dir):
    """--logprobs-mode raw_logits: beams cannot be ranked by logits (a 400 saying so); plain requests with logprobs
    still answer, their values the model's logits (a positive one included: no log-probability is above 0)."""
    from app_client import responses_of_server_app
    beam, plain = responses_of_server_app(tiny_llama_dir, [
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "n": 2, "use_beam_search": True}),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "logprobs": 20, "temperature": 0})],
        flags=("--logprobs-mode", "raw_logits"))
    assert beam.status_code == 400, beam.text
    assert "beam search scores beams by their log-probabilities" in beam.json()["error"]["message"]
    assert plain.status_code == 200, plain.text
    tops = plain.json()["choices"][0]["logprobs"]["top_logprobs"]
    assert len(tops) == 2 and max(v for top in tops for v in top.values()) > 0
