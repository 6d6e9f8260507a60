"""POST /generate, vLLM's demo-server route, shared by both of our servers (the legacy ``api_server`` and the
OpenAI-compatible one, where vLLM answers 404 but tutorials still post to it).

Body ``{"prompt": str | list[int], "stream": false, ...any SamplingParams field}`` -> ``{"text": [prompt + output, ...]}``
(one entry per completion, ``n`` of them); with ``"stream": true`` the same object is sent after every step as
newline-delimited JSON (cumulative text, not SSE). A client that disconnects has its request aborted.
"""
from __future__ import annotations

import json
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pagedllm.engine.async_engine import AsyncLLMEngine
from pagedllm.entrypoints.openai.protocol import random_uuid
from pagedllm.entrypoints.openai.serving_engine import error_body, error_response, guess_param, until_disconnected
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

GENERATE_PATH = "/generate"


def add_generate_route(app: FastAPI, engine: AsyncLLMEngine) -> None:
    """Mount POST /generate on ``app``, answering from ``engine``."""

    @app.post(GENERATE_PATH)
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
