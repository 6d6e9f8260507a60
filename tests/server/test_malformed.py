"""The malformed-input table: hostile and broken requests against every route of both servers. Every answer is a 4xx
in OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}`` naming the field (or saying what was
wrong), never a 5xx; the servers stay healthy.

Three servers start at once: the OpenAI server with small caps (the table), one with --trust-request-chat-template
and --enable-log-requests (sandboxed templates, request logs), and the legacy /generate server with --api-key.
"""
from __future__ import annotations

import json
import time

import httpx
import pytest

from server_utils import MODEL, SERVER_ARGS, start_servers

API_KEY = "sk-legacy"
MAX_N, MAX_PROMPTS, MAX_BODY = 8, 4, 200_000
CHAT = [{"role": "user", "content": "Hi"}]
NAN, INF = float("nan"), float("inf")
LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture(scope="module")
def servers():
    limits = ["--max-n", str(MAX_N), "--max-prompts-per-request", str(MAX_PROMPTS),
              "--max-request-body-bytes", str(MAX_BODY)]
    started = start_servers(
        ["serve", MODEL] + SERVER_ARGS + limits,
        ["serve", MODEL] + SERVER_ARGS + ["--trust-request-chat-template", "--enable-log-requests",
                                          "--max-log-len", "10"],
        ("pagedllm.entrypoints.api_server", ["--model", MODEL, "--api-key", API_KEY] + SERVER_ARGS[:-1]))
    yield started
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def client(servers):
    with httpx.Client(base_url=servers[0].url, timeout=60) as c:
        yield c


def cmpl(**kw) -> dict:
    return {"model": MODEL, "prompt": "Hi", "max_tokens": 2, **kw}


def chat(**kw) -> dict:
    return {"model": MODEL, "messages": CHAT, "max_tokens": 2, **kw}


def gen(**kw) -> dict:
    return {"prompt": "Hi", "max_tokens": 2, **kw}


C, CH, E, T, D, G = "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/tokenize", "/detokenize", "/generate"

# Numeric sampling fields: NaN, inf, out of range and wrong type, on completions, chat and /generate alike.
NUMERIC = [
    ("temperature", NAN), ("temperature", INF), ("temperature", -1), ("temperature", "hot"),
    ("top_p", NAN), ("top_p", 0), ("top_p", 1.5), ("top_p", -INF),
    ("top_k", -5), ("top_k", 1.5), ("top_k", 2 ** 70),
    ("min_p", NAN), ("min_p", 2), ("presence_penalty", NAN), ("presence_penalty", 3),
    ("frequency_penalty", INF), ("frequency_penalty", -3), ("repetition_penalty", 0), ("repetition_penalty", NAN),
    ("seed", 2 ** 64), ("seed", -(2 ** 63) - 1), ("seed", 1.5), ("seed", "x"),
    ("n", 0), ("n", MAX_N + 1), ("n", -1), ("n", 2 ** 64),
    ("max_tokens", -1), ("max_tokens", 2 ** 64), ("max_tokens", "many"),
    ("min_tokens", -1), ("logit_bias", {"5": NAN}), ("logit_bias", {"5": INF}), ("logit_bias", {"x": 1}),
    ("logit_bias", {"999999999": 1}), ("stop_token_ids", ["a"]), ("stop_token_ids", [10 ** 9]),
    ("allowed_token_ids", []), ("truncate_prompt_tokens", 0), ("prompt_logprobs", -5),
]

CASES: list[tuple[str, str, object, int, str]] = []
for field, value in NUMERIC:
    CASES.append((C, "POST", cmpl(**{field: value}), 400, field))
    # chat: a huge max_tokens is refused by the context check, which names max_completion_tokens
    CASES.append((CH, "POST", chat(**{field: value}), 400, "max_" if field == "max_tokens" else field))
    if field not in ("truncate_prompt_tokens",):
        CASES.append((G, "POST", gen(**{field: value}), 400, field))

