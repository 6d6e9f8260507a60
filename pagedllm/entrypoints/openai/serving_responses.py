"""POST /v1/responses: OpenAI's Responses API (``client.responses.create``), text in and text out, run as one chat
completion and answered in the Responses shape (vLLM serves this route too).

``stream=true`` runs the chat completion streamed and answers with the Responses events (response.created, ...,
response.output_text.delta per chunk, ..., response.completed or response.incomplete), each an SSE ``event:`` line
and its ``data:``, as OpenAI and vLLM send them.

Function ``tools`` (OpenAI's flat ``{"type": "function", "name", "description", "parameters", "strict"}``) run as the
chat completion's tools, with its tool choices ("auto" needs --enable-auto-tool-choice and --tool-call-parser, as on
chat; "required"; ``{"type": "function", "name": ...}``; "none"): the calls come back as ``function_call`` output
items (id, call_id, name, arguments, status), after a message item when the model also wrote text, as vLLM answers.
``function_call`` and ``function_call_output`` input items carry a tool loop's turns back in (an assistant message
with tool_calls, a tool message), so OpenAI's function-calling guide runs as written.

With stream=true the calls stream as OpenAI's events: response.output_item.added (a function_call item),
response.function_call_arguments.delta per piece of its arguments, .done, response.output_item.done.

The response store is vLLM's: off unless VLLM_ENABLE_RESPONSES_API_STORE=1 (or PAGEDLLM_ENABLE_RESPONSES_API_STORE),
as vLLM since its PR 22137. Without it ``store`` comes back false, GET /v1/responses/{id} is vLLM's 404 "Response with
id '...' not found.", and previous_response_id and background are refused with a 400 naming the variable. With it
a response sent with ``store`` (true by default) is kept in memory (never evicted, as vLLM's): GET returns it,
``previous_response_id`` continues its conversation (its input and output before the new input; its instructions
are not carried over, as OpenAI documents), ``background: true`` answers at once with status "queued" and runs on,
and POST /v1/responses/{id}/cancel stops a background response ("cancelled").

What is not here yet is refused with a 400 naming the field: tools other than functions (web search, file search,
MCP, ...), background with stream, reasoning summaries, stored prompt templates (``prompt``),
and input items other than messages of text and function calls and their outputs. vLLM's sampling extras
``top_k``, ``logit_bias``, ``skip_special_tokens``, ``cache_salt``, ``seed``, ``stop``, ``repetition_penalty``,
``ignore_eos``, ``include_stop_str_in_output``, ``vllm_xargs`` and ``structured_outputs`` run as on chat; the
response reports the temperature and top_p sampled with (the model's generation-config defaults when the request
gives none), as vLLM.

``include: ["message.output_text.logprobs"]`` (with ``top_logprobs``) puts the chat's logprobs of the text on its
``output_text`` part and on each ``response.output_text.delta`` event, as vLLM; without it they are null / [].

``text.format`` json_schema / json_object constrains the output as chat's ``response_format`` does (structured
output through xgrammar); the response echoes the format. ``client.responses.parse(text_format=Model)`` runs as
written.

With --reasoning-parser the model's thinking comes first as a ``reasoning`` output item (its text as
``content[].reasoning_text``; streamed as response.reasoning_text.delta events), as vLLM answers. ``reasoning.effort``
reaches the chat template as on chat (reasoning_effort, and enable_thinking unless it is "none").

An input that ends with an assistant message whose status is "in_progress" or "incomplete" is continued (the chat
template's continue_final_message), as vLLM's partial message generation: the output holds the continuation.
"""
from __future__ import annotations

import asyncio
import copy
import itertools
import json
import logging
import time
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from pagedllm import harmony
from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest, RequestError, ResponsesRequest, random_uuid
from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat
from pagedllm.entrypoints.openai.serving_engine import error_response
from pagedllm.reasoning_parsers import count_reasoning_tokens

logger = logging.getLogger("pagedllm.entrypoints.openai")

# A chat error's field, as the Responses request names it.
_PARAM_NAMES = {"max_completion_tokens": "max_output_tokens", "max_tokens": "max_output_tokens",
                "messages": "input", "response_format": "text"}
