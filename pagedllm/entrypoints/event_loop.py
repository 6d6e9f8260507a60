"""The servers' event loop and HTTP parser, as uvicorn would pick them: uvloop and httptools where installed (both are
dependencies, as in vLLM's install), asyncio and h11 otherwise. Our ``asyncio.run`` had bypassed uvicorn's own loop
choice. Together they take 9% off the API server's CPU per streamed token on the 2-core VM (docs/perf.md, session 35);
uvloop alone showed no GPU throughput change (session 4). ``PAGEDLLM_EVENT_LOOP=asyncio`` forces the standard loop.
"""
from __future__ import annotations

import asyncio
import importlib.util
from typing import Any, Coroutine

from pagedllm import envs


def event_loop_name() -> str:
    if envs.PAGEDLLM_EVENT_LOOP == "asyncio":
        return "asyncio"
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def http_parser_name() -> str:
    """What uvicorn's ``http="auto"`` resolves to."""
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def run_event_loop(main: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run(main)`` on the loop ``event_loop_name()`` names."""
    if event_loop_name() == "uvloop":
        import uvloop
        return uvloop.run(main)
    return asyncio.run(main)
