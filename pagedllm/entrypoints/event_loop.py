"""The servers' event loop: uvloop where it is installed, asyncio's otherwise (what uvicorn itself would pick; our
``asyncio.run`` had bypassed that choice). uvloop is not a dependency: on the served Qwen2.5-7B run (H200,
docs/perf.md) the API thread used ~23% of a core with either loop, and the CPU-VM front-end benchmark showed no
difference beyond its noise. ``PAGEDLLM_EVENT_LOOP=asyncio`` forces the standard loop.
"""
from __future__ import annotations

import asyncio
from typing import Any, Coroutine

from pagedllm import envs


def event_loop_name() -> str:
    if envs.PAGEDLLM_EVENT_LOOP == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_event_loop(main: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run(main)`` on the loop ``event_loop_name()`` names."""
    if event_loop_name() == "uvloop":
        import uvloop
        return uvloop.run(main)
    return asyncio.run(main)
