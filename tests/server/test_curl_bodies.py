"""The exact request bodies of vLLM's quickstart (curl examples), sent with httpx, and /generate on both the legacy
demo server and the OpenAI-compatible one."""
from __future__ import annotations

import json

import httpx
import pytest

from server_utils import MODEL, SERVER_ARGS, start_servers

try:
    import requests
except ImportError:   # the brief's snippet uses requests; httpx has the same calls for these
    requests = httpx


@pytest.fixture(scope="module")
def servers():
    legacy_args = ["--model", MODEL] + [a for a in SERVER_ARGS if "uvicorn" not in a]
    openai_server, legacy = start_servers(["serve", MODEL] + SERVER_ARGS,
                                          ("pagedllm.entrypoints.api_server", legacy_args))
    yield openai_server, legacy
    openai_server.stop()
    legacy.stop()


@pytest.fixture(scope="module")
def url(servers):
    return servers[0].url


def test_completions_quickstart_body(url):
    r = httpx.post(url + "/v1/completions", headers={"Content-Type": "application/json"}, timeout=120,
                   content=json.dumps({"model": MODEL, "prompt": "San Francisco is a", "max_tokens": 7,
                                       "temperature": 0}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"id", "object", "created", "model", "choices", "usage"}
    assert body["object"] == "text_completion" and body["model"] == MODEL
    (choice,) = body["choices"]
    assert set(choice) == {"index", "text", "logprobs", "finish_reason", "stop_reason"}
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["text"]
    assert choice["finish_reason"] == "length" and choice["stop_reason"] is None
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11,
                             "prompt_tokens_details": None}
    # Greedy on this model (checked against HF transformers by the model tests).
    assert choice["text"].startswith(" city")


def test_chat_quickstart_body(url):
    r = httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "model": MODEL,
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "Who won the world series in 2020?"}],
        "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length") and choice["logprobs"] is None
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 16


def test_sse_wire_format(url):
    """Raw SSE: `data: {json}` events separated by blank lines, one per token, usage, then `data: [DONE]`."""
    with httpx.stream("POST", url + "/v1/completions", timeout=120,
                      json={"model": MODEL, "prompt": "San Francisco is a", "max_tokens": 5, "temperature": 0,
                            "stream": True, "stream_options": {"include_usage": True},
                            "return_token_ids": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    # A chunk per step (steps that finished while the server was busy sending come merged), then the usage chunk.
    assert 2 <= len(chunks) <= 6
    assert sum(len(c["choices"][0]["token_ids"]) for c in chunks[:-1]) == 5
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_legacy_generate(servers):
    legacy = servers[1]
    prompt = "San Francisco is a"
    r = requests.post(legacy.url + "/generate", json={"prompt": prompt, "temperature": 0, "max_tokens": 16, "n": 1},
                      timeout=120)
    assert r.status_code == 200, r.text
    text = r.json()["text"]
    assert isinstance(text, list) and len(text) == 1
    assert text[0].startswith(prompt) and len(text[0]) > len(prompt)
    # Same greedy text as the OpenAI server.
    c = httpx.post(servers[0].url + "/v1/completions", timeout=120,
                   json={"prompt": prompt, "temperature": 0, "max_tokens": 16}).json()
    assert text[0] == prompt + c["choices"][0]["text"]
    assert httpx.get(legacy.url + "/health").status_code == 200


def test_legacy_generate_stream(servers):
    legacy = servers[1]
    prompt = "San Francisco is a"
    lines = []
    with httpx.stream("POST", legacy.url + "/generate", timeout=120,
                      json={"prompt": prompt, "stream": True, "temperature": 0, "max_tokens": 6}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line:
                lines.append(json.loads(line)["text"][0])
    assert len(lines) >= 2 and all(t.startswith(prompt) for t in lines)
    assert all(len(a) <= len(b) for a, b in zip(lines, lines[1:]))    # cumulative text
    bad = httpx.post(legacy.url + "/generate", json={"prompt": prompt, "temperature": -1})
    assert bad.status_code == 400 and "temperature" in bad.json()["error"]["message"]


def test_generate_on_openai_server(servers):
    """The tutorial's body posted to the OpenAI server's /generate: the legacy server's answer, byte for byte."""
    openai_server, legacy = servers
    body = {"prompt": "San Francisco is a", "temperature": 0, "max_tokens": 16, "n": 1}
    r = requests.post(openai_server.url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    result = r.json()
    assert set(result) == {"text"} and result["text"][0].startswith("San Francisco is a")
    assert result == requests.post(legacy.url + "/generate", json=body, timeout=120).json()
    # n completions give n prompt-prefixed texts.
    r = httpx.post(openai_server.url + "/generate", timeout=120,
                   json={"prompt": "Hello", "n": 2, "max_tokens": 4, "temperature": 1.0, "seed": 1})
    assert r.status_code == 200 and len(r.json()["text"]) == 2
    assert all(t.startswith("Hello") and len(t) > len("Hello") for t in r.json()["text"])


def test_generate_stream_on_openai_server(servers):
    openai_server, legacy = servers
    body = {"prompt": "San Francisco is a", "stream": True, "temperature": 0, "max_tokens": 6}
    finals = []
    for server in (openai_server, legacy):
        with httpx.stream("POST", server.url + "/generate", timeout=120, json=body) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(line)["text"][0] for line in r.iter_lines() if line]
        assert len(lines) >= 2 and all(t.startswith(body["prompt"]) for t in lines)
        assert all(a == b[:len(a)] for a, b in zip(lines, lines[1:]))    # cumulative text
        finals.append(lines[-1])
    assert finals[0] == finals[1]
    bad = httpx.post(openai_server.url + "/generate", json={"prompt": "x", "temperature": -1})
    assert bad.status_code == 400 and "temperature" in bad.json()["error"]["message"]
