"""``pagedllm serve``'s frontend flags that change how the server is reached, what it logs or what wraps it:
``--uds`` (a Unix domain socket), ``--enable-log-outputs``, ``--middleware``; on a tiny random Llama with the SmolLM2
tokenizer, as a user runs them (a real server for --uds, the server's app in-process for the others)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

from app_client import post_all, serve_args


def _start_serve(model_dir: str, *flags: str, log_path: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", model_dir, "--dtype", "float32",
           "--max-model-len", "128", "--kv-cache-memory-gb", "0.01", "--seed", "0", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_uds_serves_health_and_completions_over_the_socket(tiny_llama_dir):
    folder = tempfile.mkdtemp(prefix="pl_uds_", dir="/tmp")     # short: a socket path is at most 107 bytes
    sock, log_path = os.path.join(folder, "server.sock"), os.path.join(folder, "server.log")
    proc = _start_serve(tiny_llama_dir, "--uds", sock, "--disable-uvicorn-access-log", log_path=log_path)
    try:
        client = httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://localhost", timeout=60)
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, open(log_path).read()[-3000:]
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, open(log_path).read()[-3000:]
            time.sleep(0.2)
        r = client.post("/v1/completions", json={"model": tiny_llama_dir, "prompt": "Hello", "max_tokens": 3,
                                                 "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] == 3
        assert f"Starting the server on unix:{sock}" in open(log_path).read()
    finally:
        _stop(proc)


# ---- --enable-log-outputs ----------------------------------------------------------------------------------------
def _sse_texts(body: str, key: str) -> list[str]:
    import json
    out = []
    for line in body.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices") or ():
                text = (choice.get("delta") or {}).get("content") if key == "delta" else choice.get("text")
                if text:
                    out.append(text)
    return out


def test_enable_log_outputs_needs_enable_log_requests(tiny_llama_dir):
    with pytest.raises(ValueError, match="--enable-log-outputs requires --enable-log-requests"):
        serve_args(tiny_llama_dir, "--enable-log-outputs")


def test_enable_log_outputs_logs_what_each_response_generated(tiny_llama_dir, tiny_engine, caplog):
    import logging

    from pagedllm.entrypoints.openai.api_server import build_app
    args = serve_args(tiny_llama_dir, "--enable-log-requests", "--enable-log-outputs")
    quiet = serve_args(tiny_llama_dir, "--enable-log-requests", "--enable-log-outputs", "--no-enable-log-deltas")
    chat = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 4, "temperature": 0}
    completion = {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    named = {"type": "function", "function": {"name": "get_weather"}}
    engine, metrics, names = tiny_engine
    with caplog.at_level(logging.INFO, logger="pagedllm"):
        app = build_app(args, engine, metrics, names)
        caplog.clear()
        chat_r, chat_s, comp_r, comp_s, tool_r = post_all(app, [
            ("/v1/chat/completions", chat), ("/v1/chat/completions", {**chat, "stream": True}),
            ("/v1/completions", completion), ("/v1/completions", {**completion, "stream": True}),
            ("/v1/chat/completions", {**chat, "tools": [tool], "tool_choice": named})])
        logged = caplog.text
        caplog.clear()
        (quiet_s,) = post_all(build_app(quiet, engine, metrics, names),
                               [("/v1/chat/completions", {**chat, "stream": True})])
        quiet_logged = caplog.text
    assert all(r.status_code == 200 for r in (chat_r, chat_s, comp_r, comp_s, tool_r, quiet_s))
    call = tool_r.json()["choices"][0]["message"]["tool_calls"][0]["function"]
    assert f"Generated response {tool_r.json()['id']}: output: '[tool_calls: get_weather({call['arguments']})]'" \
        in logged
    content = chat_r.json()["choices"][0]["message"]["content"]
    assert f"Generated response {chat_r.json()['id']}: output: {content!r}, finish_reason: length" in logged
    text = comp_r.json()["choices"][0]["text"]
    assert f"Generated response {comp_r.json()['id']}: output: {text!r}, finish_reason: length" in logged
    # Streams: each delta, then the whole text.
    for stream, key in ((chat_s, "delta"), (comp_s, "text")):
        pieces = _sse_texts(stream.text, key)
        rid = stream.text.split('"id":"', 1)[1].split('"', 1)[0]
        assert f"Generated response {rid} (streaming delta): output: {pieces[0]!r}" in logged
        assert (f"Generated response {rid} (streaming complete): output: {''.join(pieces)!r}, "
                f"finish_reason: streaming_complete") in logged
    assert "(streaming delta)" not in quiet_logged and "(streaming complete)" in quiet_logged


# ---- --middleware ---------------------------------------------------------------------------------------------------
_MIDDLEWARE_MODULE = '''
class AddHeader:
    """A pure ASGI middleware class: every HTTP answer gets X-Class-Middleware."""
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [(b"x-class-middleware", b"on")]
            await send(message)
        await self.app(scope, receive, send_with_header)


async def add_header(request, call_next):
    response = await call_next(request)
    response.headers["X-Function-Middleware"] = request.url.path
    return response


NOT_A_MIDDLEWARE = 3
'''


def test_middleware_class_and_function_wrap_every_answer(tiny_llama_dir, tiny_engine, tmp_path, monkeypatch):
    from pagedllm.entrypoints.openai.api_server import build_app
    (tmp_path / "pl_user_middleware.py").write_text(_MIDDLEWARE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = serve_args(tiny_llama_dir, "--middleware", "pl_user_middleware.AddHeader",
                       "--middleware", "pl_user_middleware.add_header", "--api-key", "sk-test")
    assert args.middleware == ["pl_user_middleware.AddHeader", "pl_user_middleware.add_header"]
    app = build_app(args, *tiny_engine)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            return (await client.get("/health"), await client.get("/v1/models"),
                    await client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                                      headers={"Authorization": "Bearer sk-test"}))
    import asyncio
    health, refused, completion = asyncio.run(run())
    assert health.status_code == 200 and refused.status_code == 401 and completion.status_code == 200
    for r, path in ((health, "/health"), (refused, "/v1/models"), (completion, "/v1/completions")):
        # The user's middlewares wrap the server's own: the API key's 401 carries their headers too (vLLM's order).
        assert r.headers["x-class-middleware"] == "on" and r.headers["x-function-middleware"] == path
    assert completion.json()["usage"]["completion_tokens"] == 2


def test_bad_middleware_is_a_clear_error(tmp_path, monkeypatch):
    from pagedllm.entrypoints.openai.api_server import load_middleware
    (tmp_path / "pl_user_middleware2.py").write_text(_MIDDLEWARE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"Invalid middleware pl_user_middleware2.NOT_A_MIDDLEWARE. Must be a "
                                         r"function or a class."):
        load_middleware("pl_user_middleware2.NOT_A_MIDDLEWARE")
    with pytest.raises(ValueError, match="Invalid middleware no_such_module_xyz.Thing: No module named"):
        load_middleware("no_such_module_xyz.Thing")
    with pytest.raises(ValueError, match="Invalid middleware pl_user_middleware2.Missing: module"):
        load_middleware("pl_user_middleware2.Missing")


def test_bad_middleware_stops_serve_before_the_model_loads(tiny_llama_dir, monkeypatch):
    from pagedllm.entrypoints.openai import api_server

    def no_engine(*_args, **_kwargs):
        raise AssertionError("the engine was built before --middleware was checked")
    monkeypatch.setattr(api_server, "configure_logging", lambda: None)
    monkeypatch.setattr(api_server, "build_engine", no_engine)
    with pytest.raises(SystemExit, match="error: Invalid middleware no_such_module_xyz.Thing"):
        api_server.run_server(serve_args(tiny_llama_dir, "--middleware", "no_such_module_xyz.Thing"))


def test_taken_port_stops_serve_before_the_model_loads(tiny_llama_dir, monkeypatch):
    """A --port another process listens on: a clear error at once, not uvicorn's after the model has loaded."""
    import socket

    from ports import free_port

    from pagedllm.entrypoints.openai import api_server

    def no_engine(*_args, **_kwargs):
        raise AssertionError("the engine was built on a port that cannot be bound")
    monkeypatch.setattr(api_server, "configure_logging", lambda: None)
    monkeypatch.setattr(api_server, "build_engine", no_engine)
    port = free_port()
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        with pytest.raises(SystemExit, match=f"error: cannot listen on 127.0.0.1:{port}: Address already in use"):
            api_server.run_server(serve_args(tiny_llama_dir, "--host", "127.0.0.1", "--port", str(port)))


