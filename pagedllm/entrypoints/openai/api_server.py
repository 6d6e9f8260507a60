"""The OpenAI-compatible HTTP server: FastAPI routes over one AsyncLLMEngine.

``pagedllm serve MODEL [flags]`` or ``python -m pagedllm.entrypoints.openai.api_server --model MODEL [flags]``.
Routes: /v1/models, /v1/completions, /v1/chat/completions (/v1/chat/completions/batch: several conversations in one
request), /v1/responses (text in, text out), /inference/v1/generate (token ids in and out), /tokenize, /detokenize,
/health, /ping, /version, /metrics, /load, /v1/embeddings, /pooling, /classify, /score (/v1/score) and /rerank
(/v1/rerank, /v2/rerank) for pooling (embedding and sequence-classification) models,
and the demo server's POST /generate (generate_route.py), which vLLM's OpenAI server lacks but tutorials post to.
"""
from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import sys
from contextlib import asynccontextmanager
from typing import Any, Union

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

import pagedllm
from pagedllm import envs
from pagedllm.config import FlexibleArgumentParser, reasoning_parser_name, speculative_settings
from pagedllm.engine.async_engine import AsyncLLMEngine
from pagedllm.entrypoints.event_loop import event_loop_name, http_parser_name, run_event_loop
from pagedllm.entrypoints.dev_routes import add_dev_routes
from pagedllm.entrypoints.generate_route import add_generate_route
from pagedllm.entrypoints.listen_socket import bind_listen_socket, bound_port
from pagedllm.entrypoints.openai.cli_args import (DEFAULT_MAX_REQUEST_BODY_BYTES, finalize_args, make_serve_parser,
                                                  serve_engine_args)
from pagedllm.entrypoints.openai.protocol import (BatchChatCompletionRequest, ChatCompletionRequest,
                                                  ClassificationRequest, CompletionRequest, DetokenizeRequest,
                                                  EmbeddingRequest, GenerateTokensRequest, LoadLoRAAdapterRequest,
                                                  ModelList, PoolingRequest, RequestError, RerankRequest,
                                                  ResponsesRequest, SCORE_PAIR_NAMES, ScoreRequest, TokenizeChatRequest,
                                                  TokenizeCompletionRequest, UnloadLoRAAdapterRequest)
from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat, conversation
from pagedllm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from pagedllm.entrypoints.openai.serving_engine import OpenAIServing, error_response
from pagedllm.entrypoints.openai.serving_models import ServingModels
from pagedllm.entrypoints.openai.serving_pooling import OpenAIServingPooling
from pagedllm.entrypoints.openai.serving_responses import OpenAIServingResponses
from pagedllm.entrypoints.openai.serving_tokens import OpenAIServingTokens
from pagedllm.entrypoints.openai.tool_parsers import functions_by_name, template_tools
from pagedllm.entrypoints.server_guards import (APIKeyMiddleware,  # noqa: F401
                                                RequestIdHeaderMiddleware, ServerLoadMiddleware, add_error_handlers,
                                                add_guards, json_error, validation_error_response)
from pagedllm.entrypoints.shutdown import GracefulServer, ServerState, StoppingGuard
from pagedllm.gc_heap import freeze_gc_heap
from pagedllm.metrics import EngineMetrics
from pagedllm.reasoning_parsers import get_reasoning_parser
from pagedllm.sampling_params import MAX_N
from pagedllm.utils.import_path import import_by_path

logger = logging.getLogger("pagedllm.entrypoints.openai.api_server")


# ---- logging --------------------------------------------------------------------------------------------------------
def configure_logging(level: int = logging.INFO) -> None:
    """vLLM-style lines for pagedllm's loggers: ``INFO 05-01 12:00:00 [api_server.py:42] message``."""
    root = logging.getLogger("pagedllm")
    if any(getattr(h, "_pagedllm", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s",
                                           datefmt="%m-%d %H:%M:%S"))
    handler._pagedllm = True   # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


