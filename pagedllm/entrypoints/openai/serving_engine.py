"""What every OpenAI endpoint shares: the model-name check, tokenization off the event loop, building
SamplingParams from a request, the context-length check, request logs, error bodies, and waiting for outputs while
watching for a client that went away."""
from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from typing import Any, AsyncIterator, Awaitable, Sequence

from fastapi import Request
from fastapi.responses import JSONResponse

from pagedllm.engine.async_engine import (AsyncLLMEngine, EngineDeadError, EngineShutdownError, EngineSleepingError,
                                          RequestStream)
from pagedllm.entrypoints.chat_utils import (TEMPLATE_FAILED, ChatTemplateError, apply_chat_template,
                                             check_chat_template_kwargs, format_message_content)
from pagedllm.entrypoints.media import load_image
from pagedllm.entrypoints.openai.protocol import RequestError, SamplingFields, check_request_id, random_uuid
from pagedllm.entrypoints.openai.serving_models import ServingModels
from pagedllm.engine.input_processor import context_overflow_message
from pagedllm.lora.request import LoRARequest
from pagedllm.engine import structured_output
from pagedllm.logger import printable_id
from pagedllm.entrypoints.beam_search import beam_search_async, check_logprobs_mode
from pagedllm.outputs import CompletionOutput, RequestOutput
from pagedllm.sampling_params import (MAX_N, BeamSearchParams, RepetitionDetectionParams, RequestOutputKind,
                                      SamplingParams, StructuredOutputsParams)

logger = logging.getLogger("pagedllm.entrypoints.openai")

# Request fields that SamplingParams' messages may name (longest first so "top_logprobs" wins over "logprobs").
_SAMPLING_FIELDS = sorted([
    "n", "best_of", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "top_k",
    "min_p", "seed", "stop", "stop_token_ids", "max_tokens", "min_tokens", "logprobs", "prompt_logprobs",
    "logit_bias", "allowed_token_ids", "bad_words", "truncate_prompt_tokens", "max_completion_tokens", "top_logprobs",
    "priority",     # the engine's "Got priority N but Priority scheduling is not enabled"
    "ignore_eos", "detokenize", "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output",
    "output_kind", "extra_args", "vllm_xargs", "cache_salt", "structured_outputs", "thinking_token_budget",
], key=len, reverse=True)


def error_body(message: str, type: str = "BadRequestError", code: int = 400, param: str | None = None) -> dict:
    # A message may quote the request, lone surrogates ("\\ud800") and all: written as escapes, the JSON encodes.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(e: BaseException) -> JSONResponse:
    if isinstance(e, RequestError):
        return JSONResponse(error_body(e.message, e.type, e.code, e.param), status_code=e.code)
    if isinstance(e, (EngineDeadError, EngineShutdownError, EngineSleepingError)):   # cannot serve it now: 503
        return JSONResponse(error_body(str(e), "ServiceUnavailableError", 503), status_code=503)
    if isinstance(e, (ValueError, TypeError, NotImplementedError)):
        return JSONResponse(error_body(str(e), "BadRequestError", 400, guess_param(str(e))), status_code=400)
    logger.exception("Unexpected error while serving a request", exc_info=e)
    return JSONResponse(error_body(f"{type(e).__name__}: {e}", "InternalServerError", 500), status_code=500)


def guess_param(message: str) -> str | None:
    """The request field a SamplingParams / engine message is about ("max_tokens must be at least 1" -> max_tokens)."""
    if message.startswith("prompt contains invalid Unicode"):
        return "prompt"
    if message.startswith("Requested prompt logprobs"):      # SamplingParams' words for prompt_logprobs
        return "prompt_logprobs"
    best = None
    for name in _SAMPLING_FIELDS:
        m = re.search(rf"(?<![A-Za-z_]){re.escape(name)}(?![A-Za-z_])", message)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), name)
    return best[1] if best else None


_encoder = json.JSONEncoder(separators=(",", ":"))
_encode_str = json.encoder.encode_basestring_ascii     # what _encoder.encode does for a str (C, ensure_ascii)


