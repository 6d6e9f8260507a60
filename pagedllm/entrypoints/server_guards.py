"""What both HTTP servers (the OpenAI-compatible one and the legacy /generate one) put in front of their routes:
OpenAI-shaped errors for every failure (FastAPI's own 404 / 405 / bad-JSON errors included), the API key check, and
the request-body size limit."""
from __future__ import annotations

import secrets
import uuid
from http import HTTPStatus
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pagedllm.entrypoints.openai.protocol import RequestError
from pagedllm.entrypoints.openai.serving_engine import error_body, error_response


def error_type(status: int) -> str:
    """OpenAI-style error type of an HTTP status: 400 -> BadRequestError, 404 -> NotFoundError, ..."""
    if status == 401:
        return "AuthenticationError"
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "Error"
    name = "".join(w.capitalize() for w in phrase.replace("-", " ").split())
    return name if name.endswith("Error") else name + "Error"


def json_error(message: str, status: int, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, error_type(status), status, param), status_code=status)


def _union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part[:1].isupper() and part.endswith("Request") or part.startswith("function-"))


def validation_error_response(exc: RequestValidationError, content_type: str | None = None) -> JSONResponse:
    """Pydantic failures are 400 (not FastAPI's 422) with OpenAI's error JSON; the message names the field.
    ``content_type``: the request's header, named when it is why the body was not read as JSON (``curl -d`` sends
    application/x-www-form-urlencoded)."""
    parts, param = [], None
    seen = set()
    for err in exc.errors():
        # A union body (/tokenize: prompt or messages) puts the model's class name first ("function-after[...,
        # Model]" when the model has a validator): not a field.
        loc = [str(x) for x in err.get("loc", ()) if x != "body" and not _union_tag(x)]
        if err.get("type") == "json_invalid":
            parts.append(f"JSON decode error: {err.get('msg')} (at position {loc[0] if loc else '?'})")
            continue
        if not loc and err.get("type") == "missing":
            parts.append("The request needs a JSON object body.")
            continue
        if not loc and err.get("type") in ("model_attributes_type", "dict_type"):
            media = (content_type or "").split(";")[0].strip().lower()
            if media and media != "application/json" and not media.endswith("+json"):
                parts.append(f"The request body must be a JSON object sent with 'Content-Type: application/json'; "
                             f"this request's Content-Type is {media!r}.")
            else:
                parts.append("The request body must be a JSON object.")
            continue
        where = ".".join(loc)
        if param is None and loc:
            param = loc[0]
        key = (loc[0] if loc else "", err.get("msg"))
        if key in seen:
            continue
        seen.add(key)
        # pydantic words a validator's ValueError "Value error, <its message>": the message is enough.
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    message = "; ".join(parts[:6]) or "Invalid request body."
    return json_error(message, 400, param)


def add_error_handlers(app: FastAPI) -> None:
    """Every error the app answers is ``{"error": {"message", "type", "param", "code"}}``."""

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return validation_error_response(exc, request.headers.get("content-type"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        status = exc.status_code
        if status == 404:
            message = f"Not found: {request.method} {request.url.path} is not a route of this server."
        elif status == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        elif status == 400 and exc.detail == "There was an error parsing the body":   # not UTF-8, not JSON
            message = "JSON decode error: the request body is not valid JSON text (UTF-8)."
        else:
            message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
        response = json_error(message, status)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError):
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception):
        return error_response(exc)


class APIKeyMiddleware:
    """With --api-key, every /v1/* route, /generate and /invocations need ``Authorization: Bearer <key>`` (the
    scheme in any case, the key compared in constant time; as vLLM's AuthenticationMiddleware); /health, /metrics,
    /tokenize and /detokenize stay open (as in vLLM). A request without the key gets vLLM's 401 as it is,
    ``{"error": "Unauthorized"}`` (not the OpenAI error shape of every other error: clients and proxies that check
    vLLM's body read ours). /generate and /invocations are guarded although vLLM guards only /v1: they run the model
    like /v1/completions (/invocations is /v1/chat/completions under another path), and a key that one unguarded
    generation route bypasses protects nothing."""

    def __init__(self, app: Any, api_key: str | Sequence[str],
                 guarded_exact: tuple[str, ...] = ("/generate", "/invocations")):
        self.app = app
        keys = [api_key] if isinstance(api_key, str) else list(api_key)     # vLLM: --api-key takes several keys
        self.expected = [key.encode() for key in keys]
        self.guarded_exact = guarded_exact

    def authorized(self, header: bytes) -> bool:
        scheme, _, key = header.partition(b" ")
        # Every key is compared (no early exit), each in constant time.
        matches = sum(secrets.compare_digest(key, expected) for expected in self.expected)
        return scheme.lower() == b"bearer" and matches > 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method") != "OPTIONS":
            path = scope.get("path", "")
            root = scope.get("root_path", "") or ""
            if root and path.startswith(root):
                path = path[len(root):]
            if path.startswith("/v1") or path in self.guarded_exact:
                headers = dict(scope.get("headers") or [])
                if not self.authorized(headers.get(b"authorization", b"")):
                    await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class RequestIdHeaderMiddleware:
    """--enable-request-id-headers (vLLM's flag): every response carries an X-Request-Id header, the request's own
    X-Request-Id when it sent one (chat and completions also use it as their request id), else a new random id."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(b"x-request-id")
        request_id = sent if sent is not None else uuid.uuid4().hex.encode()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


class ServerLoadMiddleware:
    """--enable-server-load-tracking (vLLM's flag): counts the requests in flight on the routes that run the model
    (a streamed answer until its last byte), for GET /load. ``state.server_load`` is the count."""

    TRACKED = ("/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/pooling", "/classify",
               "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank")

    def __init__(self, app: Any, state: Any):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        path, root = scope.get("path", ""), scope.get("root_path", "") or ""
        if root and path.startswith(root):
            path = path[len(root):]
        if scope["type"] != "http" or path not in self.TRACKED:
            await self.app(scope, receive, send)
            return
        self.state.server_load += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.server_load -= 1


class BodySizeLimitMiddleware:
    """Requests whose body is over ``max_bytes`` get a 413 (OpenAI's error shape) before any route reads them: by
    Content-Length when the client sends one, else by counting the chunks as they arrive (buffered up to the limit,
    then handed to the route)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> JSONResponse:
        return json_error(f"The request body is larger than this server's limit of {self.max_bytes} bytes "
                          f"(--max-request-body-bytes).", 413)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_bytes
            except ValueError:
                too_large = False
            if too_large:
                await self._too_large()(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): read the body here, up to the limit.
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def add_guards(app: FastAPI, api_key: str | Sequence[str] | None, max_request_body_bytes: int | None) -> None:
    """The API key check, then the body size limit (the last middleware added runs first: add CORS after this, so
    that it answers preflights before the key check)."""
    if max_request_body_bytes:
        app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_request_body_bytes)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