_TEXT_PARTS = ("input_text", "output_text", "text")


def _as_responses_error(error: dict) -> dict:
    """A chat error's field as the Responses request names it: its param, and the "name=value" that opens a
    message such as "max_completion_tokens=N cannot be greater than max_model_len=M"."""
    old = error.get("param")
    new = _PARAM_NAMES.get(old, old)
    message = error.get("message")
    if new != old and isinstance(message, str) and message.startswith(f"{old}="):
        error["message"] = new + message[len(old):]
    error["param"] = new
    return error


def _text_format(req: ResponsesRequest) -> Any:
    """The request's ``text.format`` (``{"type": "text"}`` when it gives none)."""
    return (req.text or {}).get("format") or {"type": "text"}


def _unsupported(req: ResponsesRequest) -> RequestError | None:
    text_format = _text_format(req)
    checks = [
        (bool(req.background) and bool(req.stream), "background", "background mode with stream=true is not supported."),
        (req.prompt is not None, "prompt", "prompt template is not supported"),      # vLLM's words
        (req.reasoning is not None and not isinstance(req.reasoning, dict), "reasoning",
         "reasoning must be an object such as {\"effort\": \"medium\"}."),
        (isinstance(req.reasoning, dict) and any(req.reasoning.get(k) is not None
                                                 for k in ("summary", "generate_summary")), "reasoning",
         "reasoning summaries are not supported: with --reasoning-parser the response carries the model's reasoning "
         "text itself (an output item of type 'reasoning'); drop reasoning.summary."),
        (isinstance(req.reasoning, dict) and bool(set(req.reasoning) - {"effort", "summary", "generate_summary"}),
         "reasoning", "reasoning takes effort (and summary, not supported)."),
        (not isinstance(text_format, dict), "text", "text.format must be an object such as {\"type\": \"text\"}."),
        (req.structured_outputs is not None and isinstance(text_format, dict) and text_format.get("type", "text")
         != "text", "structured_outputs", "Cannot specify both structured_outputs and text.format"),    # vLLM's words
        (req.truncation not in (None, "disabled", "auto"), "truncation",
         f"truncation must be 'auto' or 'disabled', got {req.truncation!r}."),
        (not req.tools and req.tool_choice not in (None, "auto", "none"), "tool_choice",
         "When using `tool_choice`, `tools` must be set."),
    ]
    for failed, param, message in checks:
        if failed:
            return RequestError(message, param)
    return None


def _with_logprobs(req: ResponsesRequest) -> bool:
    return "message.output_text.logprobs" in (req.include or ())


def _output_text(text: str, logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A message's output_text content part (logprobs None without include message.output_text.logprobs)."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def _response_format(req: ResponsesRequest) -> dict[str, Any] | None:
    """``text.format`` as the chat completion's ``response_format``: OpenAI's Responses formats are flat
    (``{"type": "json_schema", "name", "schema", "strict", "description"}``), the chat's nest the schema under
    ``json_schema``; ``json_object`` is the same in both; ``text`` (the default) constrains nothing. What
    ``client.responses.parse(..., text_format=Model)`` sends."""
    fmt = _text_format(req)
    kind = fmt.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise RequestError("text.format of type 'json_schema' needs 'schema', a JSON schema object.", "text")
        if not isinstance(fmt.get("name"), str) or not fmt["name"]:
            raise RequestError("text.format of type 'json_schema' needs 'name', a string.", "text")
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "strict", "description")
                                                       if fmt.get(k) is not None}}
    raise RequestError(f"text.format type must be 'text', 'json_object' or 'json_schema', got {kind!r}.", "text")