# ---- the app ---------------------------------------------------------------------------------------------------------
def _load_static_loras(models: ServingModels, modules: list[dict]) -> None:
    """--lora-modules: every adapter loaded and checked before the server starts (a bad one fails start-up, as
    vLLM's)."""
    async def load_all() -> None:
        for module in modules:
            await models.load_lora_adapter(module["name"], module["path"], module.get("base_model_name"))
    try:
        asyncio.run(load_all())
    except RequestError as e:
        raise ValueError(f"--lora-modules: {e.message}") from None


def build_engine(args: argparse.Namespace, prestarted=None,
                 while_building=None) -> tuple[AsyncLLMEngine, EngineMetrics, list[str]]:
    """``prestarted``: the engine process that `pagedllm serve` started from its command line
    (entrypoints/early_engine.py), adopted if it parsed the same engine arguments. ``while_building``: as
    AsyncLLMEngine's."""
    engine_args, names, engine_process = serve_engine_args(args)
    spec = engine_args.speculative_config
    metrics = EngineMetrics(names[0], log_stats=not args.disable_log_stats,
                            max_loras=engine_args.max_loras if engine_args.enable_lora else 0,
                            num_speculative_tokens=speculative_settings(spec).num_speculative_tokens if spec else 0)
    engine = AsyncLLMEngine.from_engine_args(engine_args, log_requests=args.log_requests, metrics=metrics,
                                             engine_process=engine_process, prestarted=prestarted,
                                             while_building=while_building)
    return engine, metrics, names


