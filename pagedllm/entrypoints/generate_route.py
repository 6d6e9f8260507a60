"""POST /generate, vLLM's demo-server route, shared by both of our servers (the legacy ``api_server`` and the
OpenAI-compatible one, where vLLM answers 404 but tutorials still post to it).

Body ``{"prompt": str | list[int], "stream": false, ...any SamplingParams field}`` -> ``{"text": [prompt + output, ...]}``
(one entry per completion, ``n`` of them); with ``"stream": true`` the same object is sent after every step as
newline-delimited JSON (cumulative text, not SSE). A client that disconnects has its request aborted.
"""
from __future__ import annotations

import dataclasses
import json
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pagedllm.engine.async_engine import AsyncLLMEngine
from pagedllm.entrypoints.openai.protocol import random_uuid
from pagedllm.entrypoints.openai.serving_engine import error_body, error_response, guess_param, until_disconnected
from pagedllm.sampling_params import MAX_N, RequestOutputKind, SamplingParams

GENERATE_PATH = "/generate"
# The fields a /generate body may carry besides prompt and stream (SamplingParams' public ones).
SAMPLING_PARAMS_FIELDS = {f.name for f in dataclasses.fields(SamplingParams) if not f.name.startswith("_")}


def add_generate_route(app: FastAPI, engine: AsyncLLMEngine, max_n: int = MAX_N) -> None:
    """Mount POST /generate on ``app``, answering from ``engine`` (at most ``max_n`` completions per request)."""

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
        stream = body.pop("stream", False)
        if not isinstance(stream, bool):
            return JSONResponse(error_body(f"stream must be true or false, got {stream!r:.50}.", param="stream"),
                                status_code=400)
        unknown = sorted(set(body) - SAMPLING_PARAMS_FIELDS)
        if unknown:
            return JSONResponse(error_body(f"Unknown field {unknown[0]!r:.80} in the body: /generate takes 'prompt', "
                                           f"'stream' and SamplingParams fields.", param=unknown[0][:80]),
                                status_code=400)
        if isinstance(body.get("n"), int) and body["n"] > max_n:
            return JSONResponse(error_body(f"n must be at most {max_n} (this server's --max-n), got {body['n']}.",
                                           param="n"), status_code=400)
        try:
            params = SamplingParams(**body)
        except (TypeError, ValueError) as e:
            return JSONResponse(error_body(str(e), param=guess_param(str(e))), status_code=400)
        params.output_kind = RequestOutputKind.DELTA
        engine_prompt = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": prompt}
        try:
            results = await engine.add_request(random_uuid(), engine_prompt, params)
        except ValueError as e:   # the prompt's checks, or the params' checks against the model
            return JSONResponse(error_body(str(e), param=guess_param(str(e)) or "prompt"), status_code=400)
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