def dumps(value: Any) -> str:
    """Compact JSON (what every SSE chunk is made of). A streamed chunk's fields are mostly a str or None: those
    skip the encoder's generic path (for None it builds and joins a chunk list), the same text for ~1/4 of the
    cost; ~5% of the API server's CPU in a streamed run (docs/perf.md, session 35 (CPU))."""
    if value is None:
        return "null"
    if type(value) is str:
        return _encode_str(value)
    return _encoder.encode(value)


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else dumps(data)}\n\n"


def clamp_logprob(value: float) -> float:
    """JSON has no -inf: OpenAI/vLLM report -9999.0 for impossible tokens."""
    return max(value, -9999.0) if not math.isnan(value) else -9999.0


def usage_dict(prompt_tokens: int, completion_tokens: int, prompt_tokens_details: dict | None = None) -> dict:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens, "prompt_tokens_details": prompt_tokens_details}


def plain_prompt_logprobs(prompt_logprobs) -> list | None:
    """RequestOutput.prompt_logprobs as JSON (vLLM's shape: per position None or {token_id: {logprob, rank,
    decoded_token}})."""
    if prompt_logprobs is None:
        return None
    return [None if entry is None else
            {tid: {"logprob": clamp_logprob(l.logprob), "rank": l.rank, "decoded_token": l.decoded_token}
             for tid, l in entry.items()} for entry in prompt_logprobs]


