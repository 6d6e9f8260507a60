"""POST /v1/responses: OpenAI's Responses API (``client.responses.create``), text in and text out, run as one chat
completion and answered in the Responses shape (vLLM serves this route too).

``stream=true`` runs the chat completion streamed and answers with the Responses events (response.created, ...,
response.output_text.delta per chunk, ..., response.completed or response.incomplete), each an SSE ``event:`` line
and its ``data:``, as OpenAI and vLLM send them.

What is not here yet is refused with a 400 naming the field: tools, previous_response_id (nothing is stored:
``store`` comes back false, as vLLM without its store), background mode, reasoning settings, structured text
formats, truncation="auto", and input items other than messages of text.
"""
from __future__ import annotations

import itertools
import json
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest, RequestError, ResponsesRequest, random_uuid
from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat
from pagedllm.entrypoints.openai.serving_engine import error_response

# A chat error's field, as the Responses request names it.
_PARAM_NAMES = {"max_completion_tokens": "max_output_tokens", "max_tokens": "max_output_tokens",
                "messages": "input"}
_TEXT_PARTS = ("input_text", "output_text", "text")


def _unsupported(req: ResponsesRequest) -> RequestError | None:
    text_format = (req.text or {}).get("format") or {}
    checks = [
        (bool(req.tools), "tools", "tools are not supported by /v1/responses yet; use /v1/chat/completions."),
        (req.previous_response_id is not None, "previous_response_id",
         "previous_response_id is not supported: this server stores no responses; send the whole conversation "
         "as input."),
        (bool(req.background), "background", "background mode is not supported."),
        (req.reasoning is not None, "reasoning", "reasoning settings are not supported by /v1/responses yet."),
        (not isinstance(text_format, dict), "text", "text.format must be an object such as {\"type\": \"text\"}."),
        (isinstance(text_format, dict) and text_format.get("type", "text") != "text", "text",
         "text.format other than 'text' is not supported by /v1/responses yet; use /v1/chat/completions with "
         "response_format."),
        (req.truncation not in (None, "disabled", "auto"), "truncation",
         f"truncation must be 'auto' or 'disabled', got {req.truncation!r}."),
        (req.truncation == "auto", "truncation", "truncation='auto' is not supported."),
        (not req.tools and req.tool_choice not in (None, "auto", "none"), "tool_choice",
         "When using `tool_choice`, `tools` must be set."),
    ]
    for failed, param, message in checks:
        if failed:
            return RequestError(message, param)
    return None


