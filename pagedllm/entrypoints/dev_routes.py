"""vLLM's profiling endpoints, mounted when PAGEDLLM_TORCH_PROFILER_DIR (or vLLM's VLLM_TORCH_PROFILER_DIR) is set:
``POST /start_profile`` and ``POST /stop_profile`` (which writes each worker's trace into that folder).

vLLM's development endpoints, mounted only when PAGEDLLM_SERVER_DEV_MODE=1 (or vLLM's VLLM_SERVER_DEV_MODE=1), as
vLLM mounts them: they let anyone who reaches the server free its memory or run worker methods, so never expose them
to users.

- ``POST /sleep?level=1&mode=abort``: free the weights' and the KV cache's device memory (needs --enable-sleep-mode);
  requests that arrive while the engine sleeps wait and run after wake-up.
- ``POST /wake_up`` (``?tags=weights&tags=kv_cache``: only those), ``GET /is_sleeping`` -> ``{"is_sleeping": bool}``.
- ``POST /reset_prefix_cache`` (``?reset_running_requests=true``: requests running are queued again first;
  ``?reset_external=true``: the CPU tier of --kv-offloading-size too, which a plain reset leaves, as vLLM's).
- ``POST /reset_mm_cache``, ``POST /reset_encoder_cache``: 200, as vLLM's (pagedllm keeps neither cache across
  requests: nothing to clear).
- ``POST /pause?mode=abort&clear_cache=true`` -> ``{"status": "paused"}`` (AsyncLLMEngine.pause_generation: modes
  abort / wait / keep; a bad one is a 400 ``{"error": ...}``), ``POST /resume`` -> ``{"status": "resumed"}``,
  ``GET /is_paused`` -> ``{"is_paused": bool}``: vLLM's RL weight-sync routes.
- ``POST /collective_rpc`` ``{"method": name, "args": [...], "kwargs": {...}, "timeout": s}`` ->
  ``{"results": [...]}`` (each worker's result; anything but a dict, list or null as its string).
"""
from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from pagedllm import envs
from pagedllm.config import profiler_settings
from pagedllm.engine.async_engine import AsyncLLMEngine
from pagedllm.entrypoints.server_guards import json_error

logger = logging.getLogger(__name__)


def add_dev_routes(app: FastAPI, engine: AsyncLLMEngine) -> None:
    from pagedllm.entrypoints.openai.serving_engine import error_response
    profiler = profiler_settings(engine.config.args.profiler_config)
    if profiler is not None:
        logger.warning("Torch profiler is enabled in the API server (traces go to %s). This should ONLY be used for "
                       "local development!", profiler.torch_profiler_dir)

        @app.post("/start_profile")
        async def start_profile() -> Response:
            logger.info("Starting profiler...")
            try:
                await engine.start_profile()
            except Exception as e:   # noqa: BLE001 - answered as OpenAI-style error JSON
                return error_response(e)
            logger.info("Profiler started.")
            return Response(status_code=200)

        @app.post("/stop_profile")
        async def stop_profile() -> Response:
            logger.info("Stopping profiler...")
            try:
                await engine.stop_profile()
            except Exception as e:   # noqa: BLE001
                return error_response(e)
            logger.info("Profiler stopped.")
            return Response(status_code=200)
    if not envs.server_dev_mode():
        return
    logger.warning("PAGEDLLM_SERVER_DEV_MODE is on: POST /sleep, /wake_up, /collective_rpc, /reset_prefix_cache, "
                   "/reset_mm_cache, /reset_encoder_cache, /pause and /resume are mounted. This should ONLY be used "
                   "for local development!")

    @app.post("/sleep")
    async def sleep(raw_request: Request) -> Response:
        try:
            level = _int_param(raw_request, "level", "1")
            mode = raw_request.query_params.get("mode", "abort")
            logger.info("Putting the engine to sleep (level %d, mode %s).", level, mode)
            await engine.sleep(level, mode)
        except Exception as e:   # noqa: BLE001 - answered as OpenAI-style error JSON
            return error_response(e)
        return Response(status_code=200)

    @app.post("/wake_up")
    async def wake_up(raw_request: Request) -> Response:
        tags = raw_request.query_params.getlist("tags") or None
        logger.info("wake up the engine with tags: %s", tags)
        try:
            await engine.wake_up(tags)
        except Exception as e:   # noqa: BLE001
            return error_response(e)
        return Response(status_code=200)

    @app.get("/is_sleeping")
    async def is_sleeping() -> JSONResponse:
        return JSONResponse({"is_sleeping": await engine.is_sleeping()})

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache(reset_running_requests: bool = False, reset_external: bool = False) -> Response:
        logger.info("Resetting prefix cache...")
        await engine.reset_prefix_cache(reset_running_requests, reset_external)
        return Response(status_code=200)

    @app.post("/reset_mm_cache")
    async def reset_mm_cache() -> Response:
        logger.info("Resetting multi-modal cache...")
        await engine.reset_mm_cache()
        return Response(status_code=200)

    @app.post("/reset_encoder_cache")
    async def reset_encoder_cache() -> Response:
        logger.info("Resetting encoder cache...")
        await engine.reset_encoder_cache()
        return Response(status_code=200)


    @app.post("/pause")
    async def pause(mode: str = "abort", wait_for_inflight_requests: bool = False,
                    clear_cache: bool = True) -> JSONResponse:
        try:
            await engine.pause_generation(mode=mode, wait_for_inflight_requests=wait_for_inflight_requests,
                                          clear_cache=clear_cache)
        except ValueError as e:      # vLLM's bodies on these routes are {"error": message}
            return JSONResponse({"error": str(e)}, status_code=400)
        return JSONResponse({"status": "paused"})

    @app.post("/resume")
    async def resume() -> JSONResponse:
        await engine.resume_generation()
        return JSONResponse({"status": "resumed"})

    @app.get("/is_paused")
    async def is_paused() -> JSONResponse:
        return JSONResponse({"is_paused": await engine.is_paused()})

    @app.post("/collective_rpc")
    async def collective_rpc(raw_request: Request) -> Response:
        try:
            body = await raw_request.json()
        except json.JSONDecodeError as e:
            return json_error(f"JSON decode error: {e}", 400)
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            return json_error("Missing 'method' in request body", 400, "method")
        try:
            results = await engine.collective_rpc(body["method"], body.get("timeout"), tuple(body.get("args", [])),
                                                  body.get("kwargs") or {})
        except Exception as e:   # noqa: BLE001
            return error_response(e)
        return JSONResponse({"results": [r if r is None or isinstance(r, (dict, list)) else str(r)
                                         for r in results]})


def _int_param(request: Request, name: str, default: str) -> int:
    value = request.query_params.get(name, default)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}.") from None



