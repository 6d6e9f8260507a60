"""Helpers of the tests that drive the server's app in-process (over ASGI, no socket): the parsed ``pagedllm serve``
command line, and requests posted to an app."""
from __future__ import annotations

import asyncio
import argparse

import httpx


def serve_args(model_dir: str, *flags: str) -> argparse.Namespace:
    """``pagedllm serve MODEL_DIR --dtype float32 --max-model-len 128 --seed 0 FLAGS``, finalized as the CLI does;
    the engine core runs in a thread (--disable-frontend-multiprocessing)."""
    from pagedllm.entrypoints.cli import make_parser
    from pagedllm.entrypoints.openai.cli_args import finalize_args
    return finalize_args(make_parser().parse_args(
        ["serve", model_dir, "--dtype", "float32", "--max-model-len", "128", "--seed", "0",
         "--disable-frontend-multiprocessing", *flags]))


def post_all(app, calls: list[tuple[str, dict]], headers: dict | None = None) -> list[httpx.Response]:
    """POST each (path, JSON body) to ``app`` in turn; the responses."""
    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            return [await client.post(path, json=body, headers=headers) for path, body in calls]
    return asyncio.run(run())
