"""Request and response bodies of the OpenAI-compatible server, with OpenAI's field names plus vLLM's extras.

Requests are pydantic models (a validation failure is an HTTP 400 naming the field); sampling values are checked by
``SamplingParams`` itself so the server and ``LLM`` give the same messages. Responses are pydantic models too, so
their JSON matches what the ``openai`` client parses.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_serializer, model_validator

from pagedllm.sampling_params import StructuredOutputsParams
from pagedllm.utils import random_uuid
from pagedllm.utils.serial_utils import EmbedDType, Endianness

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A bad request: HTTP 400 (or ``code``) with OpenAI's error JSON; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None, code: int = 400, type: str = "BadRequestError"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.type = type


MAX_REQUEST_ID_CHARS = 256


def check_request_id(value: str, name: str) -> str:
    """A client's request id (body field or X-Request-Id header) ends up in logs and response ids: printable text
    only (a newline would forge a log line), and no megabyte ids."""
    if len(value) > MAX_REQUEST_ID_CHARS or not value.isprintable():
        raise RequestError(f"{name} must be printable text (no control characters) of at most "
                           f"{MAX_REQUEST_ID_CHARS} characters.", name)
    return value


def printable_request_id(cls, value: str | None) -> str | None:
    """The ``request_id`` body field's validator (``field_validator("request_id")(printable_request_id)``)."""
    return value if value is None else check_request_id(value, "request_id")


class OpenAIBaseModel(BaseModel):
    # Unknown request fields are accepted and ignored (OpenAI and vLLM do the same).
    model_config = ConfigDict(extra="allow")


class OpenAIRequestModel(OpenAIBaseModel):
    # JSON as Python parses it accepts NaN and Infinity: no request field may be one (a 400 naming the field).
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    @model_validator(mode="after")
    def _log_ignored_fields(self):
        # A request field this server does not read is ignored, as in vLLM and OpenAI, and named in the log with
        # vLLM's line, so a misspelt field ("max_token", "temprature") does not go unnoticed.
        if self.model_extra:
            logger.warning("The following fields were present in the request but ignored: %s", set(self.model_extra))
        return self


