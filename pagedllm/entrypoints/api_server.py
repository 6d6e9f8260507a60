"""The legacy demo server (vLLM's ``vllm.entrypoints.api_server``): GET /health and POST /generate.

``python -m pagedllm.entrypoints.api_server --model MODEL [--host H] [--port 8000] [--api-key KEY] [engine flags]``

POST /generate ``{"prompt": str, "stream": false, ...any SamplingParams field}`` -> ``{"text": [prompt + output, ...]}``
comes from generate_route.py, the same route the OpenAI-compatible server mounts.
"""
from __future__ import annotations

import argparse
import sys
import logging

from fastapi import FastAPI
from fastapi.responses import Response

import pagedllm
from pagedllm import envs
from pagedllm.config import EngineArgs, FlexibleArgumentParser, verify_engine_args
from pagedllm.engine.async_engine import AsyncLLMEngine
from pagedllm.entrypoints.event_loop import run_event_loop
from pagedllm.entrypoints.generate_route import add_generate_route
from pagedllm.entrypoints.listen_socket import bind_listen_socket
from pagedllm.usage.usage_lib import UsageContext
from pagedllm.entrypoints.openai.cli_args import (DEFAULT_MAX_REQUEST_BODY_BYTES, add_limit_args, add_shutdown_arg,
                                                  check_limit_args)
from pagedllm.entrypoints.shutdown import GracefulServer, ServerState, StoppingGuard
from pagedllm.entrypoints.server_guards import add_error_handlers, add_guards
from pagedllm.gc_heap import freeze_gc_heap
from pagedllm.sampling_params import MAX_N

logger = logging.getLogger("pagedllm.entrypoints.api_server")


def build_app(engine: AsyncLLMEngine, root_path: str = "", api_key: str | None = None, max_n: int = MAX_N,
              max_request_body_bytes: int | None = DEFAULT_MAX_REQUEST_BODY_BYTES) -> FastAPI:
    app = FastAPI(title="pagedllm demo API server", version=pagedllm.__version__)
    app.root_path = root_path        # not FastAPI(root_path=...): that argument warns it is deprecated
    app.state.engine = engine
    add_error_handlers(app)

    @app.get("/health")
    async def health() -> Response:
        try:
            await engine.check_health()
        except Exception:
            return Response(status_code=503)
        return Response(status_code=200)

    add_generate_route(app, engine, max_n=max_n)
    add_guards(app, api_key, max_request_body_bytes)
    app.state.server_state = ServerState()
    app.add_middleware(StoppingGuard, state=app.state.server_state, engine=engine)
    return app


def make_arg_parser() -> argparse.ArgumentParser:
    parser = FlexibleArgumentParser(description="pagedllm demo API server (POST /generate).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", type=str, default=None)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ssl-keyfile", type=str, default=None)
    parser.add_argument("--ssl-certfile", type=str, default=None)
    parser.add_argument("--ssl-ca-certs", type=str, default=None)
    parser.add_argument("--root-path", type=str, default=None)
    parser.add_argument("--log-level", type=str, default="info")
    parser.add_argument("--api-key", type=str, default=None,
                        help="If provided, POST /generate needs this key as 'Authorization: Bearer <key>' (env "
                             "PAGEDLLM_API_KEY does the same); /health stays open.")
    add_limit_args(parser)
    add_shutdown_arg(parser)
    EngineArgs.add_cli_args(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from pagedllm.entrypoints.openai.api_server import configure_logging
    from pagedllm.metrics import EngineMetrics

    args = make_arg_parser().parse_args(argv)
    if args.api_key is None:
        args.api_key = envs.PAGEDLLM_API_KEY or envs.VLLM_API_KEY
    args.max_log_len = None
    check_limit_args(args)
    configure_logging()
    sock = bind_listen_socket(args.host, args.port)     # before the engine: see listen_socket.py
    engine_args = EngineArgs.from_cli_args(args)
    verify_engine_args(engine_args)
    engine_args.usage_context = UsageContext.OPENAI_API_SERVER
    spec = engine_args.speculative_config       # verified above: a config.SpeculativeConfig, or None
    metrics = EngineMetrics(engine_args.model, log_stats=not args.disable_log_stats,
                            num_speculative_tokens=spec.num_speculative_tokens if spec else 0)
    engine = AsyncLLMEngine.from_engine_args(engine_args, log_requests=False, metrics=metrics)
    app = build_app(engine, args.root_path or "", api_key=args.api_key, max_n=args.max_n,
                    max_request_body_bytes=args.max_request_body_bytes)
    config = uvicorn.Config(app, host=args.host or "0.0.0.0", port=args.port, log_level=args.log_level,
                            timeout_keep_alive=5, ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile,
                            ssl_ca_certs=args.ssl_ca_certs, root_path=args.root_path or "")
    server = GracefulServer(config, engine, app.state.server_state, args.shutdown_timeout)
    freeze_gc_heap("API server")
    try:
        run_event_loop(server.serve(sockets=[sock]))
    finally:
        engine.shutdown()
        sock.close()
    if server.exit_code:
        sys.exit(server.exit_code)


if __name__ == "__main__":
    main()