def test_port_is_held_while_the_engine_builds_and_freed_after(tiny_llama_dir, monkeypatch):
    """The server's port is bound before the engine is built (tensor-parallel workers open connections on
    ephemeral ports while it builds; one once took a test's port), and closed when serve ends."""
    import errno
    import socket

    from ports import free_port

    from pagedllm.entrypoints.openai import api_server
    port = free_port()
    seen = []

    def engine_probe(*_args, **_kwargs):
        with socket.socket() as other:
            try:
                other.bind(("127.0.0.1", port))
                seen.append("free")
            except OSError as e:
                seen.append(errno.errorcode[e.errno])
        raise KeyboardInterrupt                 # ends run_server as a Ctrl-C during start-up would
    monkeypatch.setattr(api_server, "configure_logging", lambda: None)
    monkeypatch.setattr(api_server, "build_engine", engine_probe)
    with pytest.raises(KeyboardInterrupt):
        api_server.run_server(serve_args(tiny_llama_dir, "--host", "127.0.0.1", "--port", str(port)))
    assert seen == ["EADDRINUSE"]
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))         # closed on the way out


# ---- --default-chat-template-kwargs -----------------------------------------------------------------------------
def test_default_chat_template_kwargs_under_the_requests_own(tiny_llama_dir, tiny_engine):
    """vLLM's --default-chat-template-kwargs: every chat template render gets them, a request's chat_template_kwargs
    override them key by key (here a template switch, seen through /tokenize and the chat's prompt tokens)."""
    from pagedllm.entrypoints.openai.api_server import build_app
    template = "{% if hello %}Hello {% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    app = build_app(serve_args(tiny_llama_dir, "--chat-template", template,
                               "--default-chat-template-kwargs", '{"hello": true}'), *tiny_engine)
    plain = build_app(serve_args(tiny_llama_dir, "--chat-template", template), *tiny_engine)
    messages = [{"role": "user", "content": "world"}]
    on, off = post_all(app, [("/tokenize", {"messages": messages, "return_token_strs": True}),
                             ("/tokenize", {"messages": messages, "chat_template_kwargs": {"hello": False}})])
    (default,) = post_all(plain, [("/tokenize", {"messages": messages})])
    (chat,) = post_all(app, [("/v1/chat/completions", {"messages": messages, "max_tokens": 1})])
    assert "Hello" in on.json()["token_strs"][0]
    assert off.json()["tokens"] == default.json()["tokens"] and on.json()["count"] > default.json()["count"]
    assert chat.json()["usage"]["prompt_tokens"] == on.json()["count"]
    with pytest.raises(ValueError, match="--default-chat-template-kwargs must be a JSON object"):
        serve_args(tiny_llama_dir, "--default-chat-template-kwargs", "[1]")


