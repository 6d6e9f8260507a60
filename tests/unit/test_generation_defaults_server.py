"""The server's sampling defaults from ``--generation-config`` / ``--override-generation-config`` (vLLM's flags): a
request without the fields gets them, and the start-up log names them as vLLM's does. Driven in-process through the
app the server runs (``build_app`` over ASGI), on a tiny random Llama with the SmolLM2 tokenizer."""
from __future__ import annotations

import asyncio
import logging

from app_client import serve_in_process


def test_override_generation_config_is_the_servers_default(tiny_llama_dir, caplog):
    import httpx

    with caplog.at_level(logging.INFO, logger="pagedllm"), serve_in_process(
            tiny_llama_dir, "--generation-config", "vllm",
            "--override-generation-config", '{"max_new_tokens": 3, "temperature": 0}') as (app, _):
        assert "Using default sampling params from vllm: {'temperature': 0, 'max_tokens': 3}" in caplog.text

        async def post():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
                # No max_tokens: the chat endpoint's default is the generation config's.
                return await client.post("/v1/chat/completions",
                                         json={"messages": [{"role": "user", "content": "Hello there"}]})
        response = asyncio.run(post())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"


def test_override_max_new_tokens_caps_every_request(tiny_llama_dir):
    """vLLM's override_max_tokens: --override-generation-config's max_new_tokens (generation config "auto") caps
    each request's max_tokens, given or defaulted: completions' own default of 16 and an explicit 10 alike."""
    from app_client import post_all

    with serve_in_process(tiny_llama_dir, "--override-generation-config",
                          '{"max_new_tokens": 3}') as (app, _):
        responses = post_all(app, [
            ("/v1/completions", {"prompt": "Hello there", "ignore_eos": True}),
            ("/v1/completions", {"prompt": "Hello there", "max_tokens": 10, "ignore_eos": True}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello there"}],
                                      "max_completion_tokens": 10, "ignore_eos": True})])
    for response in responses:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"
