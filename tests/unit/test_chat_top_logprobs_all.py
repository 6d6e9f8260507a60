"""Chat's top_logprobs=-1 (vLLM's "every token of the vocabulary"), in-process on a tiny random Llama with the
SmolLM2 tokenizer (49152 tokens)."""
from __future__ import annotations

import math

from app_client import responses_of_server_app

CH = "/v1/chat/completions"
BODY = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "logprobs": True, "top_logprobs": -1}


def test_top_logprobs_minus_one_is_the_whole_vocabulary(tiny_llama_dir):
    # vLLM: top_logprobs must be a positive value or -1; -1 lists every token, within --max-logprobs (-1: no cap).
    every, below, no_flag = responses_of_server_app(
        tiny_llama_dir, [(CH, BODY), (CH, {**BODY, "top_logprobs": -2}), (CH, {**BODY, "logprobs": False})],
        flags=("--max-logprobs", "-1"))
    assert every.status_code == 200, every.text
    (entry,) = every.json()["choices"][0]["logprobs"]["content"]
    top = [t["logprob"] for t in entry["top_logprobs"]]
    assert len(top) == 49152 and top == sorted(top, reverse=True)
    assert math.isclose(sum(math.exp(lp) for lp in top), 1.0, rel_tol=1e-3) and entry["logprob"] in top
    assert below.status_code == 400 and below.json()["error"]["message"] == (
        "`top_logprobs` must be a positive value or -1.")
    assert no_flag.status_code == 400 and no_flag.json()["error"]["message"] == (
        "when using `top_logprobs`, `logprobs` must be set to true.")
    # Within the default --max-logprobs (20), -1 asks for more than allowed: vLLM's message, naming top_logprobs.
    (capped,) = responses_of_server_app(tiny_llama_dir, [(CH, BODY)])
    assert capped.status_code == 400 and capped.json()["error"] == {
        "message": "Requested sample logprobs of 49152, which is greater than max allowed: 20",
        "type": "BadRequestError", "param": "top_logprobs", "code": 400}
