"""How ``pagedllm serve`` stops: on SIGTERM / SIGINT, and when its engine core dies.

SIGTERM or SIGINT: new requests get a 503 (OpenAI's error shape; the listening socket stays open so that clients are
told, not refused), in-flight requests may finish for up to ``--shutdown-timeout`` seconds (vLLM's flag; 0, the
default, aborts them at once), then the rest are aborted (each gets a 503 error: a JSON body, or an error event in its
stream), uvicorn closes the connections (at most ``CONNECTION_CLOSE_TIMEOUT_S`` for a client that does not read), the
engine core is shut down and the process exits 0. A second signal skips the wait.

Engine core died (killed, or a step failed): in-flight requests get the error at once (503), ``/health`` and new
requests answer 503 for ``DEAD_ENGINE_GRACE_S`` (so that a load balancer and the clients see why), then the server
exits with code 1 so that a supervisor restarts it (vLLM also shuts its API server down when the engine dies).
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import uvicorn

from pagedllm.engine.async_engine import AsyncLLMEngine, EngineShutdownError
from pagedllm.entrypoints.server_guards import json_error

logger = logging.getLogger("pagedllm.entrypoints.shutdown")

CONNECTION_CLOSE_TIMEOUT_S = 5.0     # uvicorn's timeout_graceful_shutdown, after the requests were ended
DEAD_ENGINE_GRACE_S = 3.0
EXIT_ENGINE_DEAD = 1
# Routes still answered while stopping (scrapers read the final counters); every other request gets the 503.
_OPEN_WHILE_STOPPING = ("/metrics", "/version")


class ServerState:
    """What the 503 guard reads: ``stopping`` is None while serving, else the message new requests get."""

    def __init__(self) -> None:
        self.stopping: str | None = None


class StoppingGuard:
    """ASGI middleware: while the server stops (or its engine is dead), every new request but /metrics and /version
    gets a 503 in OpenAI's error shape; /health too, so that load balancers take the server out."""

    def __init__(self, app: Any, state: ServerState, engine: AsyncLLMEngine):
        self.app = app
        self.state = state
        self.engine = engine

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path", "") not in _OPEN_WHILE_STOPPING:
            message = self.state.stopping
            if message is None and self.engine.errored:
                message = dead_engine_message(self.engine)
            if message is not None:
                await json_error(message, 503)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def dead_engine_message(engine: AsyncLLMEngine) -> str:
    return (f"The engine is dead ({engine.dead_error!r}); the server is shutting down and must be restarted.")


class GracefulServer(uvicorn.Server):
    """uvicorn's server with the shutdown above. ``exit_code`` is 0 after a signal, 1 after the engine died."""

    def __init__(self, config: uvicorn.Config, engine: AsyncLLMEngine, state: ServerState,
                 shutdown_timeout_s: float):
        config.timeout_graceful_shutdown = CONNECTION_CLOSE_TIMEOUT_S
        super().__init__(config)
        self.engine = engine
        self.state = state
        self.shutdown_timeout_s = shutdown_timeout_s
        self.exit_code = 0
        self._signals: list[int] = []
        self._stop_task: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Not uvicorn's: it would re-raise the signal after shutting down (exit status -15, not 0). Runs in a signal
        # handler: only record; on_tick (every 0.1 s) acts.
        self._signals.append(sig)
        if len(self._signals) > 1:
            self.shutdown_timeout_s = 0.0           # a second signal: stop waiting for the requests
            if sig == signal.SIGINT and self.should_exit:
                self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._stop_task is None:
            if self._signals:
                name = signal.Signals(self._signals[0]).name
                self._stop_task = asyncio.ensure_future(self._drain(name))
            elif self.engine.errored:
                self._stop_task = asyncio.ensure_future(self._engine_died())
        return await super().on_tick(counter)

    async def _drain(self, signal_name: str) -> None:
        self.state.stopping = "The server is shutting down: it accepts no new requests."
        in_flight = self.engine.num_in_flight()
        logger.info("%s received: accepting no new requests; %d request(s) in flight, waiting up to %.1f s "
                    "(--shutdown-timeout) for them to finish.", signal_name, in_flight, self.shutdown_timeout_s)
        start = time.monotonic()
        while self.engine.num_in_flight() and time.monotonic() - start < self.shutdown_timeout_s:
            await asyncio.sleep(0.05)
        left = self.engine.num_in_flight()
        if left:
            self.engine.abort_all(EngineShutdownError(
                f"The server is shutting down: the request was aborted after the {self.shutdown_timeout_s:g} s "
                f"shutdown timeout (--shutdown-timeout)."))
            logger.warning("Aborted %d request(s) still in flight after %.1f s.", left, time.monotonic() - start)
        else:
            logger.info("No request in flight after %.1f s; shutting down.", time.monotonic() - start)
        await asyncio.sleep(0.1)        # let the aborted handlers write their error responses
        self.should_exit = True

    async def _engine_died(self) -> None:
        message = dead_engine_message(self.engine)
        self.state.stopping = message
        logger.error("%s New requests get 503; exiting in %.0f s.", message, DEAD_ENGINE_GRACE_S)
        await asyncio.sleep(DEAD_ENGINE_GRACE_S)
        self.exit_code = EXIT_ENGINE_DEAD
        self.should_exit = True
