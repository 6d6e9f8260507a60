"""vLLM's request extras and frontend flags, checked against a running server with the openai client: each test says
what vLLM returns for the same request."""
from __future__ import annotations

import httpx
import openai
import pytest

from server_utils import MODEL, SERVER_ARGS, start_servers

MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def server():
    (s,) = start_servers(["serve", MODEL, "--return-tokens-as-token-ids"] + SERVER_ARGS)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_bad_words_are_never_generated(server, client):
    # vLLM's chat extra (extra_body): the greedy answer starts with "Hello"; with bad_words=["Hello"] it cannot.
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=4, temperature=0)
    assert plain.choices[0].message.content.startswith("Hello")
    banned = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=4, temperature=0,
                                            extra_body={"bad_words": ["Hello"]})
    assert "Hello" not in banned.choices[0].message.content
    # The same field on /v1/completions, and a bad value is a 400 naming it.
    prompt = "Hello! Hello! Hello!"
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0,
                                    extra_body={"bad_words": ["Hello", " Hello"]})
    assert "Hello" not in out.choices[0].text
    r = httpx.post(server.url + "/v1/chat/completions",
                   json={"model": MODEL, "messages": MESSAGES, "max_completion_tokens": 2, "bad_words": [""]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "bad_words", r.text


def test_return_tokens_as_token_ids(server, client):
    # Server flag --return-tokens-as-token-ids: logprob tokens are "token_id:{id}" (the sampled ones and the top
    # ones); a request's return_tokens_as_token_ids=false gives the text back (vLLM: the request's value wins).
    out = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=3, temperature=0, logprobs=1,
                                    extra_body={"return_token_ids": True})
    (choice,) = out.choices
    ids = choice.model_extra["token_ids"]
    assert choice.logprobs.tokens == [f"token_id:{t}" for t in ids]
    assert all(f"token_id:{t}" in top for t, top in zip(ids, choice.logprobs.top_logprobs))
    text = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=3, temperature=0, logprobs=1,
                                     extra_body={"return_tokens_as_token_ids": False})
    assert "".join(text.choices[0].logprobs.tokens) == text.choices[0].text == choice.text

    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=2, temperature=0,
                                          logprobs=True, top_logprobs=2, extra_body={"return_token_ids": True})
    ids = chat.choices[0].model_extra["token_ids"]
    content = chat.choices[0].logprobs.content
    assert [c.token for c in content] == [f"token_id:{t}" for t in ids]
    assert content[0].bytes == list(f"token_id:{ids[0]}".encode())
    assert all(top.token.startswith("token_id:") for c in content for top in c.top_logprobs)
    streamed = [c for c in client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=2,
                                                          temperature=0, logprobs=True, stream=True)
                if c.choices and c.choices[0].logprobs]
    assert [lp.token for c in streamed for lp in c.choices[0].logprobs.content] == [c.token for c in content]
