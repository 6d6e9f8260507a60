"""POST /v1/chat/completions: the conversation rendered by the chat template, then n completions, whole or streamed."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from pagedllm import harmony
from pagedllm.engine import structured_output
from pagedllm.entrypoints.chat_utils import format_message_content
from pagedllm.entrypoints.openai import tool_parsers
from pagedllm.entrypoints.openai.tool_parsers import OpenAIToolParser, ToolParser
from pagedllm.entrypoints.openai.protocol import (BatchChatCompletionRequest, ChatCompletionLogProbs,
                                                  ChatCompletionRequest,
                                                  ChatCompletionResponse, ChatCompletionResponseChoice, ChatLogProb,
                                                  ChatLogProbsContent, ChatMessage, ChatResponseMessage, RequestError,
                                                  UsageInfo)
from pagedllm.entrypoints.openai.serving_engine import (OpenAIServing, clamp_logprob, error_body, error_response,
                                                        dumps, plain_prompt_logprobs, sse, tool_calls_text,
                                                        until_disconnected, usage_dict)
from pagedllm.outputs import Logprob
from pagedllm.reasoning_parsers import HarmonyReasoningParser, ReasoningParser, prompt_ends_reasoning
from pagedllm.sampling_params import SamplingParams, StructuredOutputsParams

logger = logging.getLogger("pagedllm.entrypoints.openai")


def conversation(messages: list[ChatMessage]) -> list[dict]:
    out = []
    for m in messages:
        # Content parts stay parts here: render_chat puts them in the server's --chat-template-content-format.
        d: dict[str, Any] = {"role": m.role, "content": m.content if m.content is not None else ""}
        for key in ("name", "tool_calls", "tool_call_id"):
            value = getattr(m, key)
            if value is not None:
                d[key] = value
        if m.role == "assistant" and m.reasoning is not None:
            d["reasoning"] = d["reasoning_content"] = m.reasoning
        out.append(d)
    return out


@dataclass
class ToolMode:
    """How this request's output becomes tool calls: "none", "auto" (the parser reads the model's format),
    "required" (a constrained JSON array of calls) or "named" (constrained arguments of ``function``).
    ``parallel=False`` (the request's ``parallel_tool_calls: false``): one call at most, as vLLM (the "required"
    constraint allows only one; "auto" keeps the first the parser finds)."""
    kind: str = "none"
    function: dict | None = None
    parallel: bool = True
    tools: list[dict] | None = None         # "auto": the request's, for parsers that type arguments by them


@dataclass
class ReasoningMode:
    """How a request's output splits into reasoning and content (--reasoning-parser): ``done``: the output starts
    as content (the prompt closed the thinking, or the request turned thinking off); ``include``: the request's
    include_reasoning."""
    parser: ReasoningParser
    done: bool
    include: bool = True

    def stream(self):
        return self.parser.stream(self.done)

    def split(self, text: str) -> tuple[str | None, str | None]:
        reasoning, content = self.parser.split(text, self.done)
        return (reasoning if self.include else None), content


class OpenAIServingChat(OpenAIServing):
    def __init__(self, *args, tool_parser: ToolParser | None = None, exclude_tools_when_tool_choice_none: bool = False,
                 reasoning_parser: ReasoningParser | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tool_parser = tool_parser      # --enable-auto-tool-choice --tool-call-parser NAME
        self.exclude_tools_when_tool_choice_none = exclude_tools_when_tool_choice_none
        self.reasoning_parser = reasoning_parser     # --reasoning-parser NAME
        self.think_ids: tuple[int, int] | None = None      # the parser's (start, end) token ids
        if reasoning_parser is not None:
            if self.tokenizer is None:
                raise ValueError("--reasoning-parser needs the tokenizer (it reads the output's text): drop "
                                 "--skip-tokenizer-init.")
            self.think_ids = reasoning_parser.token_ids(self.tokenizer.get_vocab())[:2]
        # gpt-oss's harmony format (--reasoning-parser openai_gptoss, --tool-call-parser openai): one reader of the
        # output's messages gives the reasoning, the content and the calls (vLLM's HarmonyParser).
        harmony_parts = [isinstance(reasoning_parser, HarmonyReasoningParser),
                         isinstance(tool_parser, OpenAIToolParser)]
        self.harmony = any(harmony_parts)
        self.harmony_stop_ids: list[int] = []
        if self.harmony:
            if (reasoning_parser is not None and tool_parser is not None) and not all(harmony_parts):
                raise ValueError("--reasoning-parser openai_gptoss and --tool-call-parser openai read gpt-oss's "
                                 "harmony format: use them together, not with another format's parser.")
            if self.tokenizer is None:
                raise ValueError("The harmony parsers read the output's text: drop --skip-tokenizer-init.")
            vocab = self.tokenizer.get_vocab()
            harmony.check_vocab(vocab, "--reasoning-parser openai_gptoss" if harmony_parts[0]
                                else "--tool-call-parser openai")
            # <|return|> and <|call|> end the output (vLLM adds them to gpt-oss's stop_token_ids).
            self.harmony_stop_ids = [vocab[t] for t in harmony.STOP_TOKENS]
        # gpt-oss: its reasoning efforts. (Its template reads an assistant turn's reasoning as "thinking": HF's
        # apply_chat_template passes it under that name too, so a call turn's analysis renders as vLLM renders it.)
        self.gpt_oss = self.harmony or getattr(self.engine.config.hf_config, "model_type", None) == "gpt_oss"

    def reasoning_mode(self, req: ChatCompletionRequest, prompt_ids: list[int]) -> ReasoningMode | None:
        """The request's reasoning split, or None without a reasoning parser. The parser's thinking switches are
        read from the chat template kwargs the template saw (the server's defaults under the request's own)."""
        parser = self.reasoning_parser
        if parser is None:
            return None
        kwargs = {**self.default_chat_template_kwargs, **(req.template_kwargs() or {})}
        # A harmony output always opens with its analysis channel (the prompt ends at "<|start|>assistant").
        done = not parser.thinking(kwargs) or (not self.harmony and prompt_ends_reasoning(prompt_ids, *self.think_ids))
        return ReasoningMode(parser, done, req.include_reasoning)

    def tool_mode(self, req: ChatCompletionRequest) -> ToolMode:
        if req.tools is not None and not req.tools:
            raise RequestError("`tools` must not be an empty array. Either provide at least one tool or omit the "
                               "field entirely.", "tools")
        if req.tools:
            tool_parsers.functions_by_name(req.tools)      # the tools' shape, whatever tool_choice is
        choice = req.tool_choice
        parallel = req.parallel_tool_calls is not False
        if choice is None and req.tools and "tool_choice" not in req.model_fields_set:
            choice = "auto"         # OpenAI's and vLLM's default with tools (an explicit null stays "none")
        if choice is None or choice == "none":
            return ToolMode()
        if not req.tools:
            raise RequestError("When using `tool_choice`, `tools` must be set.", "tool_choice")
        if choice == "auto":
            if self.tool_parser is None:
                raise RequestError('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser '
                                   'to be set', "tool_choice")
            return ToolMode("auto", parallel=parallel, tools=req.tools)
        if choice == "required":
            tool_parsers.required_schema(req.tools)      # checks the tools
            return ToolMode("required", parallel=parallel)
        return ToolMode("named", tool_parsers.named_tool(req.tools, choice))

    def tool_constraint(self, req: ChatCompletionRequest, mode: ToolMode) -> StructuredOutputsParams | None:
        """Forced calls are enforced by the JSON-schema constraint; "auto" with a strict tool by the parser's
        structural tag (unless the request constrains the output itself); otherwise the request's own constraint."""
        if mode.kind == "auto" and req.structured_output_fields() is None:
            tag = tool_parsers.strict_structural_tag(self.tool_parser, req.tools, mode.parallel)
            if tag is not None:
                return self._checked_tool_constraint(StructuredOutputsParams(structural_tag=json.dumps(tag)))
        if mode.kind not in ("named", "required"):
            return self.structured_outputs(req)
        if req.structured_output_fields() is not None:
            # vLLM's words (a named tool with structured_outputs); the JSON the calls are written in is the constraint.
            raise RequestError(f"You can only either use constraints for structured outputs or tools, not both "
                               f"(tool_choice={mode.kind!r} constrains the output itself: drop response_format / "
                               f"structured_outputs / guided_* from the request).", "tool_choice")
        schema = (tool_parsers.parameters_schema(mode.function) if mode.kind == "named"
                  else tool_parsers.required_schema(req.tools, mode.parallel))
        return self._checked_tool_constraint(StructuredOutputsParams(json=schema))

    def _checked_tool_constraint(self, so: StructuredOutputsParams) -> StructuredOutputsParams:
        try:
            structured_output.validate(so)
        except ValueError as e:
            raise RequestError(f"The tool's parameters schema: {e}", "tools") from None
        return so

    def keep_call_markers(self, mode: ToolMode, params: SamplingParams) -> None:
        """tool_choice="auto" with a parser whose call marker is a special token (mistral's [TOOL_CALLS]): the text
        keeps special tokens, else the marker is dropped and no call is ever found (vLLM does the same)."""
        if mode.kind == "auto" and self.tool_parser.keeps_special_tokens:
            params.skip_special_tokens = False

    def tool_calls(self, mode: ToolMode, text: str, finish_reason: str | None) -> tuple[str | None, list, str | None]:
        """(content, tool_calls, finish_reason) of a finished choice."""
        # A named or "required" call's message has empty content beside its tool_calls, "" not null (vLLM's).
        if mode.kind == "named":
            return "", [tool_parsers.tool_call(mode.function["name"], text)], finish_reason
        if mode.kind == "required":
            try:
                calls = tool_parsers.calls_from_required(text)
                return "", calls if mode.parallel else calls[:1], "tool_calls"
            except (ValueError, KeyError, TypeError):
                # Cut by max_tokens, not a whole JSON array: no calls and empty content, as vLLM (the partial
                # array is not an answer; a stream has sent its calls as far as they went).
                return "", [], finish_reason
        if mode.kind == "auto":
            content, calls = self.tool_parser.extract(text, mode.tools)
            if not mode.parallel:
                calls = calls[:1]
            if calls:
                return content, calls, "tool_calls"
        return text, [], finish_reason

    def check_harmony(self, req: ChatCompletionRequest, so: StructuredOutputsParams | None) -> None:
        """What gpt-oss's format cannot take here, refused by name (vLLM refuses reasoning_effort "none" too)."""
        if self.gpt_oss and req.reasoning_effort not in (None, "low", "medium", "high"):
            raise RequestError(f"reasoning_effort={req.reasoning_effort!r}: gpt-oss's harmony format has the levels "
                               f"'low', 'medium' and 'high'.", "reasoning_effort")
        if self.harmony and so is not None:
            raise RequestError("response_format / structured_outputs and tool_choice 'required' or a named tool "
                               "constrain the output from its first token, which gpt-oss's harmony format opens "
                               "with its analysis channel: not supported with the harmony parsers yet (use "
                               "tool_choice 'auto').", "tool_choice" if req.tools else "response_format")
        if self.harmony and req.thinking_token_budget is not None:
            raise RequestError("thinking_token_budget is not supported with gpt-oss's harmony format yet (no single "
                               "token ends its analysis channel).", "thinking_token_budget")

    def harmony_message(self, text: str, mode: ToolMode, reasoning: "ReasoningMode | None",
                        finish_reason: str | None) -> tuple[str | None, str | None, list, str | None]:
        """(reasoning, content, tool_calls, finish_reason) of a finished harmony output: reasoning only with
        --reasoning-parser openai_gptoss, calls only under tool_choice "auto" with --tool-call-parser openai (vLLM
        drops either kind without its parser)."""
        out = harmony.split(text)
        thought = out.reasoning if reasoning is not None and reasoning.include else None
        calls = self.tool_parser.extract(text, mode.tools)[1] if mode.kind == "auto" else []
        calls = calls if mode.parallel else calls[:1]
        return thought, out.content, calls, ("tool_calls" if calls else finish_reason)

    async def create_chat_completion(self, req: ChatCompletionRequest, raw_request: Request | None = None):
        try:
            req.check()
            lora = self.check_model(req.model)
            mode = self.tool_mode(req)
            so = self.tool_constraint(req, mode)
            self.check_harmony(req, so)
            conv = conversation(req.messages)
            # The tools reach the template whatever tool_choice is, unless --exclude-tools-when-tool-choice-none.
            tools = (None if self.exclude_tools_when_tool_choice_none and req.tool_choice == "none"
                     else tool_parsers.template_tools(req.tools))
            images: list = []
            ids = await self.render_chat(
                conv, chat_template=req.chat_template, add_generation_prompt=req.add_generation_prompt,
                continue_final_message=req.continue_final_message, tools=tools,
                chat_template_kwargs=req.template_kwargs(), add_special_tokens=req.add_special_tokens,
                documents=req.documents, images=images)
            prompt: dict = {"prompt_token_ids": ids}
            if images:
                if req.truncate_prompt_tokens is not None:
                    raise RequestError("truncate_prompt_tokens with images is not supported (it could cut an "
                                       "image's placeholder tokens).", "truncate_prompt_tokens")
                if req.use_beam_search:
                    raise RequestError("use_beam_search with images is not supported yet.", "use_beam_search")
                prompt = await self.with_chat_images(ids, images, req.mm_processor_kwargs)   # ids expanded
                ids = prompt["prompt_token_ids"]
            ids = self.truncated(ids, req.truncate_prompt_tokens, req.truncation_side)
            reasoning = self.reasoning_mode(req, ids)
            field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
            max_tokens = self.resolve_max_tokens(len(ids), getattr(req, field), field)
            logprobs = (req.top_logprobs or 0) if req.logprobs else None
            request_id = f"chatcmpl-{self.base_request_id(raw_request, req.request_id)}"
            if req.use_beam_search:
                if so is not None:      # a forced or strict tool call is a constraint beam search does not apply
                    raise RequestError(f"tool_choice={mode.kind!r} constrains the output, which use_beam_search "
                                       f"does not apply: drop one of them.", "tool_choice")
                streams = self.beam_search_streams([request_id], [ids], [max_tokens], req, lora)
            else:
                params = self.sampling_params(req, max_tokens, logprobs, structured_outputs=so)
                self.keep_call_markers(mode, params)
                if self.harmony:
                    params.skip_special_tokens = False      # the harmony markers are special tokens
                    params.stop_token_ids = list(dict.fromkeys([*params.stop_token_ids, *self.harmony_stop_ids]))
                reasoning_ended = None
                if reasoning is not None:
                    if reasoning.parser.keeps_special_tokens:
                        params.skip_special_tokens = False      # vLLM's qwen3 parser asks the same of every request
                    # The grammar (if any) starts after the thinking; from the first token when there is none, or
                    # when the request drops the reasoning anyway (vLLM's include_reasoning=false).
                    reasoning_ended = reasoning.done or not reasoning.include
                prompt["prompt_token_ids"] = ids
                if req.cache_salt is not None:
                    prompt["cache_salt"] = req.cache_salt   # prefix-cache isolation: only the same salt shares KV
                streams = await self.submit([request_id], [prompt], [params], req.priority, reasoning_ended,
                                            lora_request=lora)
        except Exception as e:
            if isinstance(e, RequestError) and e.param == "logprobs":
                e.param = "top_logprobs"     # chat's logprobs is a flag: the count that was too big is top_logprobs
            return error_response(e)
        role = self.response_role if req.add_generation_prompt else req.messages[-1].role
        echo = ""
        if req.echo and conv and conv[-1]["role"] == role:
            # Content parts echo as text: the text parts joined by newlines (vLLM's echo), not the list of parts.
            echo = format_message_content(conv[-1:], "string", images=[])[0]["content"] or ""
        created = int(time.time())
        if req.stream:
            return StreamingResponse(self._stream(req, request_id, created, ids, streams[0], role, echo, mode,
                                                  reasoning), media_type="text/event-stream")
        result = await until_disconnected(self._gather(req, request_id, created, ids, streams[0], role, echo, mode,
                                                       reasoning), raw_request)
        if result is None:
            return JSONResponse(error_body("Client disconnected", "ClientDisconnected", 499), status_code=499)
        return result

    async def create_batch_chat_completion(self, req: BatchChatCompletionRequest,
                                           raw_request: Request | None = None) -> JSONResponse:
        """/v1/chat/completions/batch: every conversation goes in as its own chat request (engine request ids
        ``chatcmpl-<id>_<i>``, as vLLM's), all at once so the scheduler batches them; the answer is one chat
        completion whose choice ``i`` is conversation ``i``'s and whose usage is the sum. The first failing
        conversation's error is the answer."""
        try:
            req.check()
            self.check_model(req.model)
            base = self.base_request_id(raw_request, req.request_id)
            singles = [req.conversation_request(i, f"{base}_{i}") for i in range(len(req.messages))]
        except Exception as e:
            return error_response(e)
        answers = await asyncio.gather(*(self.create_chat_completion(single, raw_request) for single in singles))
        failed = next((a for a in answers if a.status_code != 200), None)
        if failed is not None:
            return failed
        bodies = [json.loads(a.body) for a in answers]
        choices = [{**body["choices"][0], "index": i} for i, body in enumerate(bodies)]
        usage = {key: sum(b["usage"][key] for b in bodies)
                 for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
        cached = sum((b["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0) for b in bodies)
        usage["prompt_tokens_details"] = self.prompt_tokens_details(cached)
        return JSONResponse({**bodies[0], "id": f"chatcmpl-{base}", "choices": choices, "usage": usage,
                             "prompt_token_ids": None})

    # ---- logprobs -------------------------------------------------------------------------------------------------
    def _logprobs(self, token_ids: list[int], entries: list[dict[int, Logprob]], k: int,
                  as_ids: bool = False) -> ChatCompletionLogProbs:
        content = []
        for tid, entry in zip(token_ids, entries):
            chosen = entry.get(tid)
            tok = self.token_str(tid, chosen.decoded_token if chosen else None, as_ids)
            # OpenAI's top_logprobs: the k most likely tokens, best first (the sampled one may not be among them);
            # k = -1: all of them (the whole vocabulary).
            ranked = sorted(((l.rank if l.rank is not None else 1 << 30, t, l) for t, l in entry.items()),
                            key=lambda x: x[0])[:k if k >= 0 else None]
            top = [ChatLogProb(token=(s := self.token_str(t, l.decoded_token, as_ids)),
                               logprob=clamp_logprob(l.logprob), bytes=list(s.encode("utf-8", errors="replace")))
                   for _, t, l in ranked]
            content.append(ChatLogProbsContent(
                token=tok, logprob=clamp_logprob(chosen.logprob) if chosen else -9999.0,
                bytes=list(tok.encode("utf-8", errors="replace")), top_logprobs=top))
        return ChatCompletionLogProbs(content=content)

    # ---- whole response -------------------------------------------------------------------------------------------
    async def _gather(self, req: ChatCompletionRequest, request_id: str, created: int, prompt_ids: list[int], stream,
                      role: str, echo: str, mode: ToolMode = ToolMode(),
                      reasoning_mode: ReasoningMode | None = None) -> JSONResponse:
        n = req.n
        texts = [""] * n
        tokens: list[list[int]] = [[] for _ in range(n)]
        lps: list[list] = [[] for _ in range(n)]
        finish: list[tuple] = [(None, None)] * n
        prompt_logprobs = None
        cached = 0
        try:
            async for out in stream:
                cached = out.num_cached_tokens or 0
                if out.prompt_logprobs is not None:
                    prompt_logprobs = out.prompt_logprobs
                for c in out.outputs:
                    texts[c.index] += c.text
                    tokens[c.index] += c.token_ids
                    if c.logprobs:
                        lps[c.index] += c.logprobs
                    if c.finish_reason is not None:
                        finish[c.index] = (c.finish_reason, c.stop_reason)
        except Exception as e:
            return error_response(e)
        finally:
            stream.abort()
        return_ids = bool(req.return_token_ids) or self.tokenizer is None
        choices = []
        for i in range(n):
            logprobs = (self._logprobs(tokens[i], lps[i], req.top_logprobs or 0, self.tokens_as_ids(req))
                        if req.logprobs else None)
            reasoning, text = None, texts[i]
            if self.harmony:
                reasoning, content, calls, finish_reason = self.harmony_message(texts[i], mode, reasoning_mode,
                                                                                finish[i][0])
            else:
                if reasoning_mode is not None:      # the tool parser sees only what follows the thinking
                    reasoning, text = reasoning_mode.split(texts[i])
                if text is None:        # the output ended while thinking (or right after it)
                    content, calls, finish_reason = (None if mode.kind in ("none", "auto") else ""), [], finish[i][0]
                else:
                    content, calls, finish_reason = self.tool_calls(mode, text, finish[i][0])
            if content is not None:
                content = echo + content
            if self.log_outputs and (content or calls or reasoning):
                self.log_output(request_id, content or tool_calls_text(calls) or f"[reasoning: {reasoning}]",
                                tokens[i], finish_reason)
            choices.append(ChatCompletionResponseChoice(
                index=i, message=ChatResponseMessage(role=role, content=content, tool_calls=calls,
                                                     reasoning=reasoning),
                logprobs=logprobs, finish_reason=finish_reason, stop_reason=finish[i][1],
                token_ids=tokens[i] if return_ids else None))
        generated = sum(len(t) for t in tokens)
        usage = UsageInfo(prompt_tokens=len(prompt_ids), completion_tokens=generated,
                          total_tokens=len(prompt_ids) + generated,
                          prompt_tokens_details=self.prompt_tokens_details(cached, req._cached_tokens_always))
        resp = ChatCompletionResponse(id=request_id, created=created, model=self.models.response_model(req.model), choices=choices,
                                      usage=usage,
                                      prompt_token_ids=prompt_ids if return_ids else None)
        exclude: dict = {"choices": {"__all__": {"token_ids"}}} if not return_ids else {}
        data = resp.model_dump(exclude=exclude or None)
        if req.prompt_logprobs is None:
            data.pop("prompt_logprobs", None)
        else:
            data["prompt_logprobs"] = plain_prompt_logprobs(prompt_logprobs)
        if not return_ids:
            data.pop("prompt_token_ids", None)
        return JSONResponse(data)

    # ---- streaming ------------------------------------------------------------------------------------------------
    async def _stream(self, req: ChatCompletionRequest, request_id: str, created: int, prompt_ids: list[int], stream,
                      role: str, echo: str, mode: ToolMode = ToolMode(),
                      reasoning_mode: ReasoningMode | None = None) -> AsyncIterator[str]:
        n = req.n
        include_usage, continuous = self.stream_usage(req)
        return_ids = bool(req.return_token_ids) or self.tokenizer is None
        num_prompt = len(prompt_ids)
        num_generated = [0] * n      # per choice: continuous usage counts the tokens of the chunk's choice (vLLM)
        cached = 0
        finished_sent = [False] * n
        tool_stream = ToolCallStream(self, mode, n, thinks=reasoning_mode is not None)
        full_texts = [""] * n        # --enable-log-outputs: each choice's text, logged when the stream ends
        # --reasoning-parser: each choice's split; "reasoning" deltas while the model thinks, then "content" ones
        # (the think tags themselves never go out).
        thinking = ([reasoning_mode.stream() for _ in range(n)]
                    if reasoning_mode is not None and not self.harmony else None)
        harmony_deltas = ([HarmonyDeltas(tool_stream, i, reasoning_mode is not None and reasoning_mode.include)
                           for i in range(n)] if self.harmony else None)

        head = (f'data: {{"id":{dumps(request_id)},"object":"chat.completion.chunk","created":{created},'
                f'"model":{dumps(self.models.response_model(req.model))},"choices":[')
        null_usage = ',"usage":null' if include_usage else ''

        def chunk(choice: dict | str, index: int, fields: str = "") -> str:
            # Built as text: this runs once per token per stream. fields: more top-level ',"key":value' pairs.
            body = choice if isinstance(choice, str) else dumps(choice)
            usage = null_usage
            if continuous:
                counts = usage_dict(num_prompt, num_generated[index],
                                    self.prompt_tokens_details(cached, req._cached_tokens_always))
                usage = f',"usage":{dumps(counts)}'
            return f'{head}{body}]{usage}{fields}}}\n\n'

        try:
            # First chunk of each choice: the role (and the echoed text, if asked).
            # return_token_ids: the prompt's ids ride on the role chunk (vLLM's stream), as on the whole response.
            prompt_fields = f',"prompt_token_ids":{dumps(prompt_ids)}' if return_ids else ""
            for i in range(n):
                yield chunk({"index": i, "delta": {"role": role, "content": ""}, "logprobs": None,
                             "finish_reason": None}, i, prompt_fields)
                if echo:
                    yield chunk({"index": i, "delta": {"content": echo}, "logprobs": None, "finish_reason": None}, i)
            async for out in stream:
                cached = out.num_cached_tokens or 0
                for c in out.outputs:
                    if finished_sent[c.index]:
                        continue
                    token_ids = list(c.token_ids)
                    if not c.text and not token_ids and c.finish_reason is None:
                        continue
                    num_generated[c.index] += len(token_ids)
                    if self.log_outputs:
                        full_texts[c.index] += c.text
                    logprobs = None
                    if req.logprobs:
                        logprobs = self._logprobs(token_ids, c.logprobs or [], req.top_logprobs or 0,
                                                  self.tokens_as_ids(req)).model_dump()
                    text, thought = c.text, ""
                    if thinking is not None:
                        thought, text = thinking[c.index].feed(c.text, final=c.finish_reason is not None)
                        if not reasoning_mode.include:
                            thought = ""
                    if mode.kind != "none" or thinking is not None or harmony_deltas is not None:
                        if c.finish_reason is not None:
                            finished_sent[c.index] = True
                        if harmony_deltas is not None:
                            delta, finish_reason = harmony_deltas[c.index].delta(c.text, c.finish_reason)
                        elif mode.kind != "none":
                            delta, finish_reason = tool_stream.delta(c.index, text, c.finish_reason)
                        else:
                            delta, finish_reason = ({"content": text} if text else None), c.finish_reason
                        if thought:
                            delta = {"reasoning": thought, **(delta or {})}
                        if delta is None:
                            if c.finish_reason is None and not return_ids:
                                continue
                            delta = {}
                        if self.log_outputs and self.log_deltas:
                            self._log_delta(request_id, delta, token_ids, c.finish_reason)
                        choice = {"index": c.index, "delta": delta, "logprobs": logprobs,
                                  "finish_reason": finish_reason, "stop_reason": c.stop_reason}
                        if return_ids:
                            choice["token_ids"] = token_ids
                        yield chunk(choice, c.index)
                        continue
                    choice = (f'{{"index":{c.index},"delta":{{"content":{dumps(c.text)}}},'
                              f'"logprobs":{dumps(logprobs)},"finish_reason":{dumps(c.finish_reason)},'
                              f'"stop_reason":{dumps(c.stop_reason)}')
                    choice += f',"token_ids":{dumps(token_ids)}}}' if return_ids else '}'
                    if c.finish_reason is not None:
                        finished_sent[c.index] = True
                    if self.log_outputs and self.log_deltas and c.text:
                        self.log_output(request_id, c.text, token_ids, c.finish_reason, "delta")
                    yield chunk(choice, c.index)
            if self.log_outputs:
                for text in full_texts:
                    self.log_output(request_id, text, None, "streaming_complete", "complete")
            if include_usage:
                yield sse({"id": request_id, "object": "chat.completion.chunk", "created": created,
                           "model": self.models.response_model(req.model), "choices": [],
                           "usage": usage_dict(num_prompt, sum(num_generated),
                                               self.prompt_tokens_details(cached, req._cached_tokens_always))})
        except Exception as e:
            logger.warning("Error while streaming %s: %r", request_id, e)
            yield f"data: {error_response(e).body.decode()}\n\n"
        finally:
            stream.abort()
        yield "data: [DONE]\n\n"

    def _log_delta(self, request_id: str, delta: dict, token_ids: list[int], finish_reason: str | None) -> None:
        """A tool-mode or reasoning delta in the output log: its content, reasoning and the pieces of call arguments
        (vLLM's form)."""
        parts = [delta["content"]] if delta.get("content") else []
        if delta.get("reasoning"):
            parts.append(f"[reasoning: {delta['reasoning']}]")
        args = "".join((call.get("function") or {}).get("arguments") or "" for call in delta.get("tool_calls", ()))
        if args:
            parts.append(f"[tool_calls: {args}]")
        if parts:
            self.log_output(request_id, " ".join(parts), token_ids, finish_reason, "delta")


class HarmonyDeltas:
    """One choice's harmony output as stream deltas: "reasoning" pieces (with --reasoning-parser openai_gptoss),
    "content" pieces, and under tool_choice "auto" its calls as ``ToolCallStream`` sends them (the arguments in the
    finished response's JSON form, piece by piece). Messages of one kind are joined by a newline, as in the finished
    response, so the pieces add up to it."""

    def __init__(self, tool_stream: "ToolCallStream", index: int, reasoning: bool):
        self.reader = harmony.HarmonyStream()
        self.tool_stream = tool_stream
        self.index = index
        self.reasoning = reasoning
        self.wrote: dict[str, int] = {}           # kind -> the last message of that kind with text sent
        self.calls: dict[int, list] = {}          # message number -> [function name, arguments so far, content type]
        self.done_calls: set[int] = set()

    def delta(self, text: str, finish_reason: str | None) -> tuple[dict | None, str | None]:
        delta: dict[str, Any] = {}
        calls_wanted = self.tool_stream.mode.kind == "auto"
        for number, message, piece in self.reader.feed(text, final=finish_reason is not None):
            kind = message.kind
            if kind == "call" and calls_wanted:
                call = self.calls.setdefault(number, [message.function_name, "", message.content_type])
                call[1] += piece
                if message.done or finish_reason is not None:
                    self.done_calls.add(number)
            elif (kind == "content" or (kind == "reasoning" and self.reasoning)) and piece:
                key = "content" if kind == "content" else "reasoning"
                if self.wrote.get(key, number) != number:
                    piece = "\n" + piece       # a later message of the kind: joined by a newline
                self.wrote[key] = number
                delta[key] = delta.get(key, "") + piece
        if calls_wanted and self.calls:
            calls = []
            for number, (name, args, content_type) in self.calls.items():
                if number in self.done_calls:
                    value = harmony.normalized_arguments(args, content_type)
                    stable = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                else:
                    stable = tool_parsers.render_stable_json(args, tool_parsers.parse_partial_json(args, 0))
                calls.append((name, stable))
            if not self.tool_stream.mode.parallel:
                calls = calls[:1]
            call_deltas = self.tool_stream._call_deltas(self.index, calls)
            if call_deltas:
                delta["tool_calls"] = call_deltas
        if finish_reason is not None and self.calls and calls_wanted:
            finish_reason = "tool_calls"
        return (delta or None), finish_reason


class ToolCallStream:
    """Tool calls as stream deltas, as OpenAI and vLLM send them: the first delta of each call carries its index, id,
    type and function name; later deltas carry pieces of its JSON arguments as they are generated. Named: the
    output is the arguments. Required: the output is a JSON array of calls. Auto: the content before the calls
    streams as content, then the calls the parser finds (``ToolParser.call_nodes``). The finishing delta sends what
    the finished output adds (the non-streamed response's calls), so the pieces concatenate to its arguments."""

    def __init__(self, serving: OpenAIServingChat, mode: ToolMode, n: int, thinks: bool = False):
        self.serving = serving
        self.mode = mode
        # --reasoning-parser: the text here is what follows the thinking; none at the end (cut while thinking)
        # means no call, as in the non-streamed message.
        self.thinks = thinks
        self.texts = [""] * n          # everything generated so far, per choice
        self.sent = [0] * n            # how much of it went out as content / arguments
        self.call_ids: list[str | None] = [None] * n
        self.args_sent: list[list[str]] = [[] for _ in range(n)]   # per choice: the arguments sent, per call

    def delta(self, index: int, text: str, finish_reason: str | None) -> tuple[dict | None, str | None]:
        self.texts[index] += text
        full = self.texts[index]
        if self.mode.kind == "named":
            piece = full[self.sent[index]:]
            if not piece and finish_reason is None:     # nothing yet (the model may still be thinking)
                return None, None
            if not full and self.thinks:                # it ended while thinking: no call to announce
                return None, finish_reason
            self.sent[index] = len(full)
            call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
            if self.call_ids[index] is None:
                first = tool_parsers.tool_call(self.mode.function["name"], piece)
                self.call_ids[index] = first["id"]
                call = {"index": 0, **first}
            return {"tool_calls": [call]}, finish_reason
        if finish_reason is None:
            delta: dict[str, Any] = {}
            if self.mode.kind == "required":
                calls = tool_parsers.stream_calls(full, tool_parsers.required_call_nodes(full))
            else:
                parser = self.serving.tool_parser
                upto = parser.call_start(full)
                if upto > self.sent[index]:
                    delta["content"] = full[self.sent[index]:upto]
                    self.sent[index] = upto
                calls = parser.partial_calls(full, self.mode.tools) if upto < len(full) else []
            if not self.mode.parallel:
                calls = calls[:1]
            call_deltas = self._call_deltas(index, calls)
            if call_deltas:
                delta["tool_calls"] = call_deltas
            return (delta or None), None
        content, calls, finish = self.serving.tool_calls(self.mode, full, finish_reason)
        delta = {}
        if calls:
            final = [(c["function"]["name"], c["function"]["arguments"]) for c in calls]
            call_deltas = self._call_deltas(index, final, ids=[c["id"] for c in calls])
            if call_deltas:
                delta["tool_calls"] = call_deltas
            held = content[self.sent[index]:] if content and len(content) > self.sent[index] else ""
        elif self.args_sent[index]:
            # Calls already went out as deltas but the finished text does not parse (cut by max_tokens): the text
            # from the calls on is not sent again as content, as vLLM's stream (the streamed calls stand).
            held = ""
        else:
            held = (content or "")[self.sent[index]:]
        if held:
            delta["content"] = held
        return delta, finish

    def _call_deltas(self, index: int, calls: list[tuple[str, str]], ids: list[str] | None = None) -> list[dict]:
        """The deltas that bring the calls sent so far up to ``calls`` (name, arguments so far)."""
        sent = self.args_sent[index]
        out = []
        for k, (name, args) in enumerate(calls):
            if k == len(sent):          # a new call: its header, with the arguments known so far
                if ids is not None:
                    call_id = ids[k]
                elif self.mode.kind == "auto":
                    call_id = self.serving.tool_parser.new_call_id()
                else:
                    call_id = None
                call = tool_parsers.tool_call(name, args, call_id)
                out.append({"index": k, **call})
                sent.append(args)
            elif len(args) > len(sent[k]):
                if not args.startswith(sent[k]):    # not expected for JSON the parser reads (duplicate keys)
                    logger.warning("Streamed tool-call arguments %r are not a prefix of %r", sent[k], args)
                    continue
                out.append({"index": k, "function": {"arguments": args[len(sent[k]):]}})
                sent[k] = args
        return out
