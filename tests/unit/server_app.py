"""The OpenAI server's app driven in-process (``build_app`` over ASGI, the engine core in a thread, as ``pagedllm
run-batch`` does): a server test in seconds, without a server process (imported by the test modules)."""
from __future__ import annotations

import argparse
import asyncio


def post_to_server_app(model_dir: str, posts: list[tuple[str, dict]], flags: tuple[str, ...] = (),
                       chat_template: str | None = None) -> list[tuple[int, dict]]:
    """``pagedllm serve model_dir --dtype float32 --max-model-len 256 <flags>`` as an app: (status, JSON) of each
    (path, body) posted in turn. ``chat_template``: the text --chat-template would load."""
    return [(r.status_code, r.json()) for r in responses_of_server_app(model_dir, posts, flags, chat_template)]


def responses_of_server_app(model_dir: str, posts: list[tuple[str, dict]], flags: tuple[str, ...] = (),
                            chat_template: str | None = None) -> list:
    """As ``post_to_server_app``, the httpx responses themselves (read)."""
    import httpx

    from pagedllm.entrypoints.openai.api_server import build_app, build_engine
    from pagedllm.entrypoints.openai.cli_args import make_serve_parser
    args = make_serve_parser(argparse.ArgumentParser(), model_positional=False).parse_args(
        ["--model", model_dir, "--dtype", "float32", "--max-model-len", "256", "--kv-cache-memory-gb", "0.01",
         *flags])
    if chat_template is not None:
        args.chat_template = chat_template
    args.disable_frontend_multiprocessing = True
    args.log_requests, args.api_key = False, None
    engine, metrics, names = build_engine(args)
    try:
        app = build_app(args, engine, metrics, names)

        async def post_all():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
                return [await client.post(path, json=body) for path, body in posts]
        return asyncio.run(post_all())
    finally:
        engine.shutdown()