def build_app(args: argparse.Namespace, engine: AsyncLLMEngine, metrics: EngineMetrics | None,
              served_model_names: list[str]) -> FastAPI:
    docs = {} if not getattr(args, "disable_fastapi_docs", False) else {"docs_url": None, "redoc_url": None,
                                                                         "openapi_url": None}
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        # Here as soon as uvicorn has closed the connections (run_server calls it again; it is idempotent).
        engine.shutdown()

    app = FastAPI(title="pagedllm OpenAI-compatible server", version=pagedllm.__version__, lifespan=lifespan, **docs)
    app.root_path = args.root_path or ""     # as vLLM sets it (FastAPI's root_path= argument warns it is deprecated)
    # The engine's input tokenizer: the server tokenizes through the engine's input processor, on its thread.
    common = dict(tokenizer=engine.tokenizer, chat_template=args.chat_template, response_role=args.response_role,
                  log_requests=args.log_requests, max_log_len=args.max_log_len,
                  log_outputs=getattr(args, "enable_log_outputs", False),
                  default_chat_template_kwargs=getattr(args, "default_chat_template_kwargs", None),
                  log_deltas=getattr(args, "enable_log_deltas", True),
                  trust_request_chat_template=getattr(args, "trust_request_chat_template", False),
                  max_n=getattr(args, "max_n", MAX_N),
                  max_prompts_per_request=getattr(args, "max_prompts_per_request", None),
                  enable_prompt_tokens_details=getattr(args, "enable_prompt_tokens_details", False),
                  chat_template_content_format=getattr(args, "chat_template_content_format", "auto"),
                  return_tokens_as_token_ids=getattr(args, "return_tokens_as_token_ids", False),
                  enable_force_include_usage=getattr(args, "enable_force_include_usage", False))
    defaults = engine.input_processor.generation_defaults()
    if defaults:     # vLLM's line: why a request without sampling fields does not get SamplingParams' defaults
        source = engine.config.args.generation_config
        logger.info("Using default sampling params from %s: %s", "model" if source == "auto" else source, defaults)
    completions = OpenAIServingCompletion(engine, served_model_names, **common)
    tool_parser = None
    if getattr(args, "enable_auto_tool_choice", False):
        from pagedllm.entrypoints.openai.tool_parsers import get_tool_parser
        tool_parser = get_tool_parser(args.tool_call_parser)
    reasoning_name = reasoning_parser_name(engine.config.args)      # --reasoning-parser
    chat = OpenAIServingChat(engine, served_model_names, tool_parser=tool_parser,
                             exclude_tools_when_tool_choice_none=getattr(args, "exclude_tools_when_tool_choice_none",
                                                                         False),
                             reasoning_parser=get_reasoning_parser(reasoning_name) if reasoning_name else None,
                             **common)
    responses = OpenAIServingResponses(chat, envs.responses_api_store())
    tokens = OpenAIServingTokens(chat)
    base = OpenAIServing(engine, served_model_names, **common)
    pooling = OpenAIServingPooling(engine, served_model_names, **common)
    is_pooling = engine.config.is_pooling
    # One list of served models (the base names, the LoRA adapters) behind every endpoint.
    models = base.models
    for serving in (completions, chat, pooling):
        serving.models = models
    if getattr(args, "lora_modules", None):
        _load_static_loras(models, args.lora_modules)

    def generative_only(api: str) -> None:
        if is_pooling:
            if engine.config.model.is_token_classifier:
                raise RequestError(f"The model does not support {api} API: it is a pooling (token classification / "
                                   f"reward) model; use /pooling.", "model")
            if engine.config.model.is_classifier:
                raise RequestError(f"The model does not support {api} API: it is a pooling (sequence "
                                   f"classification) model; use /classify, /pooling, /score or /rerank.", "model")
            raise RequestError(f"The model does not support {api} API: it is a pooling (embedding) model; use "
                               f"/v1/embeddings, /pooling, /score or /rerank.", "model")
    app.state.engine = engine
    app.state.metrics = metrics

    add_error_handlers(app)

    @app.get("/health")
    async def health() -> Response:
        try:
            await engine.check_health()
        except Exception as e:
            logger.error("Health check failed: %s", e)
            return Response(status_code=503)
        return Response(status_code=200)

    @app.get("/ping")
    @app.post("/ping")
    async def ping() -> Response:
        return await health()

    app.state.server_load = 0

    @app.get("/load")
    async def load():
        # vLLM's route: requests in flight on the model routes with --enable-server-load-tracking, else 0.
        return {"server_load": app.state.server_load}

    @app.get("/version")
    async def version():
        return {"version": pagedllm.__version__}

    @app.get("/metrics")
    async def metrics_route() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST
        body = metrics.render() if metrics is not None else b""
        return Response(content=body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models():
        return JSONResponse(ModelList(data=models.cards()).model_dump())

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str):
        card = next((c for c in models.cards() if c.id == model_id), None)
        if card is None:
            raise RequestError(f"The model `{model_id}` does not exist.", "model", 404, "NotFoundError")
        return JSONResponse(card.model_dump())

    if envs.runtime_lora_updating():
        # vLLM's runtime adapter routes, only with VLLM_ALLOW_RUNTIME_LORA_UPDATING (absent otherwise: 404). Without
        # --enable-lora they say so (a bare "not a route" 404 left the flag to guess).
        logger.warning("LoRA dynamic loading & unloading is enabled in the API server. This should ONLY be used "
                       "for local development!")

        def lora_enabled() -> None:
            if not engine.config.args.enable_lora:
                raise RequestError("LoRA is not enabled: start the server with --enable-lora to load or unload "
                                   "adapters at runtime.", None, 400, "BadRequestError")

        @app.post("/v1/load_lora_adapter")
        async def load_lora_adapter(request: LoadLoRAAdapterRequest):
            try:
                lora_enabled()
                return Response(await models.load_lora_adapter(request.lora_name, request.lora_path,
                                                               load_inplace=request.load_inplace), status_code=200)
            except Exception as e:
                return error_response(e)

        @app.post("/v1/unload_lora_adapter")
        async def unload_lora_adapter(request: UnloadLoRAAdapterRequest):
            try:
                lora_enabled()
                return Response(await models.unload_lora_adapter(request.lora_name, request.lora_int_id),
                                status_code=200)
            except Exception as e:
                return error_response(e)

    @app.post("/v1/completions")
    async def create_completion(request: CompletionRequest, raw_request: Request):
        generative_only("Completions")
        return await completions.create_completion(request, raw_request)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(request: ChatCompletionRequest, raw_request: Request):
        generative_only("Chat Completions")
        return await chat.create_chat_completion(request, raw_request)

    @app.post("/v1/chat/completions/batch")
    async def create_batch_chat_completion(request: BatchChatCompletionRequest, raw_request: Request):
        generative_only("Chat Completions")
        return await chat.create_batch_chat_completion(request, raw_request)

    @app.post("/inference/v1/generate")
    async def generate_tokens(request: GenerateTokensRequest, raw_request: Request):
        generative_only("Token generation")
        return await tokens.create_token_generation(request, raw_request)

    @app.post("/v1/responses")
    async def create_response(request: ResponsesRequest, raw_request: Request):
        generative_only("Responses")
        return await responses.create_response(request, raw_request)

    @app.get("/v1/responses/{response_id}")
    async def retrieve_response(response_id: str, stream: bool = False):
        generative_only("Responses")
        return await responses.get_response(response_id, stream)

    @app.post("/v1/responses/{response_id}/cancel")
    async def cancel_response(response_id: str):
        generative_only("Responses")
        return await responses.cancel_response(response_id)

    @app.post("/v1/embeddings")
    async def create_embedding(request: EmbeddingRequest, raw_request: Request):
        return await pooling.create_embedding(request, raw_request)

    @app.post("/pooling")
    async def create_pooling(request: PoolingRequest, raw_request: Request):
        return await pooling.create_pooling(request, raw_request)

    @app.post("/score")
    @app.post("/v1/score")
    async def create_score(request: ScoreRequest, raw_request: Request):
        return await pooling.create_score(request, raw_request)

    @app.post("/rerank")
    @app.post("/v1/rerank")
    @app.post("/v2/rerank")
    async def create_rerank(request: RerankRequest, raw_request: Request):
        return await pooling.create_rerank(request, raw_request)

    @app.post("/classify")
    async def create_classify(request: ClassificationRequest, raw_request: Request):
        return await pooling.create_classify(request, raw_request)

    # SageMaker's entry point (vLLM's /invocations): the body's shape picks the endpoint, among those this model
    # serves; the first request type the body validates as wins. A generative model: chat (messages), then
    # completions (prompt). A pooling model: rerank (query + documents), score (a pair of text lists), /pooling when
    # the body names a task, then the model's own task on input / messages (embeddings, classify, or /pooling).
    if is_pooling:
        model = engine.config.model
        own = ((ClassificationRequest, create_classify) if model.is_classifier and not model.is_token_classifier
               else (PoolingRequest, create_pooling) if model.is_token_classifier
               else (EmbeddingRequest, create_embedding))
        invocation_types = [(RerankRequest, create_rerank), (ScoreRequest, create_score), own]
    else:
        invocation_types = [(ChatCompletionRequest, create_chat_completion), (CompletionRequest, create_completion)]

    @app.post("/invocations")
    async def invocations(raw_request: Request):
        try:
            body = await raw_request.json()
        except ValueError as e:
            return json_error(f"The request body is not valid JSON: {e}", 400)
        if is_pooling and isinstance(body, dict) and body.get("task") is not None:
            types = [(PoolingRequest, create_pooling)]
        else:
            types = invocation_types
        first_error = None      # of a type whose own key the body has: that request's field errors, not "no handler"
        for request_type, endpoint in types if isinstance(body, dict) else ():
            keys = _INVOCATION_KEYS.get(request_type, ("input", "messages"))
            if not any(k in body for k in keys):
                continue
            try:
                request = request_type.model_validate(body)
            except ValidationError as e:
                first_error = first_error or e
                continue
            return await endpoint(request, raw_request)
        if first_error is not None:
            return validation_error_response(first_error)
        names = ", ".join(t.__name__ for t, _ in types)
        return json_error(f"Cannot find suitable handler for request. Expected one of: {names}", 400)

    @app.post("/tokenize")
    async def tokenize(request: Union[TokenizeCompletionRequest, TokenizeChatRequest]):
        try:
            base.check_model(request.model)
            if isinstance(request, TokenizeChatRequest):
                if request.add_generation_prompt and request.continue_final_message:
                    if "add_generation_prompt" in request.model_fields_set:
                        raise RequestError("Cannot set both `continue_final_message` and `add_generation_prompt` "
                                           "to True.", "continue_final_message")
                    request.add_generation_prompt = False
                if request.tools:
                    functions_by_name(request.tools)     # the same tool checks as /v1/chat/completions
                ids = await base.render_chat(
                    conversation(request.messages), chat_template=request.chat_template,
                    add_generation_prompt=request.add_generation_prompt,
                    continue_final_message=request.continue_final_message, tools=template_tools(request.tools),
                    chat_template_kwargs=request.chat_template_kwargs, add_special_tokens=request.add_special_tokens)
            else:
                ids = await base.encode(request.prompt, add_special_tokens=request.add_special_tokens)
            body: dict[str, Any] = {"count": len(ids), "max_model_len": base.max_model_len, "tokens": ids,
                                    "token_strs": None}
            if request.return_token_strs:
                body["token_strs"] = await base.run_tokenizer(base.tokenizer.convert_ids_to_tokens, ids)
            return JSONResponse(body)
        except Exception as e:
            return error_response(e)

    if getattr(args, "enable_tokenizer_info_endpoint", False):
        @app.get("/tokenizer_info")
        async def tokenizer_info():
            # vLLM's answer: the tokenizer's init arguments (file paths dropped, added tokens as their text), its
            # class name, and the server's --chat-template if one was given.
            tok = base.need_tokenizer("/tokenizer_info")
            config = {k: v for k, v in (getattr(tok, "init_kwargs", None) or {}).items()
                      if k not in ("vocab_file", "merges_file")}
            config = json.loads(json.dumps(_plain(config), default=str))
            config["tokenizer_class"] = type(tok).__name__
            if args.chat_template:
                config["chat_template"] = args.chat_template
            return JSONResponse(config)

    @app.post("/detokenize")
    async def detokenize(request: DetokenizeRequest):
        try:
            base.check_model(request.model)
            vocab = engine.vocab_size
            bad = [t for t in request.tokens if not 0 <= t < vocab]
            if bad:
                raise RequestError(f"Token id {bad[0]} is out of vocabulary (vocab size {vocab}).", "tokens")
            return JSONResponse({"prompt": await base.decode(request.tokens)})
        except Exception as e:
            return error_response(e)

    add_generate_route(app, engine, max_n=getattr(args, "max_n", MAX_N))
    add_dev_routes(app, engine)

    # Middlewares: the last added runs first, so CORS answers preflights before the key check.
    add_guards(app, args.api_key, getattr(args, "max_request_body_bytes", DEFAULT_MAX_REQUEST_BODY_BYTES))
    app.state.server_state = ServerState()
    app.add_middleware(StoppingGuard, state=app.state.server_state, engine=engine)   # 503s before the key check
    if getattr(args, "enable_server_load_tracking", False):
        app.add_middleware(ServerLoadMiddleware, state=app.state)
    if getattr(args, "enable_request_id_headers", False):
        app.add_middleware(RequestIdHeaderMiddleware)    # on every answer, the 401s and 503s above included
    app.add_middleware(CORSMiddleware, allow_origins=args.allowed_origins, allow_credentials=args.allow_credentials,
                       allow_methods=args.allowed_methods, allow_headers=args.allowed_headers)
    for path in getattr(args, "middleware", None) or ():     # the user's, outermost (as vLLM adds them last)
        middleware = load_middleware(path)
        if inspect.isclass(middleware):
            app.add_middleware(middleware)
        else:
            app.middleware("http")(middleware)
    return app