class OpenAIServing:
    def __init__(self, engine: AsyncLLMEngine, served_model_names: Sequence[str], *, tokenizer: Any,
                 chat_template: str | None = None, response_role: str = "assistant", log_requests: bool = True,
                 max_log_len: int | None = None, log_outputs: bool = False, log_deltas: bool = True,
                 default_chat_template_kwargs: dict | None = None,
                 trust_request_chat_template: bool = False,
                 max_n: int = MAX_N, max_prompts_per_request: int | None = None,
                 enable_prompt_tokens_details: bool = False, chat_template_content_format: str = "auto",
                 return_tokens_as_token_ids: bool = False, enable_force_include_usage: bool = False):
        self.engine = engine
        self.served_model_names = list(served_model_names)
        self.model_name = self.served_model_names[0]
        # The base model's names and the LoRA adapters a request's "model" may name; build_app gives every
        # endpoint the same one.
        config = engine.config
        self.models = ServingModels(engine, self.served_model_names, engine.engine_args.model,
                                    "generate" if not config.is_pooling
                                    else "token_classify" if config.model.is_token_classifier
                                    else "classify" if config.model.is_classifier else "embed")
        self.tokenizer = tokenizer     # the engine's input tokenizer (the output processor decodes with another)
        self.chat_template = chat_template
        self.response_role = response_role
        self.log_requests = log_requests
        self.max_log_len = max_log_len
        self.log_outputs = log_outputs and log_requests     # --enable-log-outputs (needs --enable-log-requests)
        self.log_deltas = log_deltas                        # --no-enable-log-deltas: streams log only their end
        self.default_chat_template_kwargs = default_chat_template_kwargs or {}   # under the request's own
        self.trust_request_chat_template = trust_request_chat_template
        self.max_n = max_n
        self.max_prompts_per_request = max_prompts_per_request
        self.enable_prompt_tokens_details = enable_prompt_tokens_details
        # --chat-template-content-format: how a message's content reaches the template ("auto" / "string": text
        # parts joined into one string; "openai": a list of {"type": "text", "text": ...} parts).
        self.chat_template_content_format = chat_template_content_format
        self.return_tokens_as_token_ids = return_tokens_as_token_ids
        self.enable_force_include_usage = enable_force_include_usage
        self.max_model_len = engine.config.max_model_len
        self.vocab_size = engine.vocab_size
        self.default_params = engine.default_sampling_params()
        gen = engine.config.model.generation_config or {}
        self.default_max_tokens = gen.get("max_new_tokens")
        # vLLM's override_max_tokens: a cap on every request's max_tokens, given or defaulted (completions' 16 too):
        # --override-generation-config's max_new_tokens, or a --generation-config folder's (merged with it).
        source = engine.config.args.generation_config
        self.override_max_tokens = (gen if source not in ("auto", "vllm")
                                    else engine.config.args.override_generation_config or {}).get("max_new_tokens")

    @staticmethod
    def base_request_id(raw_request: Request | None, body_request_id: str | None) -> str:
        """vLLM's rule: an X-Request-Id header names the request (so a gateway's id reaches the logs and the response
        id), else the body's request_id, else a random id."""
        header = raw_request.headers.get("x-request-id") if raw_request is not None else None
        if header is not None:
            return check_request_id(header, "X-Request-Id")
        return body_request_id or random_uuid()

    def prompt_tokens_details(self, cached_tokens: int, always: bool = False) -> dict | None:
        """usage.prompt_tokens_details: with --enable-prompt-tokens-details (or ``always``) and a prefix-cache hit,
        the prompt tokens the cache supplied (vLLM leaves it null otherwise)."""
        if (self.enable_prompt_tokens_details or always) and cached_tokens:
            return {"cached_tokens": cached_tokens}
        return None

    # ---- checks ---------------------------------------------------------------------------------------------------
    def check_model(self, model: str | None) -> LoRARequest | None:
        """The LoRA adapter ``model`` names (None: the base model); an unknown model is a 404."""
        return self.models.resolve(model)

    def check_n(self, n: Any) -> None:
        if isinstance(n, int) and n > self.max_n:
            raise RequestError(f"n must be at most {self.max_n} (this server's --max-n), got {n}.", "n")

    def check_num_prompts(self, count: int, field: str) -> None:
        if self.max_prompts_per_request is not None and count > self.max_prompts_per_request:
            raise RequestError(f"{field} holds {count} prompts; this server takes at most "
                               f"{self.max_prompts_per_request} per request (--max-prompts-per-request).", field)

    def need_tokenizer(self, what: str) -> Any:
        if self.tokenizer is None:
            raise RequestError(f"{what} needs a tokenizer, but the server runs with --skip-tokenizer-init: "
                               f"send token ids instead.")
        return self.tokenizer

    def truncated(self, ids: list[int], truncate_prompt_tokens: int | None, side: str | None = None) -> list[int]:
        """The prompt's last ``truncate_prompt_tokens`` ids (-1: max_model_len of them, as vLLM), or its first ones
        with ``side`` "right" (the request's truncation_side); the value is checked with the other sampling fields."""
        if truncate_prompt_tokens is None or truncate_prompt_tokens == 0 or truncate_prompt_tokens < -1:
            return ids
        keep = self.max_model_len if truncate_prompt_tokens == -1 else truncate_prompt_tokens
        return ids[:keep] if side == "right" else ids[-keep:]

    def resolve_max_tokens(self, prompt_len: int, max_tokens: int | None,
                           output_field: str = "max_tokens") -> int | None:
        """vLLM's context checks and words (0.18 on): the requested output alone (``output_field``: the request's
        name for it), then prompt + output, within max_model_len; an absent max_tokens counts as 0 output tokens
        there and becomes the room left."""
        if max_tokens is not None and max_tokens > self.max_model_len:
            raise RequestError(f"{output_field}={max_tokens} cannot be greater than max_model_len="
                               f"{self.max_model_len}. Please request fewer output tokens.", output_field)
        requested = max(max_tokens or 0, 0)
        if prompt_len + requested > self.max_model_len:
            raise RequestError(context_overflow_message(self.max_model_len, prompt_len, requested), "input_tokens")
        if max_tokens is None and prompt_len == self.max_model_len:
            # vLLM's engine check for a prompt that leaves no room for one output token.
            raise RequestError(
                f"The decoder prompt (length {prompt_len}) plus the number of requested output tokens (at least 1) "
                f"is longer than the maximum model length of {self.max_model_len}. Make sure that `max_model_len` "
                f"is no smaller than the number of text tokens (prompt + requested output tokens).")
        if max_tokens is None:
            max_tokens = self.max_model_len - prompt_len
            if self.default_max_tokens:
                max_tokens = min(max_tokens, int(self.default_max_tokens))
        if self.override_max_tokens and max_tokens > 0:
            max_tokens = min(max_tokens, int(self.override_max_tokens))
        return max_tokens

    # ---- building SamplingParams ----------------------------------------------------------------------------------
    def structured_outputs(self, req: SamplingFields) -> StructuredOutputsParams | None:
        """The request's constraint (response_format, guided_*, structured_outputs), checked now so that a bad
        schema or regex is a 400 naming its field."""
        found = req.structured_output_fields()
        if found is None:
            return None
        name, so = found
        self.need_tokenizer("Structured output")
        try:
            structured_output.validate(so)
        except ValueError as e:
            raise RequestError(str(e), name) from None
        return so

    def sampling_params(self, req: SamplingFields, max_tokens: int | None, logprobs: int | None,
                        structured_outputs: StructuredOutputsParams | None = None) -> SamplingParams:
        d = self.default_params
        self.check_n(req.n)
        if structured_outputs is None:
            structured_outputs = self.structured_outputs(req)

        def pick(name: str):
            value = getattr(req, name)
            return value if value is not None else getattr(d, name)

        repetition = None
        if req.max_repetition_pattern_size or req.min_repetition_pattern_size or req.repetition_min_count:
            try:
                repetition = RepetitionDetectionParams(req.max_repetition_pattern_size,
                                                       req.min_repetition_pattern_size, req.repetition_min_count)
            except ValueError as e:
                raise RequestError(str(e), "repetition_min_count" if str(e).startswith("min_count")
                                   else "max_repetition_pattern_size") from None

        try:
            return SamplingParams(
                n=req.n, best_of=req.best_of, presence_penalty=req.presence_penalty or 0.0,
                frequency_penalty=req.frequency_penalty or 0.0, repetition_penalty=pick("repetition_penalty"),
                temperature=pick("temperature"), top_p=pick("top_p"), top_k=pick("top_k"), min_p=pick("min_p"),
                seed=req.seed, stop=req.stop, stop_token_ids=req.stop_token_ids, ignore_eos=req.ignore_eos,
                max_tokens=max_tokens, min_tokens=req.min_tokens, logprobs=logprobs,
                prompt_logprobs=req.prompt_logprobs, detokenize=self.tokenizer is not None,
                skip_special_tokens=req.skip_special_tokens,
                spaces_between_special_tokens=req.spaces_between_special_tokens,
                include_stop_str_in_output=req.include_stop_str_in_output, logit_bias=req.logit_bias,
                allowed_token_ids=req.allowed_token_ids, bad_words=req.bad_words or None,
                truncate_prompt_tokens=req.truncate_prompt_tokens,
                structured_outputs=structured_outputs, thinking_token_budget=req.thinking_token_budget,
                extra_args=req.vllm_xargs, repetition_detection=repetition,
                # Outputs always come as deltas: streams send them, others gather them (and metrics see every step).
                output_kind=RequestOutputKind.DELTA)
        except (ValueError, TypeError) as e:
            raise RequestError(str(e), guess_param(str(e))) from None

    # ---- tokenization (off the event loop) -------------------------------------------------------------------------
    async def run_tokenizer(self, fn, *args, **kwargs):
        """Tokenizer work off the event loop, on the engine's one input-tokenizer thread (HF fast tokenizers must
        not be used from two threads at once)."""
        return await self.engine.run_tokenizer(fn, *args, **kwargs)

    async def encode(self, text: str, add_special_tokens: bool = True, field: str = "prompt") -> list[int]:
        tok = self.need_tokenizer("A text prompt")
        check_unicode(text, field)
        return await self.run_tokenizer(tok.encode, text, add_special_tokens=add_special_tokens)

    async def decode(self, ids: list[int]) -> str:
        tok = self.need_tokenizer("Detokenizing")
        return await self.run_tokenizer(tok.decode, ids)

    async def render_chat(self, conversation: list[dict], *, chat_template: str | None, add_generation_prompt: bool,
                          continue_final_message: bool, tools: list | None, chat_template_kwargs: dict | None,
                          add_special_tokens: bool = False, documents: list[dict] | None = None,
                          images: list | None = None) -> list[int]:
        """The conversation's token ids; ``images`` (a list): its image parts are appended there (URLs, for
        ``load_chat_images``) and "<image>" stands for each; None: image parts are refused (text-only routes)."""
        tok = self.need_tokenizer("Chat")
        if self.default_chat_template_kwargs:     # --default-chat-template-kwargs; the request's keys win (vLLM)
            chat_template_kwargs = {**self.default_chat_template_kwargs, **(chat_template_kwargs or {})}
        if chat_template_kwargs and "chat_template" in chat_template_kwargs:
            chat_template = chat_template or chat_template_kwargs["chat_template"]
            chat_template_kwargs = {k: v for k, v in chat_template_kwargs.items() if k != "chat_template"}
        if chat_template is not None and not self.trust_request_chat_template:
            # vLLM's rule and wording: a template is code; only the operator decides to run a client's.
            raise RequestError("Chat template is passed with request, but --trust-request-chat-template is not set. "
                               "Refused request with untrusted chat template.", "chat_template")
        try:
            conversation = format_message_content(conversation, self.chat_template_content_format, images=images,
                                                  image_placeholder=self.engine.input_processor.media.image_placeholder,
                                                  template=chat_template or self.chat_template or getattr(tok, "chat_template", None))
        except ValueError as e:     # an audio / video part, an image part without a URL
            raise RequestError(str(e), "messages") from None
        try:
            check_chat_template_kwargs(chat_template_kwargs)
        except ValueError as e:
            raise RequestError(str(e), "chat_template_kwargs") from None
        check_unicode(conversation, "messages")
        trusted = chat_template is None          # the server's own template (tokenizer's or --chat-template)
        template = chat_template or self.chat_template
        if template is None and not getattr(tok, "chat_template", None):
            raise RequestError("The tokenizer has no chat template and none was given: start the server with "
                               "--chat-template.", "chat_template")

        def render() -> list[int]:
            return apply_chat_template(tok, conversation, chat_template=template,
                                       add_generation_prompt=add_generation_prompt,
                                       continue_final_message=continue_final_message, tools=tools,
                                       documents=documents, chat_template_kwargs=chat_template_kwargs,
                                       trusted=trusted, add_special_tokens=add_special_tokens)

        try:
            return await self.run_tokenizer(render)
        except RequestError:
            raise
        except ChatTemplateError as e:     # a request's template that failed, ran too long or built too much
            raise RequestError(str(e), "chat_template") from None
        except Exception as e:   # jinja errors, bad kwargs, ValueError from the helper
            message = str(e) if str(e).startswith(TEMPLATE_FAILED) else f"{TEMPLATE_FAILED} {e}"
            raise RequestError(message, "messages") from None

    async def with_chat_images(self, ids: list[int], images: list, processor_kwargs: dict | None = None) -> dict:
        """A chat prompt with its images: each loaded (data: URLs decoded, http(s) fetched, as vLLM), processed by
        the model's HF processor (with the request's mm_processor_kwargs) and its "<image>" expanded (the ids grow
        by each image's placeholder tokens), off the event loop. A bad image, too many of them or a model without
        images: RequestError (400)."""
        media = self.engine.input_processor.media
        local = self.engine.config.args.allowed_local_media_path
        prompt: dict = {"prompt_token_ids": ids}
        if processor_kwargs is not None:
            prompt["mm_processor_kwargs"] = processor_kwargs
        try:
            media.check_image_count(len(images))      # before anything is fetched
            loaded = await asyncio.to_thread(
                lambda: [load_image(x, local, f"image_url ({i})") for i, x in enumerate(images)])
            return await self.run_tokenizer(self.engine.input_processor.with_media_processed,
                                            {**prompt, "multi_modal_data": {"image": loaded}})
        except ValueError as e:
            raise RequestError(str(e), "mm_processor_kwargs" if str(e).startswith("mm_processor_kwargs")
                               else "messages") from None

    def stream_usage(self, req: SamplingFields) -> tuple[bool, bool]:
        """(a final usage chunk, usage on every chunk) for a stream: stream_options.include_usage and
        continuous_usage_stats, or both with --enable-force-include-usage (vLLM's rule)."""
        if self.enable_force_include_usage:
            return True, True
        opts = req.stream_options
        include_usage = bool(opts and opts.include_usage)
        return include_usage, bool(include_usage and opts.continuous_usage_stats)

    def tokens_as_ids(self, req: SamplingFields) -> bool:
        """Whether logprob tokens are "token_id:{id}" strings: the request's return_tokens_as_token_ids, else the
        server's --return-tokens-as-token-ids (vLLM's rule)."""
        if req.return_tokens_as_token_ids is not None:
            return req.return_tokens_as_token_ids
        return self.return_tokens_as_token_ids

    def token_str(self, token_id: int, decoded: str | None, as_id: bool = False) -> str:
        if as_id:
            return f"token_id:{token_id}"
        if decoded is not None:
            return decoded
        if self.tokenizer is None:
            return f"token_id:{token_id}"
        return self.tokenizer.decode([token_id])

    # ---- submitting -----------------------------------------------------------------------------------------------
    async def submit(self, request_ids: list[str], prompts: list[dict], params_list: list[SamplingParams],
                     priority: int, reasoning_ended: bool | None = None,
                     lora_request: LoRARequest | None = None) -> list[RequestStream]:
        """Add every prompt of a request; if one is refused, the others are aborted and the error raised. The engine
        knows each by its id plus a random suffix (vLLM's rule since 0.14): ids come from clients (X-Request-Id,
        request_id), and two requests in flight with the same one must not collide."""
        streams: list[RequestStream] = []
        try:
            for rid, prompt, params in zip(request_ids, prompts, params_list):
                engine_id = f"{rid}-{random_uuid()[:8]}"
                if self.log_requests:
                    self.log_request(engine_id, prompt, params)
                streams.append(await self.engine.add_request(engine_id, prompt, params, priority=priority,
                                                             reasoning_ended=reasoning_ended,
                                                             lora_request=lora_request))
        except BaseException as e:
            for s in streams:
                s.abort()
            if isinstance(e, (ValueError, TypeError)) and not isinstance(e, RequestError):
                raise RequestError(str(e), guess_param(str(e))) from None
            raise
        return streams

    def beam_search_streams(self, request_ids: list[str], prompt_ids: list[list[int]], max_tokens: list[int],
                            req: SamplingFields, lora: LoRARequest | None = None) -> list["BeamSearchStream"]:
        """use_beam_search (vLLM's extra): one beam search per prompt, ``n`` beams wide, through ``lora``'s adapter
        when given, each answering as the one final output a request stream would give."""
        self.check_n(req.n)
        streams = []
        for rid, ids, budget in zip(request_ids, prompt_ids, max_tokens):
            temperature = req.temperature if req.temperature is not None else self.default_params.temperature
            try:
                params = BeamSearchParams(beam_width=req.n, max_tokens=budget, ignore_eos=req.ignore_eos,
                                          temperature=temperature, length_penalty=req.length_penalty,
                                          include_stop_str_in_output=req.include_stop_str_in_output)
                check_logprobs_mode(self.engine.config.args.logprobs_mode)
            except ValueError as e:
                raise RequestError(str(e), guess_param(str(e)) or "n") from None
            if self.log_requests:
                self.log_request(rid, {"prompt_token_ids": ids}, params)
            streams.append(BeamSearchStream(self, rid, ids, params, req.priority, lora))
        return streams

    def log_request(self, request_id: str, prompt: dict, params: SamplingParams | BeamSearchParams) -> None:
        if prompt.get("prompt_embeds") is not None:
            logger.info("Received request %s: prompt_embeds of shape %s, params: %s", printable_id(request_id),
                        list(prompt["prompt_embeds"].shape), params)
            return
        text = prompt.get("prompt")
        ids = prompt.get("prompt_token_ids")
        if self.max_log_len is not None:
            text = text[:self.max_log_len] if text is not None else None
            ids = ids[:self.max_log_len] if ids is not None else None
        logger.info("Received request %s: prompt: %r, params: %s, prompt_token_ids: %s", printable_id(request_id),
                    text, params, ids)

    def log_output(self, request_id: str, text: str, token_ids: Sequence[int] | None, finish_reason: str | None,
                   stream: str = "") -> None:
        """vLLM's --enable-log-outputs lines: the output text and finish reason at INFO, the token ids at DEBUG.
        ``stream``: "" (a whole response), "delta" (one streamed piece) or "complete" (a stream's whole text)."""
        if self.max_log_len is not None:
            text = text[:self.max_log_len]
            token_ids = list(token_ids)[:self.max_log_len] if token_ids is not None else None
        where = {"": "", "delta": " (streaming delta)", "complete": " (streaming complete)"}[stream]
        rid = printable_id(request_id)
        if token_ids is not None and logger.isEnabledFor(logging.DEBUG):
            logger.debug("Generated response %s%s details: output_token_ids: %s", rid, where, list(token_ids))
        logger.info("Generated response %s%s: output: %r, finish_reason: %s", rid, where, text, finish_reason)


