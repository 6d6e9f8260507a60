"""Streaming clients for OpenAI-compatible endpoints, timing each request as vLLM's benchmark_serving does.

TTFT = send → first SSE event that carries a choice; ITL = gaps between successive such events (one event may hold
several tokens); latency (E2EL) = send → last such event. ``output_tokens`` comes from the final usage chunk
(``stream_options.include_usage``) when the server sends one.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from pagedllm import envs

if TYPE_CHECKING:   # imported lazily so that building the CLI parser does not need aiohttp
    import aiohttp

REQUEST_TIMEOUT_S = 6 * 60 * 60


@dataclass
class RequestFuncInput:
    api_url: str
    model: str
    prompt: str | list[int]
    prompt_len: int
    output_len: int
    ignore_eos: bool = False
    logprobs: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)   # temperature / top_p / top_k
    extra_body: dict[str, Any] | None = None
    extra_headers: dict[str, str] | None = None               # --header KEY=VALUE
    request_id: str | None = None                             # sent as x-request-id (--request-id-prefix + index)


@dataclass
class RequestFuncOutput:
    success: bool = False
    generated_text: str = ""
    output_tokens: int = 0        # from usage; 0 = unknown (the caller re-tokenizes generated_text)
    num_chunks: int = 0
    ttft: float = 0.0             # seconds
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0          # seconds, send -> last chunk with a choice
    start_time: float = 0.0       # time.perf_counter() at send
    client_queue_time: float = 0.0   # seconds between the request's arrival and its send (--max-concurrency waits)
    prompt_len: int = 0
    error: str = ""


def _headers(request: RequestFuncInput | None = None) -> dict[str, str]:
    """Content type and OPENAI_API_KEY's bearer token, then the request's --header pairs, then its x-request-id (the
    order vLLM applies them in)."""
    headers = {"Content-Type": "application/json"}
    api_key = envs.OPENAI_API_KEY
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if request is not None:
        headers.update(request.extra_headers or {})
        if request.request_id:
            headers["x-request-id"] = request.request_id
    return headers


async def _iter_sse_events(response: aiohttp.ClientResponse):
    """Yield ``(perf_counter at arrival, payload str)`` for each ``data:`` event of an SSE stream."""
    buffer = b""
    async for raw in response.content.iter_any():
        now = time.perf_counter()
        buffer += raw.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                line = line.strip()
                if line.startswith(b"data:"):
                    yield now, line[5:].strip().decode("utf-8")
    tail = buffer.strip()
    if tail.startswith(b"data:"):
        yield time.perf_counter(), tail[5:].strip().decode("utf-8")


async def _stream(request: RequestFuncInput, session: aiohttp.ClientSession, payload: dict[str, Any],
                  text_of: Callable[[dict], str | None]) -> RequestFuncOutput:
    if request.ignore_eos:
        payload["ignore_eos"] = True
    payload.update(request.sampling)
    if request.extra_body:
        payload.update(request.extra_body)
    output = RequestFuncOutput(prompt_len=request.prompt_len)
    last_chunk_time = 0.0
    start = time.perf_counter()
    output.start_time = start
    try:
        async with session.post(request.api_url, json=payload, headers=_headers(request)) as response:
            if response.status != 200:
                body = await response.text()
                output.error = f"HTTP {response.status} {response.reason}: {body[:500]}"
                return output
            async for now, data in _iter_sse_events(response):
                if data == "[DONE]":
                    continue
                chunk = json.loads(data)
                if "error" in chunk and not chunk.get("choices"):
                    output.error = json.dumps(chunk["error"])[:500]
                    return output
                if chunk.get("choices"):
                    if output.num_chunks == 0:
                        output.ttft = now - start
                    else:
                        output.itl.append(now - last_chunk_time)
                    output.num_chunks += 1
                    last_chunk_time = now
                    output.generated_text += text_of(chunk["choices"][0]) or ""
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    output.output_tokens = int(usage["completion_tokens"])
        if output.num_chunks == 0:
            output.error = "Never received a valid chunk to calculate TTFT."
        else:
            output.success = True
            output.latency = last_chunk_time - start
    except Exception:
        output.success = False
        output.error = "".join(traceback.format_exception(*sys.exc_info()))[-2000:]
    return output


async def openai_completions(request: RequestFuncInput, session: aiohttp.ClientSession) -> RequestFuncOutput:
    if not request.api_url.endswith(("completions", "profile")):
        raise ValueError(f"OpenAI Completions API URL must end with 'completions' or 'profile', got "
                         f"{request.api_url!r}.")
    payload: dict[str, Any] = {
        "model": request.model,
        "prompt": request.prompt,
        "max_tokens": request.output_len,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.logprobs is not None:
        payload["logprobs"] = request.logprobs
    return await _stream(request, session, payload, lambda choice: choice.get("text"))


async def openai_chat_completions(request: RequestFuncInput, session: aiohttp.ClientSession) -> RequestFuncOutput:
    if not request.api_url.endswith(("chat/completions", "profile")):
        raise ValueError(f"OpenAI Chat Completions API URL must end with 'chat/completions', got "
                         f"{request.api_url!r}.")
    if not isinstance(request.prompt, str):
        raise ValueError("Chat requests need a text prompt.")
    payload: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": "user", "content": request.prompt}],
        "max_completion_tokens": request.output_len,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.logprobs is not None:
        payload["logprobs"] = True
        payload["top_logprobs"] = request.logprobs
    return await _stream(request, session, payload, lambda choice: (choice.get("delta") or {}).get("content"))


async def openai_embeddings(request: RequestFuncInput, session: aiohttp.ClientSession) -> RequestFuncOutput:
    """One /v1/embeddings request (not streamed): latency = send -> whole response (TTFT is the same); the prompt
    length comes from the response's usage when it has one."""
    if not request.api_url.endswith("embeddings"):
        raise ValueError(f"OpenAI Embeddings API URL must end with 'embeddings', got {request.api_url!r}.")
    payload: dict[str, Any] = {"model": request.model, "input": request.prompt}
    if request.extra_body:
        payload.update(request.extra_body)
    output = RequestFuncOutput(prompt_len=request.prompt_len)
    start = time.perf_counter()
    output.start_time = start
    try:
        async with session.post(request.api_url, json=payload, headers=_headers(request)) as response:
            body = await response.text()
            if response.status != 200:
                output.error = f"HTTP {response.status} {response.reason}: {body[:500]}"
                return output
        output.latency = output.ttft = time.perf_counter() - start
        usage = json.loads(body).get("usage") or {}
        if usage.get("prompt_tokens") is not None:
            output.prompt_len = int(usage["prompt_tokens"])
        output.success = True
    except Exception:
        output.error = "".join(traceback.format_exception(*sys.exc_info()))[-2000:]
    return output


RequestFunc = Callable[[RequestFuncInput, "aiohttp.ClientSession"], Awaitable[RequestFuncOutput]]

# backend -> (request function, default endpoint)
BACKENDS: dict[str, tuple[RequestFunc, str]] = {
    "openai": (openai_completions, "/v1/completions"),
    "vllm": (openai_completions, "/v1/completions"),
    "pagedllm": (openai_completions, "/v1/completions"),
    "openai-chat": (openai_chat_completions, "/v1/chat/completions"),
    "openai-embeddings": (openai_embeddings, "/v1/embeddings"),
}
CHAT_BACKENDS = ("openai-chat",)
POOLING_BACKENDS = ("openai-embeddings",)     # one vector per request: E2EL only, no output tokens