# /invocations: the keys that make a body one of these requests (the pooling-input ones: input or messages).
_INVOCATION_KEYS: dict[type, tuple[str, ...]] = {
    ChatCompletionRequest: ("messages",), CompletionRequest: ("prompt", "prompt_embeds"), RerankRequest: ("query",),
    ScoreRequest: tuple(first for first, _ in SCORE_PAIR_NAMES)}


def load_middleware(path: str) -> Any:
    """--middleware's import path: an ASGI middleware class or an ``async def (request, call_next)`` function."""
    try:
        middleware = import_by_path(path)
    except ValueError as e:
        raise ValueError(f"Invalid middleware {path}: {e}") from None
    if not (inspect.isclass(middleware) or inspect.iscoroutinefunction(middleware)):
        raise ValueError(f"Invalid middleware {path}. Must be a function or a class.")    # vLLM's words
    return middleware


# ---- running ---------------------------------------------------------------------------------------------------------
def run_server(args: argparse.Namespace, prestarted=None) -> int:
    """Serve until SIGTERM / SIGINT (exit code 0) or until the engine dies (1); see entrypoints/shutdown.py.
    ``prestarted``: as ``build_engine``'s."""
    configure_logging()
    logger.info("pagedllm API server version %s", pagedllm.__version__)
    # Secrets are not logged: the API key, and the Hub token (True, the saved login's, is no secret).
    logger.info("args: %s", {k: ("<set>" if k == "hf_token" and isinstance(v, str) else v)
                             for k, v in vars(args).items() if k != "api_key"})
    try:
        for path in getattr(args, "middleware", None) or ():
            load_middleware(path)      # a bad --middleware fails now, not after the model has loaded
    except ValueError as e:
        sys.exit(f"error: {e}")
    uds = getattr(args, "uds", None)
    sock = None if uds else bind_listen_socket(args.host, args.port)   # before the engine: see listen_socket.py
    try:
        # The server's heap (its imports, the tokenizers) is collected and frozen while the engine core builds; the
        # freeze before serving then walks only what came later (the app): 0.23-0.34 s less between the core's
        # answer and serving on the 2-core CPU VM (docs/perf.md, session 33).
        engine, metrics, names = build_engine(
            args, prestarted, while_building=lambda: freeze_gc_heap("API server (while the engine core builds)"))
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    app = build_app(args, engine, metrics, names)
    config = uvicorn_config(args, app)
    server = GracefulServer(config, engine, app.state.server_state, getattr(args, "shutdown_timeout", 0))
    scheme = "https" if args.ssl_certfile else "http"
    address = f"unix:{uds}" if uds else f"{scheme}://{config.host}:{bound_port(sock)}"
    logger.info("Starting the server on %s (served model name(s): %s; event loop: %s; HTTP parser: %s)", address,
                ", ".join(names), event_loop_name(), http_parser_name())
    freeze_gc_heap("API server")
    try:
        run_event_loop(server.serve(sockets=None if sock is None else [sock]))
    finally:
        engine.shutdown()
        if sock is not None:
            sock.close()
    logger.info("Server stopped (exit code %d).", server.exit_code)
    return server.exit_code


