"""Importable request functions of the serving benchmark, under vLLM's names (vLLM's
benchmarks/backend_request_func.py): ``RequestFuncInput``, ``RequestFuncOutput``, ``ASYNC_REQUEST_FUNCS``,
``async_request_openai_completions``, ``async_request_openai_chat_completions``, ``async_request_openai_embeddings``,
``OPENAI_COMPATIBLE_BACKENDS``.

The requests themselves are pagedllm.bench.request_funcs' (what ``pagedllm bench serve`` sends). vLLM's functions take
``(request_func_input, pbar=None)`` and open their own HTTP session; these do too, or reuse ``session=`` when given.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # import from a checkout

from pagedllm.bench.request_funcs import (REQUEST_TIMEOUT_S, RequestFuncInput, RequestFuncOutput,  # noqa: E402
                                          openai_chat_completions, openai_completions, openai_embeddings)

AIOHTTP_TIMEOUT_S = REQUEST_TIMEOUT_S


async def _with_session(request_func, request_func_input: RequestFuncInput, pbar=None,
                        session=None) -> RequestFuncOutput:
    if session is not None:
        output = await request_func(request_func_input, session)
    else:
        import aiohttp
        timeout = aiohttp.ClientTimeout(total=AIOHTTP_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=True) as own_session:
            output = await request_func(request_func_input, own_session)
    if pbar is not None:
        pbar.update(1)
    return output


async def async_request_openai_completions(request_func_input: RequestFuncInput, pbar=None,
                                           session=None) -> RequestFuncOutput:
    """Stream one /v1/completions request (``api_url`` ends with ``completions``) and time it."""
    return await _with_session(openai_completions, request_func_input, pbar, session)


async def async_request_openai_chat_completions(request_func_input: RequestFuncInput, pbar=None,
                                                session=None) -> RequestFuncOutput:
    """Stream one /v1/chat/completions request (``api_url`` ends with ``chat/completions``) and time it."""
    return await _with_session(openai_chat_completions, request_func_input, pbar, session)


async def async_request_openai_embeddings(request_func_input: RequestFuncInput, pbar=None,
                                          session=None) -> RequestFuncOutput:
    """One /v1/embeddings request (``api_url`` ends with ``embeddings``), timed end to end."""
    return await _with_session(openai_embeddings, request_func_input, pbar, session)


# Only the OpenAI-compatible backends: the others (tgi, deepspeed-mii, tensorrt-llm, ...) speak their own protocols.
ASYNC_REQUEST_FUNCS = {
    "vllm": async_request_openai_completions,
    "pagedllm": async_request_openai_completions,
    "openai": async_request_openai_completions,
    "openai-chat": async_request_openai_chat_completions,
    "openai-embeddings": async_request_openai_embeddings,
}

OPENAI_COMPATIBLE_BACKENDS = [name for name, func in ASYNC_REQUEST_FUNCS.items()
                              if func in (async_request_openai_completions, async_request_openai_chat_completions)]

__all__ = ["RequestFuncInput", "RequestFuncOutput", "ASYNC_REQUEST_FUNCS", "OPENAI_COMPATIBLE_BACKENDS",
           "async_request_openai_completions", "async_request_openai_chat_completions",
           "async_request_openai_embeddings"]