def tool_calls_text(calls: list[dict]) -> str:
    """Tool calls as an output log shows them: ``[tool_calls: name(arguments), ...]`` (vLLM's form)."""
    return "[tool_calls: " + ", ".join(f"{c['function']['name']}({c['function']['arguments']})" for c in calls) + "]"


class BeamSearchStream:
    """A beam search as a request stream that yields one finished RequestOutput: a choice per beam, best first,
    its text and token ids without the prompt (and without a final EOS unless include_stop_str_in_output), as
    vLLM's server answers. Cancelling the consumer aborts the beam step in flight."""

    def __init__(self, serving: OpenAIServing, request_id: str, prompt_ids: list[int], params: BeamSearchParams,
                 priority: int, lora: LoRARequest | None = None):
        self.serving, self.request_id, self.prompt_ids = serving, request_id, prompt_ids
        self.params, self.priority, self.lora = params, priority, lora
        self.done = False

    def __aiter__(self) -> "BeamSearchStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self.done:
            raise StopAsyncIteration
        self.done = True
        beams = await beam_search_async(self.serving.engine, self.request_id, self.prompt_ids, self.params,
                                        self.priority, self.lora)
        outputs = []
        for i, beam in enumerate(beams):
            generated = beam.tokens[len(self.prompt_ids):]
            stopped = beam.finish_reason == "stop"
            shown = generated[:-1] if stopped else generated
            ids = generated if stopped and self.params.include_stop_str_in_output else shown
            text = await self.serving.decode(shown) if self.serving.tokenizer is not None else ""
            outputs.append(CompletionOutput(index=i, text=text, token_ids=ids, cumulative_logprob=beam.cum_logprob,
                                            logprobs=beam.logprobs[:len(ids)], finish_reason=beam.finish_reason,
                                            stop_reason=beam.stop_reason))
        return RequestOutput(request_id=self.request_id, prompt=None, prompt_token_ids=self.prompt_ids,
                             prompt_logprobs=None, outputs=outputs, finished=True)

    def abort(self) -> None:
        """Nothing to abort once the answer is out (a cancelled search aborts its own step)."""