# ---- uvicorn's settings: access-log exclusions, --log-config-file, --ssl-ciphers ---------------------------------
def test_access_log_exclusions_log_config_file_and_ssl_ciphers(tiny_llama_dir, tmp_path):
    """vLLM's --disable-access-log-for-endpoints (those paths' access lines dropped, query strings aside),
    --log-config-file (a dictConfig JSON applied at start-up: here uvicorn's access lines go to a file) and
    --ssl-ciphers (uvicorn's TLS context gets them)."""
    import json
    import logging

    from fastapi import FastAPI

    from pagedllm.entrypoints.openai.api_server import AccessLogPathFilter, uvicorn_config
    log_file = tmp_path / "access.log"
    config_file = tmp_path / "logging.json"
    config_file.write_text(json.dumps({
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_file), "formatter": "plain"}},
        "loggers": {"uvicorn.access": {"handlers": ["file"], "level": "INFO", "propagate": False}}}))
    args = serve_args(tiny_llama_dir, "--disable-access-log-for-endpoints", "/health, /metrics",
                      "--log-config-file", str(config_file), "--ssl-ciphers", "ECDHE-RSA-AES256-GCM-SHA384")
    access = logging.getLogger("uvicorn.access")
    try:
        config = uvicorn_config(args, FastAPI())
        for path in ("/health", "/metrics?x=1", "/v1/models"):
            access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", 200)
        for handler in access.handlers:
            handler.flush()
        assert log_file.read_text().splitlines() == ['127.0.0.1:5000 - "GET /v1/models HTTP/1.1" 200']
        assert config.ssl_ciphers == "ECDHE-RSA-AES256-GCM-SHA384"
    finally:
        for f in [f for f in access.filters if isinstance(f, AccessLogPathFilter)]:
            access.removeFilter(f)
        for handler in list(access.handlers):
            access.removeHandler(handler)
            handler.close()
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        serve_args(tiny_llama_dir, "--log-config-file", str(bad))
    with pytest.raises(ValueError, match="--log-config-file /no/such/file.json"):
        serve_args(tiny_llama_dir, "--log-config-file", "/no/such/file.json")


