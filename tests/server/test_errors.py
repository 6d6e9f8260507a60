"""Bad requests get OpenAI-style 4xx errors that name the field, and the server keeps serving.

The server of this module runs with --api-key, so the same process also covers the 401 rules; every other request
carries the key.
"""
from __future__ import annotations

import httpx
import pytest

from server_utils import MAX_MODEL_LEN, MODEL, SERVER_ARGS, start_servers

API_KEY = "sk-test-key"
SECOND_KEY = "sk-rotated-key"      # vLLM's --api-key takes several keys; each one opens the server
CHAT = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def server():
    (s,) = start_servers(["serve", MODEL, "--api-key", API_KEY, SECOND_KEY, "--served-model-name", MODEL, "smol"]
                         + SERVER_ARGS)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c


LONG_PROMPT = "hello " * (MAX_MODEL_LEN + 10)

# (endpoint, body, status, field the error names in `param` / message)
BAD_REQUESTS = [
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": 42}, 400, "prompt"),
    ("/v1/completions", {"model": MODEL}, 400, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 0}, 400, "n"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": 21}, 400, "logprobs"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stream_options": {"include_usage": True}}, 400,
     "stream_options"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "presence_penalty": 3}, 400, "presence_penalty"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": ["ok", ""]}, 400, "stop"),
    ("/v1/completions", {"model": MODEL, "prompt": [10 ** 9]}, 400, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 5}, 400, "input_tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "hello " * 500, "max_tokens": 100}, 400, "input_tokens"),
    ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "model"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hello"}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "logprobs": True, "top_logprobs": 21}, 400,
     "logprobs"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "top_logprobs": 2}, 400, "top_logprobs"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "n": 0}, 400, "n"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "max_completion_tokens": 10 ** 6}, 400,
     "max_completion_tokens"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "stream": False,
                              "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "add_generation_prompt": True,
                              "continue_final_message": True}, 400, "continue_final_message"),
    ("/v1/chat/completions", {"model": "nope", "messages": CHAT}, 404, "model"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "temperature": 0, "n": 2}, 400, "n"),
    # Per-request logits processors: vLLM refuses them without --logits-processor-pattern (pagedllm has none).
    ("/v1/completions", {"model": MODEL, "prompt": "x", "logits_processors": ["my_module.MyProcessor"]}, 400,
     "logits_processors"),
    ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "logits_processors": [{"qualname": "m.P"}]}, 400,
     "logits_processors"),
]


@pytest.mark.parametrize("path,body,status,field", BAD_REQUESTS,
                         ids=[f"{p.split('/')[-1]}-{f}-{i}" for i, (p, _, _, f) in enumerate(BAD_REQUESTS)])
def test_bad_request(client, path, body, status, field):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    assert error["type"] == ("NotFoundError" if status == 404 else "BadRequestError")
    assert field in (error["param"] or "") or field in error["message"], error


def test_messages_of_known_errors(client):
    r = client.post("/v1/completions", json={"model": "gpt-4", "prompt": "x"})
    assert r.json()["error"]["message"] == "The model `gpt-4` does not exist."
    prompt = "hello " * 500
    n = client.post("/tokenize", json={"prompt": prompt}).json()["count"]
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 100})
    assert r.json()["error"]["message"] == (
        f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested 100 output tokens "
        f"and your prompt contains {n} input tokens, for a total of {n + 100} tokens. Please reduce the length of "
        f"the input prompt or the number of requested output tokens. (parameter=input_tokens, value={n})")
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "logprobs": 21})
    assert r.json()["error"]["message"] == "Requested sample logprobs of 21, which is greater than max allowed: 20"


def test_malformed_json(client):
    r = client.post("/v1/completions", content=b'{"model": "x", "prompt": ', headers={"Content-Type":
                                                                                     "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "BadRequestError"
    assert "JSON" in r.json()["error"]["message"]


def test_stream_errors_before_streaming(client):
    """A request the engine refuses gets a plain 400, not a 200 stream."""
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True, "top_p": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_p"


def test_served_model_names(client):
    data = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == [MODEL, "smol"]
    r = client.post("/v1/completions", json={"model": "smol", "prompt": "Hi", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == MODEL    # the first name is echoed


def test_api_key(server):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    unauthorized = {"error": "Unauthorized"}        # vLLM's 401 body, as it is
    r = httpx.post(server.url + "/v1/completions", json=body)
    assert r.status_code == 401 and r.json() == unauthorized
    r = httpx.post(server.url + "/v1/completions", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json() == unauthorized
    assert httpx.get(server.url + "/v1/models").status_code == 401
    # /generate runs the model too, so it needs the key (vLLM's OpenAI server has no /generate to guard).
    r = httpx.post(server.url + "/generate", json={"prompt": "Hi", "max_tokens": 2})
    assert r.status_code == 401 and r.json() == unauthorized
    r = httpx.post(server.url + "/generate", json={"prompt": "Hi", "max_tokens": 2, "temperature": 0}, timeout=120,
                   headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200 and r.json()["text"][0].startswith("Hi")
    # Health, metrics, tokenize stay open; the right key works.
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200
    for key in (API_KEY, SECOND_KEY):
        r = httpx.post(server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                       timeout=120)
        assert r.status_code == 200


def test_healthy_after_all_errors(server, client):
    assert httpx.get(server.url + "/health").status_code == 200
    r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": CHAT, "max_tokens": 3})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
