"""The OpenAI server's app in-process (``build_app`` over ASGI, the engine core in a thread, as ``pagedllm
run-batch`` runs it): the server's routes on a tiny model in seconds, without a server process."""
from __future__ import annotations

import argparse
import contextlib
from typing import Iterator

from pagedllm.entrypoints.openai.cli_args import load_chat_template, make_serve_parser


@contextlib.contextmanager
def serve_in_process(model_dir: str, *flags: str, chat_template: str | None = None) -> Iterator:
    """``(app, engine)`` of ``pagedllm serve model_dir --dtype float32 --max-model-len 128 *flags``; the engine
    shuts down on exit. Send requests with ``httpx.AsyncClient(transport=httpx.ASGITransport(app=app))``, all in
    one event loop."""
    from pagedllm.entrypoints.openai.api_server import build_app, build_engine
    args = make_serve_parser(argparse.ArgumentParser(), model_positional=False).parse_args(
        ["--model", model_dir, "--dtype", "float32", "--max-model-len", "128", *flags])
    args.chat_template = load_chat_template(chat_template)
    args.disable_frontend_multiprocessing = True     # as run-batch: the engine core in a thread
    args.log_requests, args.api_key = False, None
    engine, metrics, names = build_engine(args)
    try:
        yield build_app(args, engine, metrics, names), engine
    finally:
        engine.shutdown()
