"""The OpenAI-compatible server's app in-process (``build_app`` over ASGI, the engine core in a thread), for tests of
its routes on a small model without a server process."""
from __future__ import annotations

import argparse
import asyncio

from pagedllm.entrypoints.openai.cli_args import make_serve_parser


def serve(model_dir: str, *flags: str):
    """The engine and the app of ``pagedllm serve --model model_dir *flags`` (float32, 128 tokens, a small KV cache)."""
    from pagedllm.entrypoints.openai.api_server import build_app, build_engine
    args = make_serve_parser(argparse.ArgumentParser(), model_positional=False).parse_args(
        ["--model", model_dir, "--dtype", "float32", "--max-model-len", "128", "--kv-cache-memory-gb", "0.01",
         *flags])
    args.chat_template = None
    args.disable_frontend_multiprocessing = True     # the engine core in a thread
    args.log_requests, args.api_key = False, None
    engine, metrics, names = build_engine(args)
    return engine, build_app(args, engine, metrics, names)


def run(app, script):
    """``await script(client)`` with an httpx client talking to ``app``; its result."""
    import httpx

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            return await script(client)
    return asyncio.run(main())