def _chat_tools(req: ResponsesRequest) -> dict[str, Any]:
    """The request's function tools and tool choice in the chat completion's shape (``{"type": "function",
    "function": {...}}``), as vLLM converts them; nothing when the request has no tools."""
    fields: dict[str, Any] = {}
    if req.tools:
        tools = []
        for i, tool in enumerate(req.tools):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise RequestError(f"tools[{i}]: only function tools are supported by /v1/responses yet, got type "
                                   f"{kind!r}.", "tools")
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise RequestError(f"tools[{i}] must be {{'type': 'function', 'name': ..., 'parameters': {{...}}}} "
                                   f"(the Responses API's flat function tool).", "tools")
            tools.append({"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}})
        fields.update(tools=tools, parallel_tool_calls=req.parallel_tool_calls)
    choice = req.tool_choice
    if isinstance(choice, dict) and choice.get("type") == "function" and "function" not in choice:
        choice = {"type": "function", "function": {"name": choice.get("name")}}     # Responses' named choice
    elif isinstance(choice, dict) and choice.get("type") != "function":
        raise RequestError(f"tool_choice of type {choice.get('type')!r} is not supported by /v1/responses yet; use "
                           f"\"auto\", \"none\", \"required\" or {{\"type\": \"function\", \"name\": ...}}.",
                           "tool_choice")
    if req.tools or ("tool_choice" in req.model_fields_set and choice not in (None, "auto", "none")):
        fields["tool_choice"] = choice
    return fields


def _messages(req: ResponsesRequest, history: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The Responses input as chat messages: instructions first (a system message), then ``history`` (the stored
    conversation of previous_response_id), then a string (one user message) or items (``_add_items``)."""
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    messages += copy.deepcopy(list(history))
    if isinstance(req.input, str):
        return messages + [{"role": "user", "content": req.input}]
    return _add_items(messages, req.input)


def _add_items(messages: list[dict[str, Any]], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` and then Responses items as chat messages: messages whose content is a string or text parts,
    ``reasoning`` items (an assistant turn's thinking), ``function_call`` items (the assistant's calls) and
    ``function_call_output`` items (tool messages). As vLLM, a reasoning item, the assistant message after it and
    the calls after those make one assistant turn. A response's output items read back the same way."""
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        last = messages[-1] if messages and messages[-1]["role"] == "assistant" else None
        if kind == "function_call":
            call = _input_call(item, i)
            # Into the assistant turn before it (its text, its thinking or its other calls), as vLLM merges them:
            # a response's output sent back as input is one turn again.
            if last is not None:
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            continue
        if kind == "reasoning":
            # A reasoning output item sent back (a client that appends response.output to its input): the
            # assistant turn's reasoning, as vLLM takes it (the template may render it).
            text = _reasoning_text(item, i)
            if last is not None and last.get("reasoning") is None:
                last["reasoning"] = text
            else:
                messages.append({"role": "assistant", "content": None, "reasoning": text})
            continue
        if kind == "function_call_output":
            output = item.get("output")
            if not isinstance(item.get("call_id"), str) or not isinstance(output, str):
                raise RequestError(f"input[{i}]: a function_call_output item needs call_id and output (strings).",
                                   "input")
            messages.append({"role": "tool", "content": output, "tool_call_id": item["call_id"]})
            continue
        if kind != "message" or "role" not in item:
            raise RequestError(f"input[{i}]: only message, reasoning, function_call and function_call_output items "
                               f"are supported by /v1/responses yet, got type {item.get('type')!r}.", "input")
        content = item.get("content")
        if (item["role"] == "assistant" and last is not None and last.get("content") is None
                and last.get("tool_calls") is None):
            target = last           # the answer after its reasoning item: one assistant turn (vLLM's merge)
        else:
            target = None
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
        if target is not None:
            target["content"] = content
        else:
            messages.append({"role": item["role"], "content": content})
    return messages


def _continues_last(req: ResponsesRequest) -> bool:
    """The input ends with an assistant message marked unfinished (status "in_progress" or "incomplete"): the model
    continues that message instead of starting a new turn (vLLM's partial message generation, its PR 32100, as
    Anthropic's prefilled assistant turn)."""
    if isinstance(req.input, str) or not req.input:
        return False
    last = req.input[-1]
    return (isinstance(last, dict) and last.get("type", "message") == "message" and last.get("role") == "assistant"
            and last.get("status") in ("in_progress", "incomplete"))


def _reasoning_text(item: dict[str, Any], i: int) -> str:
    """The text of a reasoning input item: its content's reasoning_text (else its summary's text, as vLLM)."""
    if item.get("encrypted_content"):
        raise RequestError(f"input[{i}]: encrypted reasoning content is not supported.", "input")
    for key in ("content", "summary"):
        parts = item.get(key) or []
        if isinstance(parts, list) and parts and isinstance(parts[0], dict) and isinstance(parts[0].get("text"), str):
            return parts[0]["text"]
    return ""


def _input_call(item: dict[str, Any], i: int) -> dict[str, Any]:
    """A function_call input item (a call the model made, sent back) as a chat tool call."""
    name, arguments, call_id = item.get("name"), item.get("arguments"), item.get("call_id")
    if not all(isinstance(v, str) for v in (name, arguments, call_id)):
        raise RequestError(f"input[{i}]: a function_call item needs call_id, name and arguments (strings).", "input")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


class OpenAIServingResponses:
    def __init__(self, chat: OpenAIServingChat, enable_store: bool = False):
        self.chat = chat
        # vLLM's in-memory response store (VLLM_ENABLE_RESPONSES_API_STORE): responses by id, the conversation each
        # one ends (for previous_response_id: input and output as chat messages, without its instructions), and the
        # tasks of background responses still running (for cancel).
        self.enable_store = enable_store
        self.store: dict[str, dict[str, Any]] = {}
        self.conversations: dict[str, list[dict[str, Any]]] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        if enable_store:
            logger.warning("The Responses API store is on (VLLM_ENABLE_RESPONSES_API_STORE): stored responses are "
                           "kept in memory until the server stops, as vLLM keeps them.")

    @property
    def _reasoning(self) -> bool:
        """--reasoning-parser: the chat answers carry reasoning (and its token ids can be counted)."""
        return getattr(self.chat, "reasoning_parser", None) is not None

    def _truncate_to(self, req: ResponsesRequest) -> int | None:
        """truncation="auto" as vLLM runs it: the input's last tokens that leave room for max_output_tokens (all of
        max_model_len without it), the oldest dropped; "disabled" (the default) cuts nothing."""
        if req.truncation != "auto":
            return None
        room = self.chat.max_model_len - (req.max_output_tokens or 0)
        return room if room >= 1 else None      # no room: the context check says so

    def _check_id(self, response_id: str) -> None:
        """vLLM's errors for an id that is not a response's (400) or that the store does not hold (404)."""
        if not response_id.startswith("resp_"):
            raise RequestError(f"Invalid 'response_id': '{response_id}'. Expected an ID that begins with 'resp'.",
                               "response_id")
        if response_id not in self.store:
            raise RequestError(f"Response with id '{response_id}' not found.", "response_id", 404, "NotFoundError")

    def _history(self, req: ResponsesRequest) -> list[dict[str, Any]]:
        """The conversation previous_response_id ends (empty without one)."""
        previous = req.previous_response_id
        if previous is None:
            return []
        if not self.enable_store:
            raise RequestError("previous_response_id needs the response store, which is off: start the server with "
                               "VLLM_ENABLE_RESPONSES_API_STORE=1, or send the whole conversation as input.",
                               "previous_response_id")
        try:
            self._check_id(previous)
        except RequestError as e:
            e.param = "previous_response_id"
            raise
        if previous not in self.conversations:
            raise RequestError(f"Response with id '{previous}' has not finished (status "
                               f"{self.store[previous]['status']!r}).", "previous_response_id")
        return self.conversations[previous]

    def _keep(self, req: ResponsesRequest, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        """Store a finished response and its conversation (with store on and requested); a cancelled one stays
        cancelled."""
        if not (self.enable_store and req.store):
            return
        if self.store.get(response["id"], {}).get("status") == "cancelled":
            return
        self.store[response["id"]] = response
        conversation = messages[1:] if req.instructions else list(messages)
        self.conversations[response["id"]] = _add_items(conversation, copy.deepcopy(response["output"]))

    async def get_response(self, response_id: str, stream: bool = False) -> JSONResponse:
        """GET /v1/responses/{id}: a stored response (vLLM's 404 when the store does not hold it)."""
        try:
            if stream:
                raise RequestError("stream=true is not supported when retrieving a response.", "stream")
            self._check_id(response_id)
        except RequestError as e:
            return error_response(e)
        return JSONResponse(self.store[response_id])

    async def cancel_response(self, response_id: str) -> JSONResponse:
        """POST /v1/responses/{id}/cancel: a background response still queued or running stops, "cancelled" (as
        vLLM); any other is a 400."""
        try:
            self._check_id(response_id)
            response = self.store[response_id]
            if response["status"] not in ("queued", "in_progress"):
                raise RequestError("Cannot cancel a synchronous response.", "response_id")
        except RequestError as e:
            return error_response(e)
        response["status"] = "cancelled"
        task = self.tasks.pop(response_id, None)
        if task is not None:
            task.cancel()       # the chat completion's stream aborts the engine request as it unwinds
        return JSONResponse(response)

    async def create_response(self, req: ResponsesRequest, raw_request: Request | None = None) -> JSONResponse:
        try:
            refused = _unsupported(req)
            if refused is not None:
                raise refused
            if req.background and not (self.enable_store and req.store):
                raise RequestError("background mode needs the response store: start the server with "
                                   "VLLM_ENABLE_RESPONSES_API_STORE=1 and send store: true.", "background")
            request_id = self.chat.base_request_id(raw_request, req.request_id)
            messages = _messages(req, self._history(req))
            try:
                chat_req = ChatCompletionRequest.model_validate({
                    "request_id": request_id,
                    "model": req.model, "messages": messages, "max_completion_tokens": req.max_output_tokens,
                    "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k, "user": req.user,
                    "priority": req.priority, "stream": bool(req.stream), "logit_bias": req.logit_bias,
                    "skip_special_tokens": req.skip_special_tokens, "cache_salt": req.cache_salt,
                    "seed": req.seed, "stop": req.stop, "repetition_penalty": req.repetition_penalty,
                    "ignore_eos": req.ignore_eos, "include_stop_str_in_output": req.include_stop_str_in_output,
                    "vllm_xargs": req.vllm_xargs, "structured_outputs": req.structured_outputs,
                    "truncate_prompt_tokens": self._truncate_to(req),
                    "reasoning_effort": (req.reasoning or {}).get("effort"),
                    **({"add_generation_prompt": False, "continue_final_message": True} if _continues_last(req)
                       else {}),
                    # The output's token ids, for usage.output_tokens_details.reasoning_tokens.
                    "return_token_ids": self._reasoning or None,
                    "stream_options": {"include_usage": True} if req.stream else None,
                    **({"logprobs": True, "top_logprobs": req.top_logprobs or 0} if _with_logprobs(req) else {}),
                    "response_format": _response_format(req), **_chat_tools(req)})
            except ValidationError as e:
                error = e.errors()[0]
                if error["loc"][:1] == ("reasoning_effort",):
                    raise RequestError(f"reasoning.effort: {error['msg']}", "reasoning") from None
                if error["loc"][:1] == ("response_format",):
                    raise RequestError(f"text.format: {error['msg']}", "text") from None
                if error["loc"] and error["loc"][0] in ("vllm_xargs", "structured_outputs", "stop", "seed"):
                    raise RequestError(f"{error['loc'][0]}: {error['msg']}", error["loc"][0]) from None
                raise RequestError(f"input: {error['msg']}", "input") from None
        except Exception as e:
            return error_response(e)
        chat_req._cached_tokens_always = True     # usage.input_tokens_details.cached_tokens, as vLLM's
        if req.background:
            return self._start_background(req, chat_req, messages, request_id)
        answer = await self.chat.create_chat_completion(chat_req, raw_request)
        if isinstance(answer, StreamingResponse):
            return StreamingResponse(self._events(req, answer.body_iterator, request_id, messages),
                                     media_type="text/event-stream")
        body = json.loads(answer.body)
        if answer.status_code != 200:
            _as_responses_error(body.get("error") or {})
            return JSONResponse(body, status_code=answer.status_code)
        response = self._response(req, body, request_id)
        self._keep(req, response, messages)
        return JSONResponse(response)

    def _start_background(self, req: ResponsesRequest, chat_req: ChatCompletionRequest,
                          messages: list[dict[str, Any]], request_id: str) -> JSONResponse:
        """background: true: the response is stored "queued" and returned at once; the chat completion runs on in a
        task, and its answer (or "failed" with its error) replaces the stored one, unless it was cancelled."""
        shell = self._response(req, {"created": int(time.time()), "model": self.chat.models.response_model(req.model),
                                     "choices": [{"finish_reason": None, "message": {"content": None}}],
                                     "usage": None}, request_id)
        shell.update(status="queued", output=[])
        self.store[shell["id"]] = shell

        async def run() -> None:
            shell["status"] = "in_progress"
            try:
                answer = await self.chat.create_chat_completion(chat_req, None)
            except Exception as e:      # (create_chat_completion answers errors itself; this is the unexpected)
                answer = error_response(e)
            body = json.loads(answer.body)
            if answer.status_code != 200:
                if shell["status"] != "cancelled":
                    shell.update(status="failed", error=_as_responses_error(body.get("error") or {}))
                return
            self._keep(req, self._response(req, body, request_id), messages)

        task = asyncio.get_running_loop().create_task(run())
        self.tasks[shell["id"]] = task
        task.add_done_callback(lambda _: self.tasks.pop(shell["id"], None))
        return JSONResponse(shell)

    async def _events(self, req: ResponsesRequest, chat_sse: AsyncIterator, request_id: str,
                      messages: list[dict[str, Any]] = ()) -> AsyncIterator[str]:
        """The chat completion's SSE chunks as the Responses API's stream of events: text as a message item's
        output_text deltas, each tool call as a function_call item whose arguments come as
        function_call_arguments deltas (OpenAI's events)."""
        items = _StreamedItems(_with_logprobs(req))
        chat: dict[str, Any] | None = None     # the chat's fields the response needs, from its first chunk on
        finish_reason, usage = None, None
        token_ids: list[int] = []
        async for chunk in _sse_data(chat_sse):
            if "error" in chunk:      # the chat stream's error chunk: OpenAI's error event, and the stream ends
                error = _as_responses_error(chunk["error"])
                yield items.event("error", code=error.get("code"), message=error.get("message"),
                                  param=error.get("param"))
                return
            if chat is None:
                chat = {"created": chunk["created"], "model": chunk["model"]}
                shell = self._response(req, {**chat, "choices": [{"finish_reason": None, "message": {"content": None}}],
                                             "usage": None}, request_id)
                shell.update(status="in_progress", output=[], usage=None)
                yield items.event("response.created", response=shell)
                yield items.event("response.in_progress", response=shell)
                if not req.tools and not self._reasoning:
                    # Text only: the message item opens at once (it may stay empty).
                    for e in items.text("", open_empty=True):
                        yield e
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                token_ids += choice.get("token_ids") or []
                for e in items.reasoning(delta.get("reasoning") or ""):
                    yield e
                for e in items.text(delta.get("content") or "", (choice.get("logprobs") or {}).get("content")):
                    yield e
                for call in delta.get("tool_calls") or ():
                    for e in items.call(call):
                        yield e
                finish_reason = choice.get("finish_reason") or finish_reason
        if chat is None:
            return
        final = self._response(req, {**chat, "choices": [{"finish_reason": finish_reason, "token_ids": token_ids,
                                                          "message": {"content": None}}],
                                     "usage": usage}, request_id)
        if not items.items:
            for e in items.text("", open_empty=True):   # nothing generated: an empty message, as the whole answer
                yield e
        status = "incomplete" if final["status"] == "incomplete" else "completed"
        for e in items.close_all(status):
            yield e
        final["output"] = [item.done for item in items.items]
        self._keep(req, final, messages)
        yield items.event("response.incomplete" if status == "incomplete" else "response.completed", response=final)

    def _response(self, req: ResponsesRequest, chat: dict[str, Any], request_id: str) -> dict[str, Any]:
        (choice,) = chat["choices"]
        usage = chat["usage"]
        truncated = choice["finish_reason"] == "length"
        content = choice["message"]["content"] or ""
        calls = choice["message"].get("tool_calls") or []
        reasoning = choice["message"].get("reasoning")
        output = []
        if reasoning:       # --reasoning-parser: the thinking first (vLLM's reasoning item)
            output.append({"id": f"rs_{random_uuid()}", "type": "reasoning", "summary": [],
                           "content": [{"type": "reasoning_text", "text": reasoning}], "status": None})
        if content or not (calls or reasoning):
            text = _output_text(content, (choice.get("logprobs") or {}).get("content") if _with_logprobs(req) else None)
            output.append({"id": f"msg_{random_uuid()}", "type": "message", "role": "assistant",
                           "status": "incomplete" if truncated else "completed", "content": [text]})
        for call in calls:     # OpenAI's function_call output items, after the message (as vLLM orders them)
            # A call cut by max_output_tokens is "incomplete" (vLLM says "completed" whatever happened).
            output.append({"id": f"fc_{random_uuid()}", "type": "function_call", "call_id": call["id"],
                           "name": call["function"]["name"], "arguments": call["function"]["arguments"],
                           "status": "incomplete" if truncated else "completed"})
        return {
            "id": f"resp_{request_id}",
            "object": "response",
            "created_at": chat["created"],
            "model": chat["model"],
            "status": "incomplete" if truncated else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
            "error": None,
            "instructions": req.instructions,
            "background": bool(req.background),
            "previous_response_id": req.previous_response_id,
            "reasoning": req.reasoning,
            "max_output_tokens": req.max_output_tokens,
            "output": output,
            "parallel_tool_calls": req.parallel_tool_calls,
            # The values sampled with (the request's, else the model's generation config's, else 1.0), as vLLM.
            "temperature": self._sampled_with("temperature", req.temperature),
            "top_p": self._sampled_with("top_p", req.top_p),
            "top_logprobs": (req.top_logprobs or 0) if _with_logprobs(req) else None,
            "service_tier": req.service_tier,
            "tool_choice": req.tool_choice,
            "tools": req.tools or [],
            "text": {"format": _text_format(req)},
            "truncation": req.truncation or "disabled",
            "store": bool(self.enable_store and req.store),
            "metadata": req.metadata,
            "user": req.user,
            "usage": usage and {
                "input_tokens": usage["prompt_tokens"],
                "input_tokens_details": {"cached_tokens": (usage.get("prompt_tokens_details") or {}).get(
                    "cached_tokens", 0)},
                "output_tokens": usage["completion_tokens"],
                "output_tokens_details": {"reasoning_tokens": self._reasoning_tokens(choice.get("token_ids"))},
                "total_tokens": usage["total_tokens"],
            },
        }

    def _sampled_with(self, name: str, value: float | None) -> float | None:
        """The request's value, else the server's default for it (the generation config's, else SamplingParams')."""
        defaults = getattr(self.chat, "default_params", None)
        return value if value is not None or defaults is None else getattr(defaults, name)

    def _reasoning_tokens(self, token_ids: list[int] | None) -> int:
        if not token_ids or not self._reasoning:
            return 0
        if self.chat.harmony:
            tok = self.chat.tokenizer
            return harmony.count_reasoning_tokens(token_ids, tok.get_vocab(),
                                                  lambda ids: tok.decode(ids, skip_special_tokens=False))
        return count_reasoning_tokens(token_ids, *self.chat.think_ids)


class _StreamedItem:
    def __init__(self, index: int, kind: str, **fields: Any):
        self.index, self.kind = index, kind
        self.id = f"{ {'message': 'msg', 'reasoning': 'rs'}.get(kind, 'fc')}_{random_uuid()}"
        self.text = ""              # a message's text, a call's arguments
        self.logprobs: list[dict[str, Any]] = []     # a message's, with include message.output_text.logprobs
        self.fields = fields        # a call's call_id and name
        self.done: dict[str, Any] = {}


class _StreamedItems:
    """The output items of a streamed response and their events, numbered in sequence: a message item opens on the
    first text (and closes when a call starts), a function_call item on each call's first delta."""

    def __init__(self, with_logprobs: bool = False):
        self.with_logprobs = with_logprobs
        self.items: list[_StreamedItem] = []
        self.calls: dict[int, _StreamedItem] = {}      # by the chat delta's tool call index
        self.message: _StreamedItem | None = None      # the open message item
        self.thought: _StreamedItem | None = None      # the open reasoning item
        self.sequence = itertools.count()

    def event(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": next(self.sequence), **fields}
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

    def _where(self, item: _StreamedItem) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": item.index, "content_index": 0}

    def reasoning(self, delta: str) -> list[str]:
        """A reasoning delta: a reasoning item opens on the first (vLLM's events), and closes when text or a call
        starts."""
        if not delta:
            return []
        out = []
        if self.thought is None:
            self.thought = _StreamedItem(len(self.items), "reasoning")
            self.items.append(self.thought)
            out.append(self.event("response.output_item.added", output_index=self.thought.index, item={
                "id": self.thought.id, "type": "reasoning", "summary": [], "status": "in_progress"}))
            out.append(self.event("response.reasoning_part.added", **self._where(self.thought),
                                  part={"type": "reasoning_text", "text": ""}))
        self.thought.text += delta
        out.append(self.event("response.reasoning_text.delta", **self._where(self.thought), delta=delta))
        return out

    def _close_thought(self) -> list[str]:
        if self.thought is None or self.thought.done:
            return []
        item, self.thought = self.thought, None
        return self._close(item, "completed")

    def text(self, delta: str, logprobs: list[dict[str, Any]] | None = None, open_empty: bool = False) -> list[str]:
        """A text delta and its tokens' logprobs (``open_empty``: open the message item even without text)."""
        out = []
        if self.message is None and (delta or open_empty):
            out += self._close_thought()
            self.message = _StreamedItem(len(self.items), "message")
            self.items.append(self.message)
            out.append(self.event("response.output_item.added", output_index=self.message.index, item={
                "id": self.message.id, "type": "message", "role": "assistant", "status": "in_progress",
                "content": []}))
            out.append(self.event("response.content_part.added", **self._where(self.message),
                                  part=_output_text("", [] if self.with_logprobs else None)))
        if logprobs and self.message is not None:
            self.message.logprobs += logprobs
        if delta:
            self.message.text += delta
            out.append(self.event("response.output_text.delta", **self._where(self.message), delta=delta,
                                  logprobs=logprobs or []))
        return out

    def call(self, delta: dict[str, Any]) -> list[str]:
        out = []
        function = delta.get("function") or {}
        item = self.calls.get(delta.get("index", 0))
        if item is None:
            out += self._close_thought()
            if self.message is not None:       # text before the call: its message item is finished
                out += self._close(self.message, "completed")
                self.message = None
            item = _StreamedItem(len(self.items), "function_call", call_id=delta.get("id"),
                                 name=function.get("name"))
            self.items.append(item)
            self.calls[delta.get("index", 0)] = item
            out.append(self.event("response.output_item.added", output_index=item.index, item={
                "id": item.id, "type": "function_call", **item.fields, "arguments": "", "status": "in_progress"}))
        piece = function.get("arguments") or ""
        if piece:
            item.text += piece
            out.append(self.event("response.function_call_arguments.delta", item_id=item.id,
                                  output_index=item.index, delta=piece))
        return out

    def _close(self, item: _StreamedItem, status: str) -> list[str]:
        if item.kind == "reasoning":
            part = {"type": "reasoning_text", "text": item.text}
            item.done = {"id": item.id, "type": "reasoning", "summary": [], "content": [part], "status": status}
            return [self.event("response.reasoning_text.done", **self._where(item), text=item.text),
                    self.event("response.reasoning_part.done", **self._where(item), part=part),
                    self.event("response.output_item.done", output_index=item.index, item=item.done)]
        if item.kind == "message":
            part = _output_text(item.text, item.logprobs if self.with_logprobs else None)
            item.done = {"id": item.id, "type": "message", "role": "assistant", "status": status, "content": [part]}
            return [self.event("response.output_text.done", **self._where(item), text=item.text,
                               logprobs=item.logprobs),
                    self.event("response.content_part.done", **self._where(item), part=part),
                    self.event("response.output_item.done", output_index=item.index, item=item.done)]
        item.done = {"id": item.id, "type": "function_call", **item.fields, "arguments": item.text, "status": status}
        return [self.event("response.function_call_arguments.done", item_id=item.id, output_index=item.index,
                           name=item.fields["name"], arguments=item.text),
                self.event("response.output_item.done", output_index=item.index, item=item.done)]

    def close_all(self, status: str) -> list[str]:
        out = []
        for item in self.items:
            if not item.done:
                out += self._close(item, status)
        return out


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
