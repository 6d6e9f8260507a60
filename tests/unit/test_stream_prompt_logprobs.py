"""``prompt_logprobs: 0`` with ``stream: true`` streams, as in vLLM (which refuses only > 0 or -1 there): the chunks
carry no prompt_logprobs field, and with echo + logprobs the first chunk's logprobs cover the prompt's tokens, the
same numbers the whole response gives. In-process on a tiny random Llama."""
from __future__ import annotations

import json

from app_client import post_all, serve_in_process

PROMPT = [5, 17, 300, 42]


def chunks(response) -> list[dict]:
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_prompt_logprobs_zero_streams(tiny_llama_dir):
    base = {"prompt": PROMPT, "max_tokens": 3, "temperature": 0, "prompt_logprobs": 0}
    with serve_in_process(tiny_llama_dir) as (app, _):
        plain, echoed, whole, refused = post_all(app, [
            ("/v1/completions", {**base, "stream": True}),
            ("/v1/completions", {**base, "stream": True, "echo": True, "logprobs": 1}),
            ("/v1/completions", {**base, "echo": True, "logprobs": 1}),
            ("/v1/completions", {**base, "stream": True, "prompt_logprobs": 1}),
        ])
    assert plain.status_code == 200, plain.text
    streamed = chunks(plain)
    assert all("prompt_logprobs" not in c["choices"][0] for c in streamed)
    assert sum(len(c["choices"]) for c in streamed) >= 1 and streamed[-1]["choices"][0]["finish_reason"] == "length"
    assert echoed.status_code == 200, echoed.text
    first = chunks(echoed)[0]["choices"][0]["logprobs"]
    reference = whole.json()["choices"][0]
    assert len(reference["prompt_logprobs"]) == len(PROMPT) and reference["prompt_logprobs"][0] is None
    # The prompt's entries, then the new tokens the chunk carries: one, or more when the engine ran ahead of the
    # stream (a loaded machine: the full suite once gave two here).
    assert first["token_logprobs"][0] is None and len(PROMPT) + 1 <= len(first["token_logprobs"]) <= len(PROMPT) + 3
    assert first["token_logprobs"][:len(PROMPT)] == reference["logprobs"]["token_logprobs"][:len(PROMPT)]
    assert refused.status_code == 400 and refused.json()["error"] == {
        "message": "`prompt_logprobs` are not available when `stream=True`.", "type": "BadRequestError",
        "param": "prompt_logprobs", "code": 400}