def check_unicode(value: Any, field: str) -> None:
    """JSON can carry lone surrogates ("\\ud800"), which no tokenizer can encode: say so, naming the field."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(f"{field} contains invalid Unicode (lone surrogate).", field) from None
    elif isinstance(value, dict):
        for v in value.values():
            check_unicode(v, field)
    elif isinstance(value, (list, tuple)):
        for v in value:
            check_unicode(v, field)


async def merge_streams(streams: list[RequestStream]) -> AsyncIterator[tuple[int, Any]]:
    """Outputs of several requests as they come, tagged with the request's index."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    pending = {asyncio.ensure_future(s.__anext__()): i for i, s in enumerate(streams)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: pending[t]):
                i = pending.pop(task)
                try:
                    out = task.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(streams[i].__anext__())] = i
                yield i, out
    finally:
        for task in pending:
            task.cancel()


async def until_disconnected(work: Awaitable, raw_request: Request | None, poll_s: float = 0.5):
    """Run ``work``; if the client disconnects first, cancel it (its requests abort) and return None."""
    task = asyncio.ensure_future(work)
    if raw_request is None:
        return await task

    async def watch() -> None:
        while not await raw_request.is_disconnected():
            await asyncio.sleep(poll_s)

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:
        pass
    logger.info("Client disconnected; request aborted.")
    return None
