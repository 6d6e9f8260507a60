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
                # No max_tokens: the chat endpoint's default is the generation config's (the completions endpoint
                # keeps its own 16, as vLLM's).
                return await client.post("/v1/chat/completions",
                                         json={"messages": [{"role": "user", "content": "Hello there"}]})
        response = asyncio.run(post())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"
