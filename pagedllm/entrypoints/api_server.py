"""The legacy demo server (vLLM's ``vllm.entrypoints.api_server``): GET /health and POST /generate.

``python -m pagedllm.entrypoints.api_server --model MODEL [--host H] [--port 8000] [engine flags]``

POST /generate ``{"prompt": str, "stream": false, ...any SamplingParams field}`` -> ``{"text": [prompt + output, ...]}``
(one entry per completion); with ``"stream": true`` the same object is sent after every step as newline-delimited
JSON (cumulative text, not SSE). A client that disconnects has its request aborted.
"""
from __future__ import annotations

import argparse
import json
import logging
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

import pagedllm
from pagedllm.config import EngineArgs, FlexibleArgumentParser, verify_engine_args
from pagedllm.engine.async_engine import AsyncLLMEngine
from pagedllm.entrypoints.event_loop import run_event_loop
from pagedllm.entrypoints.openai.protocol import random_uuid
from pagedllm.entrypoints.openai.serving_engine import error_body, error_response, guess_param, until_disconnected
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

logger = logging.getLogger("pagedllm.entrypoints.api_server")


def build_app(engine: AsyncLLMEngine, root_path: str = "") -> FastAPI:
    app = FastAPI(title="pagedllm demo API server", version=pagedllm.__version__, root_path=root_path)
    app.state.engine = engine

    @app.get("/health")
    async def health() -> Response:
        try:
            await engine.check_health()
        except Exception:
            return Response(status_code=500)
        return Response(status_code=200)

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        try:
            body = await request.json()
        except Exception as e:
            return JSONResponse(error_body(f"Invalid JSON body: {e}"), status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), (str, list)):
            return JSONResponse(error_body("The body needs a 'prompt' (a string or token ids).", param="prompt"),
                                status_code=400)
        prompt = body.pop("prompt")
        stream = bool(body.pop("stream", False))
        try:
            params = SamplingParams(**body)
        except TypeError as e:   # an unknown field
            return JSONResponse(error_body(str(e)), status_code=400)
        except ValueError as e:
            return JSONResponse(error_body(str(e), param=guess_param(str(e))), status_code=400)
        params.output_kind = RequestOutputKind.DELTA
        engine_prompt = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": prompt}
        try:
            results = await engine.add_request(random_uuid(), engine_prompt, params)
        except Exception as e:
            return error_response(e)
        prefix = prompt if isinstance(prompt, str) else ""
        texts = [prefix] * params.n

        async def stream_results() -> AsyncIterator[bytes]:
            try:
                async for out in results:
                    for c in out.outputs:
                        texts[c.index] += c.text
                    yield (json.dumps({"text": texts}) + "\n").encode()
            finally:
                results.abort()

        if stream:
            return StreamingResponse(stream_results(), media_type="application/x-ndjson")

        async def gather() -> JSONResponse:
            try:
                async for out in results:
                    for c in out.outputs:
                        texts[c.index] += c.text
            finally:
                results.abort()
            return JSONResponse({"text": texts})

        try:
            response = await until_disconnected(gather(), request)
        except Exception as e:
            return error_response(e)
        return response if response is not None else Response(status_code=499)

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
    EngineArgs.add_cli_args(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from pagedllm.entrypoints.openai.api_server import configure_logging
    from pagedllm.metrics import EngineMetrics

    args = make_arg_parser().parse_args(argv)
    configure_logging()
    engine_args = EngineArgs.from_cli_args(args)
    verify_engine_args(engine_args)
    engine_args.usage_context = "openai_api_server"
    metrics = EngineMetrics(engine_args.model, log_stats=not args.disable_log_stats)
    engine = AsyncLLMEngine.from_engine_args(engine_args, log_requests=False, metrics=metrics)
    app = build_app(engine, args.root_path or "")
    config = uvicorn.Config(app, host=args.host or "0.0.0.0", port=args.port, log_level=args.log_level,
                            timeout_keep_alive=5, ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile,
                            ssl_ca_certs=args.ssl_ca_certs, root_path=args.root_path or "")
    try:
        run_event_loop(uvicorn.Server(config).serve())
    finally:
        engine.shutdown()


if __name__ == "__main__":
    main()