CASES += [
    # completions
    (C, "POST", cmpl(logprobs=-3), 400, "logprobs"),
    (C, "POST", cmpl(logprobs=NAN), 400, "logprobs"),
    (C, "POST", cmpl(logprobs=21), 400, "logprobs"),
    (C, "POST", cmpl(prompt="\ud800 lone"), 400, "prompt contains invalid Unicode (lone surrogate)"),
    (C, "POST", cmpl(prompt=["ok", "\udfff"]), 400, "prompt"),
    (C, "POST", cmpl(prompt=["a"] * (MAX_PROMPTS + 1)), 400, "--max-prompts-per-request"),
    (C, "POST", cmpl(prompt=[]), 400, "prompt"),
    (C, "POST", cmpl(prompt=[[]]), 400, "prompt"),
    (C, "POST", cmpl(prompt=[-1]), 400, "prompt"),
    (C, "POST", cmpl(prompt={"a": 1}), 400, "prompt"),
    (C, "POST", cmpl(prompt=None), 400, "prompt"),
    (C, "POST", cmpl(seed=2 ** 64 - 1, n=2, temperature=1.0), 400, "seed"),
    (C, "POST", cmpl(n=MAX_N + 1, temperature=1.0), 400, "--max-n"),
    (C, "POST", cmpl(stream="maybe"), 400, "stream"),
    (C, "POST", cmpl(request_id="a\nINFO forged"), 400, "request_id"),
    (C, "POST", cmpl(request_id="x" * 300), 400, "request_id"),
    (C, "POST", cmpl(model=""), 200, ""),
    (C, "POST", cmpl(model="nope"), 404, "model"),
    (C, "POST", cmpl(suffix="x"), 400, "suffix"),
    (C, "POST", cmpl(response_format={"type": "json_schema"}), 400, "response_format"),
    (C, "POST", cmpl(guided_regex="("), 400, "guided_regex"),
    (C, "POST", cmpl(priority=5), 400, "priority"),
    (C, "POST", [1, 2], 400, "JSON object"),
    (C, "POST", "just a string", 400, "JSON object"),
    (C, "POST", None, 400, "JSON object"),
    (C, "POST", b'{"model": "x", "prompt": ', 400, "JSON decode error"),
    (C, "POST", b'\xff\xfe not json', 400, "JSON decode error"),
    (C, "POST", b"x" * (MAX_BODY + 1), 413, "--max-request-body-bytes"),
    (C, "GET", None, 405, "Method GET is not allowed"),
    (C, "PUT", cmpl(), 405, "not allowed"),
    # chat
    (CH, "POST", chat(chat_template="{{ 'x' }}"), 400, "chat_template"),
    (CH, "POST", chat(chat_template=LOOP), 400, "--trust-request-chat-template"),
    (CH, "POST", chat(chat_template_kwargs={"chat_template": LOOP}), 400, "chat_template"),
    (CH, "POST", chat(messages=[{"role": "user", "content": "\ud800"}]), 400, "messages"),
    (CH, "POST", chat(messages=[]), 400, "messages"),
    (CH, "POST", chat(messages=[{"content": "no role"}]), 400, "messages"),
    (CH, "POST", chat(messages=[{"role": "wizard", "content": "x"}]), 400, "messages"),
    (CH, "POST", chat(messages=[{"role": "user", "content": 5}]), 400, "messages"),
    (CH, "POST", chat(messages="hello"), 400, "messages"),
    (CH, "POST", chat(top_logprobs=NAN), 400, "top_logprobs"),
    (CH, "POST", chat(logprobs=True, top_logprobs=-1), 400, "top_logprobs"),
    (CH, "POST", chat(logprobs=True, top_logprobs=2 ** 70), 400, "logprobs"),
    (CH, "POST", chat(max_completion_tokens=NAN), 400, "max_completion_tokens"),
    (CH, "POST", chat(max_completion_tokens=-2), 400, "max_tokens"),
    (CH, "POST", chat(tool_choice="auto", tools=[{"type": "function", "function": {"name": "f"}}]), 400,
     "tool_choice"),
    (CH, "POST", chat(tool_choice="required"), 400, "tool_choice"),
    (CH, "POST", chat(n=MAX_N + 1, temperature=1.0), 400, "--max-n"),
    (CH, "POST", chat(seed=2 ** 64 - 1, n=2, temperature=1.0), 400, "seed"),
    (CH, "POST", chat(request_id="id\r\nx"), 400, "request_id"),
    (CH, "POST", b"{", 400, "JSON decode error"),
    (CH, "GET", None, 405, "not allowed"),
    # embeddings (a generative model here: refused, in the error shape)
    (E, "POST", {"model": MODEL, "input": "hi"}, 400, ""),
    (E, "POST", {"model": MODEL}, 400, ""),
    (E, "POST", {"model": MODEL, "input": "hi", "truncate_prompt_tokens": -5}, 400, "truncate_prompt_tokens"),
    (E, "POST", {"model": MODEL, "input": "x", "chat_template": LOOP, "messages": CHAT}, 400, ""),
    (E, "POST", b"[", 400, "JSON decode error"),
    (E, "GET", None, 405, "not allowed"),
    # tokenize / detokenize
    (T, "POST", {"prompt": "\ud800"}, 400, "prompt contains invalid Unicode (lone surrogate)"),
    (T, "POST", {"prompt": 5}, 400, "prompt"),
    (T, "POST", {"messages": CHAT, "chat_template": LOOP}, 400, "--trust-request-chat-template"),
    (T, "POST", {"messages": [{"role": "user", "content": "\udc00"}]}, 400, "messages"),
    (T, "POST", {}, 400, ""),
    (T, "POST", {"prompt": "x", "model": "nope"}, 404, "model"),
    (T, "GET", None, 405, "not allowed"),
    (D, "POST", {"tokens": [-1]}, 400, "tokens"),
    (D, "POST", {"tokens": [10 ** 12]}, 400, "tokens"),
    (D, "POST", {"tokens": ["a"]}, 400, "tokens"),
    (D, "POST", {"tokens": [NAN]}, 400, "tokens"),
    (D, "POST", {}, 400, "tokens"),
    # /generate on the OpenAI server
    (G, "POST", gen(foo=1), 400, "foo"),
    (G, "POST", gen(stream="yes"), 400, "stream"),
    (G, "POST", gen(prompt="\ud800"), 400, "prompt contains invalid Unicode (lone surrogate)"),
    (G, "POST", gen(prompt=[1, "a"]), 400, "prompt"),
    (G, "POST", gen(prompt=[10 ** 12]), 400, "prompt"),
    (G, "POST", gen(prompt=5), 400, "prompt"),
    (G, "POST", gen(seed=2 ** 64 - 1, n=2, temperature=1.0), 400, "seed"),
    (G, "POST", gen(structured_outputs={"regex": "a"}), 400, "structured_outputs"),
    (G, "POST", b"{", 400, "JSON"),
    (G, "GET", None, 405, "not allowed"),
    # models, unknown routes
    ("/v1/models/nope", "GET", None, 404, "The model `nope` does not exist."),
    ("/v1/models/" + MODEL, "GET", None, 200, ""),
    ("/v1/models", "POST", {}, 405, "not allowed"),
    ("/v1/nothing-here", "GET", None, 404, "Not found"),
    ("/v2/completions", "POST", cmpl(), 404, "Not found"),
]