def _plain(value: Any) -> Any:
    """A tokenizer's init arguments as JSON values: an AddedToken as its text."""
    if hasattr(value, "content"):
        return value.content
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def uvicorn_config(args: argparse.Namespace, app: FastAPI):
    """uvicorn's settings from the frontend flags; building it applies the logging config (uvicorn's, or
    --log-config-file's) and then the --disable-access-log-for-endpoints filter."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from pagedllm.entrypoints.openai.cli_args import load_log_config
    log_file = getattr(args, "log_config_file", None)
    config = uvicorn.Config(app, host=args.host or "0.0.0.0", port=args.port,
                            uds=getattr(args, "uds", None),      # vLLM's --uds: a Unix socket, not host and port
                            log_level=args.uvicorn_log_level, access_log=not args.disable_uvicorn_access_log,
                            log_config=load_log_config(log_file) if log_file else LOGGING_CONFIG,
                            timeout_keep_alive=5, ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile,
                            ssl_ca_certs=args.ssl_ca_certs, ssl_cert_reqs=args.ssl_cert_reqs,
                            ssl_ciphers=getattr(args, "ssl_ciphers", None),
                            root_path=args.root_path or "")
    excluded = {p.strip() for p in (getattr(args, "disable_access_log_for_endpoints", None) or "").split(",")
                if p.strip()}
    if excluded:
        logging.getLogger("uvicorn.access").addFilter(AccessLogPathFilter(excluded))
    return config


class AccessLogPathFilter(logging.Filter):
    """--disable-access-log-for-endpoints: drops uvicorn access lines of these paths (the query string aside)."""

    def __init__(self, paths: set[str]):
        super().__init__()
        self.paths = paths

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            return args[2].split("?", 1)[0] not in self.paths
        return True


def make_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or FlexibleArgumentParser(
        description="pagedllm OpenAI-compatible RESTful API server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return make_serve_parser(parser, model_positional=True)


def main(argv: list[str] | None = None) -> None:
    args = finalize_args(make_arg_parser().parse_args(argv))
    code = run_server(args)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
