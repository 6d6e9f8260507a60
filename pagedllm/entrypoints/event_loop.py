"""The servers' event loop: uvloop where it is installed (a default dependency on Linux and macOS, as in vLLM).

Every streamed chunk passes through the event loop and a socket transport; uvloop does both in C. On the 2-core CPU
VM (benchmarks/serve_frontend_cost.py, 100 streams) it cut the API server's CPU per chunk (docs/perf.md, serving).
``PAGEDLLM_EVENT_LOOP=asyncio`` forces the standard loop (to compare, or to work around a uvloop problem).
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, Coroutine


def event_loop_name() -> str:
    if os.environ.get("PAGEDLLM_EVENT_LOOP", "auto").strip().lower() == "asyncio":
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
