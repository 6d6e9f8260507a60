"""Helpers of the tests that drive the server's app in-process (over ASGI, no socket, the engine core in a thread,
as ``pagedllm run-batch`` runs it): the parsed ``pagedllm serve`` command line, the app itself, and requests posted
to an app. The server's routes on a tiny model in seconds, without a server process."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Iterator

import httpx


def serve_args(model_dir: str, *flags: str) -> argparse.Namespace:
    """``pagedllm serve MODEL_DIR --dtype float32 --max-model-len 128 --seed 0 FLAGS``, finalized as the CLI does;
    the engine core runs in a thread (--disable-frontend-multiprocessing)."""
    from pagedllm.entrypoints.cli import make_parser
    from pagedllm.entrypoints.openai.cli_args import finalize_args
    return finalize_args(make_parser().parse_args(
        ["serve", model_dir, "--dtype", "float32", "--max-model-len", "128", "--seed", "0",
         "--disable-frontend-multiprocessing", *flags]))


@contextlib.contextmanager
def serve_in_process(model_dir: str, *flags: str, chat_template: str | None = None) -> Iterator:
    """``(app, engine)`` of ``serve_args(model_dir, "--kv-cache-memory-gb", "0.01", *flags)`` (``chat_template``:
    what --chat-template takes); the engine shuts down on exit. Send requests with ``run_on`` / ``post_all``, or
    ``httpx.AsyncClient(transport=httpx.ASGITransport(app=app))``, all in one event loop."""
    from pagedllm.entrypoints.openai.api_server import build_app, build_engine
    template = ("--chat-template", chat_template) if chat_template is not None else ()
    args = serve_args(model_dir, "--kv-cache-memory-gb", "0.01", *template, *flags)
    engine, metrics, names = build_engine(args)
    try:
        yield build_app(args, engine, metrics, names), engine
    finally:
        engine.shutdown()


def run_on(app, script):
    """``await script(client)`` with an httpx client talking to ``app``; its result."""
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            return await script(client)
    return asyncio.run(main())


def post_all(app, calls: list[tuple[str, dict]], headers: dict | None = None) -> list[httpx.Response]:
    """POST each (path, JSON body) to ``app`` in turn; the responses."""
    async def script(client):
        return [await client.post(path, json=body, headers=headers) for path, body in calls]
    return run_on(app, script)


def responses_of_server_app(model_dir: str, posts: list[tuple[str, dict]], flags: tuple[str, ...] = (),
                            chat_template: str | None = None) -> list[httpx.Response]:
    """``pagedllm serve model_dir --dtype float32 --max-model-len 256 <flags>`` in-process: the response to each
    (path, body) posted in turn. ``chat_template``: what --chat-template takes (a path or the template)."""
    with serve_in_process(model_dir, "--max-model-len", "256", *flags, chat_template=chat_template) as (app, _):
        return post_all(app, posts)


def post_to_server_app(model_dir: str, posts: list[tuple[str, dict]], flags: tuple[str, ...] = (),
                       chat_template: str | None = None) -> list[tuple[int, dict]]:
    """As ``responses_of_server_app``: (status, JSON) of each."""
    return [(r.status_code, r.json()) for r in responses_of_server_app(model_dir, posts, flags, chat_template)]