def _messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The Responses input as chat messages: instructions first (a system message), then a string (one user
    message) or message items whose content is a string or text parts."""
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        return messages + [{"role": "user", "content": req.input}]
    for i, item in enumerate(req.input):
        if item.get("type", "message") != "message" or "role" not in item:
            raise RequestError(f"input[{i}]: only message items (role and content) are supported by /v1/responses "
                               f"yet, got type {item.get('type')!r}.", "input")
        content = item.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS:
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise RequestError(f"input[{i}].content: only text parts are supported (the model reads text), "
                                       f"got {kind!r}.", "input")
                if not isinstance(part.get("text"), str):
                    raise RequestError(f"input[{i}].content[{j}]: a text part needs a string 'text'.", "input")
                texts.append({"type": "text", "text": part["text"]})
            content = texts
        messages.append({"role": item["role"], "content": content})
    return messages


class OpenAIServingResponses:
    def __init__(self, chat: OpenAIServingChat):
        self.chat = chat

    async def create_response(self, req: ResponsesRequest, raw_request: Request | None = None) -> JSONResponse:
        try:
            refused = _unsupported(req)
            if refused is not None:
                raise refused
            try:
                chat_req = ChatCompletionRequest.model_validate({
                    "model": req.model, "messages": _messages(req), "max_completion_tokens": req.max_output_tokens,
                    "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k, "user": req.user,
                    "priority": req.priority, "stream": bool(req.stream),
                    "stream_options": {"include_usage": True} if req.stream else None})
            except ValidationError as e:
                raise RequestError(f"input: {e.errors()[0]['msg']}", "input") from None
        except Exception as e:
            return error_response(e)
        answer = await self.chat.create_chat_completion(chat_req, raw_request)
        request_id = self.chat.base_request_id(raw_request, req.request_id)
        if isinstance(answer, StreamingResponse):
            return StreamingResponse(self._events(req, answer.body_iterator, request_id),
                                     media_type="text/event-stream")
        body = json.loads(answer.body)
        if answer.status_code != 200:
            error = body.get("error") or {}
            error["param"] = _PARAM_NAMES.get(error.get("param"), error.get("param"))
            return JSONResponse(body, status_code=answer.status_code)
        return JSONResponse(self._response(req, body, request_id))

    async def _events(self, req: ResponsesRequest, chat_sse: AsyncIterator, request_id: str) -> AsyncIterator[str]:
        """The chat completion's SSE chunks as the Responses API's stream of events."""
        sequence = itertools.count()

        def event(kind: str, **fields: Any) -> str:
            data = {"type": kind, "sequence_number": next(sequence), **fields}
            return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

        item_id = f"msg_{random_uuid()}"
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        texts: list[str] = []
        chat: dict[str, Any] | None = None     # the chat's fields the response needs, from its first chunk on
        finish_reason, usage = None, None
        async for chunk in _sse_data(chat_sse):
            if "error" in chunk:      # the chat stream's error chunk: OpenAI's error event, and the stream ends
                error = chunk["error"]
                yield event("error", code=error.get("code"), message=error.get("message"),
                            param=_PARAM_NAMES.get(error.get("param"), error.get("param")))
                return
            if chat is None:
                chat = {"created": chunk["created"], "model": chunk["model"]}
                shell = self._response(req, {**chat, "choices": [{"finish_reason": None, "message": {"content": None}}],
                                             "usage": None}, request_id)
                shell.update(status="in_progress", output=[], usage=None)
                yield event("response.created", response=shell)
                yield event("response.in_progress", response=shell)
                yield event("response.output_item.added", output_index=0, item={
                    "id": item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []})
                yield event("response.content_part.added", **where,
                            part={"type": "output_text", "text": "", "annotations": []})
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    texts.append(delta)
                    yield event("response.output_text.delta", **where, delta=delta, logprobs=[])
                finish_reason = choice.get("finish_reason") or finish_reason
        if chat is None:
            return
        final = self._response(req, {**chat, "choices": [{"finish_reason": finish_reason,
                                                          "message": {"content": "".join(texts)}}],
                                     "usage": usage}, request_id)
        (item,) = final["output"]
        item["id"] = item_id
        (part,) = item["content"]
        yield event("response.output_text.done", **where, text=part["text"], logprobs=[])
        yield event("response.content_part.done", **where, part=part)
        yield event("response.output_item.done", output_index=0, item=item)
        yield event("response.incomplete" if final["status"] == "incomplete" else "response.completed",
                    response=final)

    def _response(self, req: ResponsesRequest, chat: dict[str, Any], request_id: str) -> dict[str, Any]:
        (choice,) = chat["choices"]
        usage = chat["usage"]
        truncated = choice["finish_reason"] == "length"
        text = {"type": "output_text", "text": choice["message"]["content"] or "", "annotations": []}
        return {
            "id": f"resp_{request_id}",
            "object": "response",
            "created_at": chat["created"],
            "model": chat["model"],
            "status": "incomplete" if truncated else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
            "error": None,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "output": [{"id": f"msg_{random_uuid()}", "type": "message", "role": "assistant",
                        "status": "incomplete" if truncated else "completed", "content": [text]}],
            "parallel_tool_calls": req.parallel_tool_calls,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "tool_choice": req.tool_choice,
            "tools": [],
            "text": {"format": {"type": "text"}},
            "truncation": "disabled",
            "store": False,
            "metadata": req.metadata,
            "user": req.user,
            "usage": usage and {
                "input_tokens": usage["prompt_tokens"],
                "input_tokens_details": {"cached_tokens": (usage.get("prompt_tokens_details") or {}).get(
                    "cached_tokens", 0)},
                "output_tokens": usage["completion_tokens"],
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage["total_tokens"],
            },
        }


async def _sse_data(body: AsyncIterator) -> AsyncIterator[dict[str, Any]]:
    """The JSON of each ``data:`` line of an SSE body (str or bytes pieces, an event possibly split across pieces
    or several in one), up to ``[DONE]``."""
    buffer = ""
    async for piece in body:
        buffer += piece.decode() if isinstance(piece, bytes) else piece
        *events, buffer = buffer.split("\n\n")
        for block in events:
            for line in block.splitlines():
                if not line.startswith("data: "):
                    continue
                payload = line[len("data: "):]
                if payload.strip() == "[DONE]":
                    return
                yield json.loads(payload)