def test_tokenizer_info_endpoint_only_when_enabled(tiny_llama_dir, tiny_engine):
    """vLLM's --enable-tokenizer-info-endpoint: GET /tokenizer_info answers the tokenizer's configuration (class,
    special tokens as text, no file paths); without the flag the route does not exist."""
    import asyncio

    from pagedllm.entrypoints.openai.api_server import build_app

    def get(app):
        async def run():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
                return await c.get("/tokenizer_info")
        return asyncio.run(run())
    info = get(build_app(serve_args(tiny_llama_dir, "--enable-tokenizer-info-endpoint"), *tiny_engine))
    missing = get(build_app(serve_args(tiny_llama_dir), *tiny_engine))
    assert info.status_code == 200 and missing.status_code == 404
    body = info.json()
    tok = tiny_engine[0].tokenizer
    assert body["tokenizer_class"] == type(tok).__name__
    assert body["eos_token"] == tok.eos_token and "vocab_file" not in body and "merges_file" not in body


def test_root_path_without_a_deprecation_warning(tiny_llama_dir, tiny_engine):
    """--root-path: the routes answer at their own paths (the proxy strips the prefix, as vLLM's), the docs point at
    the prefixed openapi.json, and start-up prints no FastAPIDeprecationWarning (it did: FastAPI(root_path=...))."""
    import asyncio
    import warnings

    from pagedllm.entrypoints.openai.api_server import build_app

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app = build_app(serve_args(tiny_llama_dir, "--root-path", "/api"), *tiny_engine)
    assert not [w for w in caught if "root_path" in str(w.message)], [str(w.message) for w in caught]

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            return await c.get("/v1/models"), await c.get("/docs")
    models, docs = asyncio.run(run())
    assert models.status_code == 200 and models.json()["data"][0]["object"] == "model"
    assert "/api/openapi.json" in docs.text


def test_config_file_flags_under_the_command_lines(tiny_llama_dir, tmp_path):
    """vLLM's ``--config FILE``: the YAML's flags apply (served names, a generation-config override, a negated
    boolean), and a flag also on the command line (--max-model-len 128) keeps the command line's value."""
    from app_client import run_on, serve_in_process
    config = tmp_path / "serve.yaml"
    config.write_text("served-model-name: [smol, smol-alias]\nmax_model_len: 64\n"
                      "override-generation-config: {max_new_tokens: 2}\nenable-prefix-caching: false\n")

    async def script(client):
        return (await client.get("/v1/models"),
                await client.post("/v1/completions", json={"model": "smol-alias", "prompt": "Hello there",
                                                           "ignore_eos": True}))
    with serve_in_process(tiny_llama_dir, "--config", str(config)) as (app, engine):
        models, completion = run_on(app, script)
        prefix_caching = engine.config.args.enable_prefix_caching
    assert [(m["id"], m["max_model_len"]) for m in models.json()["data"]] == [("smol", 128), ("smol-alias", 128)]
    assert completion.status_code == 200, completion.text
    assert completion.json()["usage"]["completion_tokens"] == 2 and completion.json()["model"] == "smol"
    assert prefix_caching is False


def test_dotted_keys_of_json_flags_as_vllm(tiny_llama_dir, capsys):
    """vLLM's dotted keys for every JSON-object flag: ``--limit-mm-per-prompt.image 2`` (its multimodal docs),
    nested keys, ``-O.key``, ``KEY+`` list items, merged over the same flag's JSON. Before, only the pooler and
    structured-outputs configs took them: ``--limit-mm-per-prompt.image 2`` was 'unrecognized arguments'."""
    args = serve_args(tiny_llama_dir, "--limit-mm-per-prompt", '{"image": 2, "video": 3}',
                      "--limit-mm-per-prompt.video", "1", "--limit-mm-per-prompt.audio=0")
    assert args.limit_mm_per_prompt == {"image": 2, "video": 1, "audio": 0}
    args = serve_args(tiny_llama_dir, "--hf-overrides.text_config.num_hidden_layers", "2",
                      "--hf_overrides.text_config.rope_theta", "1e6", "--hf-overrides.architectures+", "X",
                      "--speculative-config.method", "ngram", "--speculative-config.num_speculative_tokens", "3",
                      "--speculative-config.prompt_lookup_max", "4",
                      "-O.cudagraph_capture_sizes+", "1", "-O.cudagraph_capture_sizes+=2,4",
                      "--default-chat-template-kwargs.enable_thinking", "false")
    assert args.hf_overrides == {"text_config": {"num_hidden_layers": 2, "rope_theta": 1e6}, "architectures": ["X"]}
    assert args.speculative_config["method"] == "ngram" and args.speculative_config["num_speculative_tokens"] == 3
    assert args.compilation_config == {"cudagraph_capture_sizes": [1, 2, 4]}
    assert args.default_chat_template_kwargs == {"enable_thinking": False}
    with pytest.raises(SystemExit):
        serve_args(tiny_llama_dir, "--limit-mm-per-prompt", "7", "--limit-mm-per-prompt.image", "1")
    assert "cannot be combined with --limit-mm-per-prompt.KEY flags" in capsys.readouterr().err
