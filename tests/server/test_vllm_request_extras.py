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
    (s,) = start_servers(["serve", MODEL] + SERVER_ARGS)
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