class ErrorInfo(OpenAIBaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(OpenAIBaseModel):
    error: ErrorInfo


# ---- models --------------------------------------------------------------------------------------------------------
class ModelPermission(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: f"modelperm-{random_uuid()}")
    object: str = "model_permission"
    created: int = Field(default_factory=lambda: int(time.time()))
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(OpenAIBaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "pagedllm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    task: str | None = None        # "generate", "embed" (an embedding model) or "classify" (a classifier)
    permission: list[ModelPermission] = Field(default_factory=lambda: [ModelPermission()])


class ModelList(OpenAIBaseModel):
    object: str = "list"
    data: list[ModelCard] = Field(default_factory=list)


class LoadLoRAAdapterRequest(OpenAIBaseModel):
    lora_name: str | None = None
    lora_path: str | None = None
    load_inplace: bool = False      # replace the weights of an adapter of that name (e.g. after a training step)


class UnloadLoRAAdapterRequest(OpenAIBaseModel):
    lora_name: str | None = None
    lora_int_id: int | None = None


# ---- shared pieces -------------------------------------------------------------------------------------------------
class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class JsonSchemaResponseFormat(OpenAIBaseModel):
    name: str | None = None
    description: str | None = None
    # "schema" shadows a BaseModel attribute: kept under another name, read and written as "schema".
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema", "structural_tag"] = "text"
    json_schema: JsonSchemaResponseFormat | None = None
    # type "structural_tag" (vLLM): xgrammar's structural tag, as {"format": {...}} or vLLM's first form
    # {"structures": [{"begin", "schema", "end"}], "triggers": [...]}.
    format: Any = None
    structures: list[dict[str, Any]] | None = None
    triggers: list[str] | None = None

    def structural_tag(self) -> str:
        if self.format is not None:
            return json.dumps({"type": "structural_tag", "format": self.format})
        if self.structures is None or self.triggers is None:
            raise RequestError("response_format of type 'structural_tag' needs 'format', or 'structures' and "
                               "'triggers'.", "response_format")
        return json.dumps({"type": "structural_tag", "structures": self.structures, "triggers": self.triggers})


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0
    prompt_tokens_details: dict | None = None


# Request fields that beam search would not apply (vLLM's beam search reads only n, max_tokens, ignore_eos,
# temperature, length_penalty and include_stop_str_in_output).
_NOT_WITH_BEAM_SEARCH = ("best_of", "frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias",
                         "seed", "stop", "stop_token_ids", "top_p", "top_k", "min_p", "min_tokens",
                         "allowed_token_ids", "bad_words", "prompt_logprobs", "thinking_token_budget",
                         "vllm_xargs")


class SamplingFields(OpenAIRequestModel):
    """Fields both completions and chat accept (OpenAI's, then vLLM's extras). None = "not given": the model's
    generation_config, then SamplingParams' default, applies."""
    model: str | None = None
    n: int = 1
    best_of: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    # vLLM extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    truncate_prompt_tokens: int | None = None
    # vLLM's (PR 43260): which end truncate_prompt_tokens cuts; "left" (the default) keeps the last tokens, "right"
    # the first ones.
    truncation_side: Literal["left", "right"] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    prompt_logprobs: int | None = None
    use_beam_search: bool = False
    length_penalty: float = 1.0
    priority: int = 0
    request_id: str | None = None
    return_token_ids: bool | None = None
    # Logprob tokens as "token_id:{id}" strings (None: the server's --return-tokens-as-token-ids).
    return_tokens_as_token_ids: bool | None = None
    cache_salt: str | None = None
    # vLLM's: settings for the server's custom logits processors (--logits-processors), SamplingParams.extra_args.
    vllm_xargs: dict[str, Any] | None = None
    # vLLM's per-request processors by qualified name: refused (check()), as vLLM does without
    # --logits-processor-pattern, which pagedllm does not take; read here so it is not ignored as an unknown field.
    logits_processors: list[Any] | None = None
    # With --reasoning-parser: at most this many thinking tokens, then </think> is forced (-1: no limit).
    thinking_token_budget: int | None = None
    # vLLM's repetition detection (SamplingParams.repetition_detection): finish_reason "repetition" once the output
    # ends with repetition_min_count copies of a pattern of min..max_repetition_pattern_size tokens (0: off).
    max_repetition_pattern_size: int = 0
    min_repetition_pattern_size: int = 0
    repetition_min_count: int = 0
    # vLLM's structured-output extras (one at most, or response_format).
    structured_outputs: dict[str, Any] | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_whitespace_pattern: str | None = None
    guided_decoding_backend: str | None = None

    _printable_request_id = field_validator("request_id")(printable_request_id)

    def structured_output_fields(self) -> tuple[str, StructuredOutputsParams] | None:
        """The request's constraint as (the field it came from, its params), or None; RequestError names the field
        when it cannot be one."""
        given: list[tuple[str, dict]] = []
        if self.response_format is not None and self.response_format.type != "text":
            if self.response_format.type == "json_object":
                given.append(("response_format", {"json_object": True}))
            elif self.response_format.type == "structural_tag":
                given.append(("response_format", {"structural_tag": self.response_format.structural_tag()}))
            else:
                spec = self.response_format.json_schema
                if spec is None or spec.json_schema is None:
                    raise RequestError("response_format of type 'json_schema' needs json_schema.schema.",
                                       "response_format")
                given.append(("response_format", {"json": spec.json_schema}))
        for name, key in (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                          ("guided_grammar", "grammar")):
            value = getattr(self, name)
            if value is not None:
                given.append((name, {key: value}))
        if self.structured_outputs is not None:
            given.append(("structured_outputs", dict(self.structured_outputs)))
        if not given:
            return None
        if self.guided_decoding_backend not in (None, "auto", "xgrammar"):
            # vLLM V1's answer to a request naming another backend than the engine's.
            raise RequestError(f"Request-level structured output backend selection is not supported. The request "
                               f"specified {self.guided_decoding_backend!r}, but pagedllm runs 'xgrammar'. This error "
                               f"can be resolved by removing guided_decoding_backend from the request.",
                               "guided_decoding_backend")
        if len(given) > 1:
            raise RequestError(f"You can only use one kind of structured outputs constraint but multiple are "
                               f"specified: {', '.join(name for name, _ in given)}.", given[1][0])
        name, fields = given[0]
        known = [f.name for f in dataclasses.fields(StructuredOutputsParams)]
        unknown = sorted(k for k in fields if k not in known)
        if unknown:
            raise RequestError(f"{name}: unknown field(s) {unknown}; the fields are {known}.", name)
        if self.guided_whitespace_pattern is not None:
            fields["whitespace_pattern"] = self.guided_whitespace_pattern
        try:
            return name, StructuredOutputsParams(**fields)
        except (TypeError, ValueError) as e:
            raise RequestError(f"{name}: {e}", name) from None

    def check(self) -> None:
        """Checks across fields (pydantic checks each field's type); raises RequestError naming the field."""
        if self.stream_options is not None and not self.stream:
            raise RequestError("Stream options can only be defined when `stream=True`.", "stream_options")
        if self.stream and self.prompt_logprobs is not None and (self.prompt_logprobs > 0 or
                                                                 self.prompt_logprobs == -1):
            # vLLM's rule: 0 streams (the prompt's own tokens' logprobs, which reach a stream only inside an
            # echo's logprobs); more candidates per prompt position are a whole-response field only.
            raise RequestError("`prompt_logprobs` are not available when `stream=True`.", "prompt_logprobs")
        if self.logits_processors:
            # vLLM's words where no --logits-processor-pattern allows any (an empty list is no processor there too).
            raise RequestError("The `logits_processors` argument is not supported by this server: per-request logits "
                               "processors need --logits-processor-pattern, which pagedllm does not take. Load custom "
                               "processors with --logits-processors and pass their settings in vllm_xargs.",
                               "logits_processors")
        if self.use_beam_search:
            if self.stream:
                raise RequestError("Streaming is not currently supported with beam search", "stream")   # vLLM's
            # Beam search ranks candidates by log-probability alone: a sampling field beside it would be ignored.
            for name in _NOT_WITH_BEAM_SEARCH:
                if name in self.model_fields_set and getattr(self, name) not in (None, [], {}):
                    raise RequestError(f"{name} is not applied with use_beam_search (beam search ranks candidates "
                                       f"by log-probability alone): drop one of them.", name)
            found = self.structured_output_fields()
            if found is not None:
                raise RequestError(f"{found[0]} is not applied with use_beam_search (no constrained beam search "
                                   f"yet): drop one of them.", found[0])


# ---- /v1/completions -------------------------------------------------------------------------------------------------
class CompletionRequest(SamplingFields):
    # list[int] first: pydantic's smart union then keeps token ids as ids.
    prompt: Union[list[int], list[list[int]], str, list[str], None] = None
    # --enable-prompt-embeds: base64 of torch.save(tensor [num_tokens, hidden_size]), one or a list (vLLM's);
    # these prompts come first, then those of ``prompt``.
    prompt_embeds: Union[str, list[str], None] = None
    echo: bool = False
    logprobs: int | None = None
    max_tokens: int | None = 16
    suffix: str | None = None
    add_special_tokens: bool = True

    def check(self) -> None:
        super().check()
        if self.prompt_embeds is None and self.prompt is None:
            raise RequestError("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
        if self.prompt_embeds is not None:
            if self.echo:
                raise RequestError("Echo is unsupported with prompt embeds.", "echo")   # vLLM's words
            if self.use_beam_search:
                raise RequestError("use_beam_search is not supported with prompt_embeds yet.", "use_beam_search")
            if self.prompt_logprobs is not None:
                raise RequestError("prompt_logprobs are not available for prompt_embeds (no prompt token ids).",
                                   "prompt_logprobs")

    @field_validator("logprobs")
    @classmethod
    def _logprobs_range(cls, v):
        if v is not None and v < 0:
            raise ValueError("`logprobs` must be a positive value.")
        return v

    @field_validator("echo", mode="before")
    @classmethod
    def _echo_null(cls, v):
        return False if v is None else v      # vLLM's completions take "echo": null as not given


class CompletionLogProbs(OpenAIBaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionResponseChoice(OpenAIBaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_logprobs: list[dict[int, dict] | None] | None = None
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None


class CompletionResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: f"cmpl-{random_uuid()}")
    object: str = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionResponseChoice]
    usage: UsageInfo


class CompletionResponseStreamChoice(OpenAIBaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class CompletionStreamResponse(OpenAIBaseModel):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionResponseStreamChoice]
    usage: UsageInfo | None = None


# ---- /v1/chat/completions --------------------------------------------------------------------------------------------
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class ChatMessage(OpenAIBaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    # An assistant turn's thinking, sent back for templates that render it (vLLM 0.24 passes it as both reasoning
    # and reasoning_content, the name Qwen3's and DeepSeek's templates read).
    reasoning: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _reasoning_content(cls, data: Any) -> Any:
        # reasoning_content: the field's name before vLLM's rename (and DeepSeek's API's), which clients that send
        # a reasoning model's answer back still write; vLLM reads it as reasoning, as here (it was dropped).
        if isinstance(data, dict) and data.get("reasoning_content") is not None:
            data = dict(data)
            content = data.pop("reasoning_content")
            if data.get("reasoning") is None:
                data["reasoning"] = content
        return data

    @field_validator("role")
    @classmethod
    def _known_role(cls, v: str) -> str:
        if v not in CHAT_ROLES:
            raise ValueError(f"Invalid value: {v!r}. Supported values are: {', '.join(repr(r) for r in CHAT_ROLES)}.")
        return v


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    logprobs: bool | None = False
    top_logprobs: int | None = 0
    max_tokens: int | None = Field(default=None, description="Deprecated: use max_completion_tokens.")
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # Set by /v1/responses, not a field: usage counts the prefix-cache hits (prompt_tokens_details.cached_tokens)
    # without --enable-prompt-tokens-details, as vLLM's Responses usage always does.
    _cached_tokens_always: bool = PrivateAttr(default=False)
    # vLLM extras
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    documents: list[dict[str, str]] | None = None
    # The image processor's settings for this request's images, over the server's --mm-processor-kwargs.
    mm_processor_kwargs: dict[str, Any] | None = None
    # Reasoning models (vLLM 0.24): the effort reaches the chat template (reasoning_effort, and enable_thinking
    # unless the request sets it); include_reasoning=false drops message.reasoning (--reasoning-parser).
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    include_reasoning: bool = True

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, v):
        if not v:
            raise ValueError("messages must contain at least one message.")
        return v

    @field_validator("n", mode="before")
    @classmethod
    def _n_null(cls, v):
        return 1 if v is None else v      # vLLM's chat takes "n": null as not given (clients that send every field)

    def template_kwargs(self) -> dict[str, Any] | None:
        """chat_template_kwargs with reasoning_effort's (vLLM's rule: it also switches enable_thinking, on unless
        the effort is "none", where the request does not set that itself)."""
        if self.reasoning_effort is None:
            return self.chat_template_kwargs
        own = self.chat_template_kwargs or {}
        extra: dict[str, Any] = {"reasoning_effort": self.reasoning_effort}
        if "enable_thinking" not in own:
            extra["enable_thinking"] = self.reasoning_effort != "none"
        return {**own, **extra}

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None:
            if self.top_logprobs < -1:      # -1: every token of the vocabulary (vLLM), within --max-logprobs
                raise RequestError("`top_logprobs` must be a positive value or -1.", "top_logprobs")
            if self.top_logprobs != 0 and not self.logprobs:
                raise RequestError("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")
        if self.add_generation_prompt and self.continue_final_message:
            # Only an explicit add_generation_prompt=true conflicts (as vLLM); the default gives way.
            if "add_generation_prompt" in self.model_fields_set:
                raise RequestError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                                   "continue_final_message")
            self.add_generation_prompt = False


class BatchChatCompletionRequest(ChatCompletionRequest):
    """/v1/chat/completions/batch (vLLM 0.24): the chat fields with ``messages`` a list of conversations, each run
    as its own chat request; one choice per conversation. Streaming, tools, n > 1 and beam search are refused with
    a 400 (vLLM refuses the last two and has no field for the first two)."""
    messages: list[list[ChatMessage]]

    @field_validator("messages")
    @classmethod
    def _not_empty(cls, v):
        if not v or not all(v):
            raise ValueError("messages must be a non-empty list of conversations, each with at least one message.")
        return v

    def check(self) -> None:
        if self.stream:
            raise RequestError("Batch chat completions do not support streaming. Please set `stream` to False.",
                               "stream")
        if self.tools or self.tool_choice not in (None, "none"):
            raise RequestError("Batch chat completions do not support tool use. Please omit `tools` and "
                               "`tool_choice`.", "tools" if self.tools else "tool_choice")
        if self.use_beam_search:
            raise RequestError("Batch chat completions do not support beam search. Please set `use_beam_search` "
                               "to False.", "use_beam_search")
        if self.n != 1:
            raise RequestError("Batch chat completions do not support `n > 1`. Please set `n` to 1.", "n")

    def conversation_request(self, index: int, request_id: str) -> ChatCompletionRequest:
        """Conversation ``index`` as a /v1/chat/completions request (the fields the client set, and only those)."""
        fields = self.model_dump(exclude_unset=True, by_alias=True, exclude={"messages", "request_id"})
        return ChatCompletionRequest.model_validate(
            {**fields, "messages": self.messages[index], "request_id": request_id})


class GenerateTokensRequest(OpenAIRequestModel):
    """POST /inference/v1/generate (vLLM's token-in, token-out route): prompt token ids and a SamplingParams dict;
    the answer carries token ids only."""
    model: str | None = None
    request_id: str | None = None
    token_ids: list[int] = Field(min_length=1)
    sampling_params: dict[str, Any]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    cache_salt: str | None = None
    priority: int = 0
    # vLLM's disaggregated-serving and multimodal inputs: refused (not ignored) until pagedllm has them.
    kv_transfer_params: dict[str, Any] | None = None
    features: Any = None

    @field_validator("token_ids")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        if any(t < 0 for t in v):
            raise ValueError("token_ids must not contain negative values")
        return v

    @field_validator("request_id")
    @classmethod
    def _printable_request_id(cls, v: str | None) -> str | None:
        return v if v is None else check_request_id(v, "request_id")


class ChatLogProb(OpenAIBaseModel):
    token: str
    logprob: float = -9999.0
    bytes: list[int] | None = None


class ChatLogProbsContent(ChatLogProb):
    top_logprobs: list[ChatLogProb] = Field(default_factory=list)


class ChatCompletionLogProbs(OpenAIBaseModel):
    content: list[ChatLogProbsContent] | None = None


class ChatResponseMessage(OpenAIBaseModel):
    role: str
    content: str | None = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    reasoning: str | None = None      # vLLM's name (reasoning_content before its PR 27752); null: no reasoning parser

    @model_serializer(mode="wrap")
    def _no_empty_tool_calls(self, handler):
        # No calls: no "tool_calls" key (OpenAI, vLLM), so the openai client's message.tool_calls is None; an empty
        # list sends "while message.tool_calls is not None" loops into message.tool_calls[0].
        data = handler(self)
        if not data.get("tool_calls"):
            data.pop("tool_calls", None)
        return data


class ChatCompletionResponseChoice(OpenAIBaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatCompletionLogProbs | None = None
    finish_reason: str | None = "stop"
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class ChatCompletionResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: f"chatcmpl-{random_uuid()}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionResponseChoice]
    usage: UsageInfo
    prompt_logprobs: list[dict[int, dict] | None] | None = None
    prompt_token_ids: list[int] | None = None


class DeltaMessage(OpenAIBaseModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatCompletionResponseStreamChoice(OpenAIBaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatCompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None


class ChatCompletionStreamResponse(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionResponseStreamChoice]
    usage: UsageInfo | None = None


# ---- /v1/responses ---------------------------------------------------------------------------------------------------
class ResponsesRequest(OpenAIRequestModel):
    """OpenAI's Responses API, text in and text out (vLLM serves it too); run as a chat completion."""
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = "auto"
    parallel_tool_calls: bool | None = True
    previous_response_id: str | None = None
    background: bool | None = False
    store: bool | None = True
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: str | None = "disabled"
    metadata: dict[str, Any] | None = None
    user: str | None = None
    # OpenAI's (and vLLM's) extra output: only "message.output_text.logprobs" adds anything here (the others name
    # items this server never produces); top_logprobs counts with it.
    include: list[Literal["code_interpreter_call.outputs", "computer_call_output.output.image_url",
                          "file_search_call.results", "message.input_image.image_url",
                          "message.output_text.logprobs", "reasoning.encrypted_content"]] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    prompt: dict[str, Any] | None = None         # OpenAI's stored prompt templates: refused, as vLLM does
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] = "auto"
    # vLLM extras (its PR 32609 added seed, stop, repetition_penalty, ignore_eos and vllm_xargs; they run as on chat)
    top_k: int | None = None
    skip_special_tokens: bool = True
    cache_salt: str | None = None
    priority: int = 0
    request_id: str | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    vllm_xargs: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None

    _printable_request_id = field_validator("request_id")(printable_request_id)


# ---- /tokenize, /detokenize ----------------------------------------------------------------------------------------
class TokenizeCompletionRequest(OpenAIRequestModel):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class TokenizeChatRequest(OpenAIRequestModel):
    model: str | None = None
    messages: list[ChatMessage]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool | None = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None


TokenizeRequest = Union[TokenizeCompletionRequest, TokenizeChatRequest]


class TokenizeResponse(OpenAIBaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIRequestModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(OpenAIBaseModel):
    prompt: str


# ---- pooling models: /v1/embeddings, /pooling, /classify, /score (vLLM's request and response shapes) ---------------
PoolingInput = Union[str, list[str], list[int], list[list[int]]]


class PoolingRequestId(OpenAIRequestModel):
    # The response's id after its prefix ("embd-<request_id>"), unless an X-Request-Id header names the request
    # (vLLM's rule, as chat and completions).
    request_id: str | None = None

    _printable_request_id = field_validator("request_id")(printable_request_id)


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) for m in value)


class PoolingInputRequest(PoolingRequestId):
    """What every pooling request over inputs shares (/v1/embeddings, /pooling, /classify)."""
    model: str | None = None
    # The texts / token ids to pool, or (vLLM's chat form) a conversation the chat template renders into one prompt.
    input: PoolingInput | None = None
    messages: list[ChatMessage] | None = None
    # vLLM's batched chat form: ``messages`` holding several conversations, each rendered into its own prompt (one
    # result each); moved here by _batched_messages.
    messages_batch: list[list[ChatMessage]] | None = Field(default=None, exclude=True)
    # /v1/embeddings (vLLM 0.24): ``input`` may hold a conversation, or several, in place of ``messages``.
    chat_shaped_input: ClassVar[bool] = False
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)
    priority: int = 0
    # The tokenizer's special tokens: by default added to an input text (vLLM's input form) and not to the rendered
    # messages (its chat form: the template holds them); see special_tokens().
    add_special_tokens: bool | None = None
    # With messages only (vLLM's EmbeddingChatRequest defaults: no generation prompt).
    add_generation_prompt: bool = False
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _batched_messages(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        given, messages = data.get("input"), data.get("messages")
        if cls.chat_shaped_input and messages is None and isinstance(given, list) and given:
            if _is_conversation(given):
                return {**{k: v for k, v in data.items() if k != "input"}, "messages": given}
            if all(_is_conversation(c) for c in given):
                return {**{k: v for k, v in data.items() if k != "input"}, "messages_batch": given}
        if isinstance(messages, list) and messages and all(isinstance(c, list) for c in messages):
            return {**{k: v for k, v in data.items() if k != "messages"}, "messages_batch": messages}
        return data

    def conversations(self) -> list[list[ChatMessage]] | None:
        """The conversations to render, one prompt each (None: the request pools ``input``)."""
        if self.messages_batch is not None:
            return self.messages_batch
        return None if self.messages is None else [self.messages]

    def special_tokens(self) -> bool:
        """add_special_tokens as given, else vLLM's default for the form: True for input, False for messages."""
        return self.add_special_tokens if self.add_special_tokens is not None else self.conversations() is None

    @model_validator(mode="after")
    def _input_or_messages(self):
        chats = self.conversations()
        if (self.input is None) == (chats is None):
            raise ValueError("Exactly one of input or messages must be given.")
        if chats is not None and (not chats or not all(chats)):
            raise ValueError("messages must contain at least one message (each conversation of a batch too).")
        if self.add_generation_prompt and self.continue_final_message:
            raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        return self


class EmbeddingRequest(PoolingInputRequest):
    chat_shaped_input: ClassVar[bool] = True
    # bytes / bytes_only (vLLM's): the raw values as the body, located by a "metadata" header (bytes) or not.
    encoding_format: Literal["float", "base64", "bytes", "bytes_only"] = "float"
    # base64's and bytes' values (vLLM's): their dtype and byte order ("native": the server's, as the openai client
    # expects).
    embed_dtype: EmbedDType = "float32"
    endianness: Endianness = "native"
    dimensions: int | None = None
    # L2-normalize the vectors; use_activation is vLLM's newer name for it (None: the checkpoint's choice).
    normalize: bool | None = None
    use_activation: bool | None = None


class PoolingRequest(EmbeddingRequest):
    # vLLM's pooling task: one vector per input (embed / encode from an embedding model, classify from a sequence
    # classifier, where use_activation is its softmax / sigmoid), or one row per input token (token_embed from an
    # embedding model, token_classify from a token classifier, a reward model or a sequence classifier).
    task: str | None = None

    @field_validator("task")
    @classmethod
    def _pooled_vector_task(cls, v: str | None) -> str | None:
        if v not in (None, "embed", "encode", "classify", "token_embed", "token_classify"):
            raise ValueError(f"Unsupported task: {v!r}. pagedllm's /pooling tasks: 'embed', 'token_embed' (an "
                             f"embedding model), 'classify' (a sequence-classification model), 'token_classify' "
                             f"(a token classifier or reward model).")
        return v


class ActivationField(OpenAIRequestModel):
    # Apply the classifier's activation (softmax / sigmoid, or a cross-encoder's own); False: the raw logits.
    # ``activation`` is vLLM's older name for it.
    use_activation: bool | None = None
    activation: bool | None = None


class ClassificationRequest(PoolingInputRequest, ActivationField):
    """/classify (vLLM's): class probabilities per input from a sequence-classification model."""


# /score's pairs under vLLM 0.24's four spellings (its examples send queries / documents); read as text_1 / text_2.
SCORE_PAIR_NAMES = (("text_1", "text_2"), ("queries", "documents"), ("queries", "items"), ("data_1", "data_2"))


class ScoreTemplateFields(OpenAIRequestModel):
    """vLLM 0.24's score-template variables (/score, /rerank): ``instruction`` is ``chat_template_kwargs``'
    "instruction" (a key given there wins), both read by the server's --chat-template."""
    instruction: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    def score_template_kwargs(self) -> dict[str, Any] | None:
        if self.instruction is None:
            return self.chat_template_kwargs
        return {"instruction": self.instruction, **(self.chat_template_kwargs or {})}


class ScoreRequest(ActivationField, ScoreTemplateFields, PoolingRequestId):
    model: str | None = None
    text_1: Union[str, list[str]]
    text_2: Union[str, list[str]]
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)
    priority: int = 0
    # The names the client gave the pair (for its error messages); not a request field.
    pair_names: tuple[str, str] = Field(default=("text_1", "text_2"), exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _pair_spelling(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "text_1" in data or "text_2" in data:
            return data
        for first, second in SCORE_PAIR_NAMES[1:]:
            if first in data and second in data:
                rest = {k: v for k, v in data.items() if k not in (first, second)}
                return {**rest, "text_1": data[first], "text_2": data[second], "pair_names": (first, second)}
        return data


class RerankRequest(ActivationField, ScoreTemplateFields, PoolingRequestId):
    """/rerank, /v1/rerank (Jina) and /v2/rerank (Cohere): the documents ordered by their score against the query."""
    model: str | None = None
    query: str
    documents: list[str]
    top_n: int = Field(default=0, ge=0)       # 0: every document
    return_documents: bool = True
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)
    priority: int = 0