def send(client: httpx.Client, route: str, method: str, body: object) -> httpx.Response:
    if isinstance(body, bytes):
        return client.request(method, route, content=body, headers={"Content-Type": "application/json"})
    if body is None and method == "GET":
        return client.request(method, route)
    # allow_nan: NaN / Infinity literals, as a careless client (Python's json) sends them.
    return client.request(method, route, content=json.dumps(body, allow_nan=True).encode(),
                          headers={"Content-Type": "application/json"})


def assert_error_shape(r: httpx.Response, status: int, fragment: str) -> None:
    assert r.status_code == status, (r.status_code, r.text[:500])
    if status >= 400:
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert error["code"] == status and error["type"].endswith("Error"), error
        assert "Traceback" not in error["message"] and "object has no attribute" not in error["message"], error
        assert fragment in (error["param"] or "") or fragment in error["message"], error


def test_malformed_table(servers, client):
    """The whole table in one test (one server; ~0.1 s a case): a failure lists every case that went wrong."""
    assert len(CASES) >= 150
    failures = []
    for route, method, body, status, fragment in CASES:
        r = send(client, route, method, body)
        try:
            assert r.status_code < 500, r.text[:300]
            assert_error_shape(r, status, fragment)
        except AssertionError as e:
            failures.append(f"{method} {route} {str(body)[:120]!r}: {e}")
    assert not failures, f"{len(failures)} of {len(CASES)} cases failed:\n" + "\n".join(failures)
    assert httpx.get(servers[0].url + "/health").status_code == 200
    r = client.post(C, json=cmpl(temperature=0))     # still serving
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_chunked_body_over_the_limit_is_413(client):
    def chunks():
        for _ in range(MAX_BODY // 10_000 + 2):
            yield b" " * 10_000
    r = client.post(C, content=chunks(), headers={"Content-Type": "application/json"})
    assert_error_shape(r, 413, "--max-request-body-bytes")


def test_largest_seed_fits_with_n_fan_out(client):
    """2^64 - 1 is a valid seed for n=1, and 2^64 - 2 for n=2 (the second completion samples with seed + 1)."""
    r = client.post(C, json=cmpl(seed=2 ** 64 - 1, temperature=1.0))
    assert r.status_code == 200, r.text
    r = client.post(C, json=cmpl(seed=2 ** 64 - 2, n=2, temperature=1.0))
    assert r.status_code == 200 and len(r.json()["choices"]) == 2, r.text


def test_trusted_request_templates_render_sandboxed(servers):
    url = servers[1].url
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    r = httpx.post(url + "/tokenize", json={"messages": CHAT, "chat_template": template}, timeout=60)
    assert r.status_code == 200, r.text
    text = httpx.post(url + "/detokenize", json={"tokens": r.json()["tokens"]}).json()["prompt"]
    assert text == "<user>Hi"
    for body_template, fragment in ((LOOP, "took longer than 1 s"),
                                    ("{% set s = 'x' * 400000000 %}", "over the limit")):
        for route, body in (("/tokenize", {"messages": CHAT}), (CH, chat())):
            start = time.monotonic()
            r = httpx.post(url + route, json={**body, "chat_template": body_template}, timeout=60)
            assert time.monotonic() - start < 5
            assert_error_shape(r, 400, "chat_template")
            assert fragment in r.json()["error"]["message"]
    r = httpx.post(url + CH, json=chat(temperature=0, chat_template=template), timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(
        httpx.post(url + "/tokenize", json={"prompt": "<user>Hi", "add_special_tokens": False}).json()["tokens"])


def test_request_logs_only_when_enabled_and_cut(servers, client):
    secret = "SECRET-PROMPT-" + "y" * 40
    assert client.post(C, json=cmpl(prompt=secret, temperature=0)).status_code == 200
    r = httpx.post(servers[1].url + C, json=cmpl(prompt=secret, temperature=0), timeout=60)
    assert r.status_code == 200
    time.sleep(0.5)
    assert "SECRET" not in servers[0].log_tail(400)          # logging is off by default
    logged = [line for line in servers[1].log_tail(400).splitlines() if "Received request" in line]
    assert logged and "'SECRET-PRO'" in logged[-1] and secret not in logged[-1]   # --max-log-len 10


def test_legacy_server_key_and_error_shapes(servers):
    url = servers[2].url
    r = httpx.post(url + G, json=gen())
    assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}          # vLLM's 401 body
    r = httpx.post(url + G, json=gen(), headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
    auth = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.post(url + G, json=gen(temperature=0), headers=auth, timeout=60)
    assert r.status_code == 200 and r.json()["text"][0].startswith("Hi")
    assert httpx.get(url + "/health").status_code == 200
    with httpx.Client(base_url=url, headers=auth, timeout=60) as c:
        for route, method, body, status, fragment in [
                (G, "POST", gen(temperature=NAN), 400, "temperature"),
                (G, "POST", gen(foo=1), 400, "foo"),
                (G, "POST", gen(n=129, temperature=1.0), 400, "--max-n"),
                (G, "POST", b"{", 400, "JSON"),
                (G, "GET", None, 405, "not allowed"),
                ("/nothing", "GET", None, 404, "Not found"),
                (G, "POST", b"x" * (33 * 1024 * 1024), 413, "--max-request-body-bytes")]:
            assert_error_shape(send(c, route, method, body), status, fragment)
