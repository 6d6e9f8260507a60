"""SamplingParams and BeamSearchParams with vLLM's defaults, validation and messages."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

# vLLM's logprobs_mode values (an engine setting, EngineArgs.logprobs_mode): what model/layers/sampler.py returns as
# a request's logprobs.
LOGPROBS_MODES = ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits")
_SAMPLING_EPS = 1e-5
MAX_N = 16384
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1
# Numeric fields checked for type, NaN / inf and 64-bit range before any other check (so a string or a NaN is a
# ValueError naming the field, never a TypeError from a comparison or a NaN that compares False everywhere).
_FLOAT_FIELDS = ("presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "min_p")
_INT_FIELDS = ("n", "best_of", "top_k", "max_tokens", "min_tokens", "logprobs", "prompt_logprobs",
               "truncate_prompt_tokens", "stream_interval")
_TOKEN_LIST_FIELDS = ("stop_token_ids", "allowed_token_ids")
# Flags: True or False (a string such as "false" is truthy, and None would read as False: both refused).
_BOOL_FIELDS = ("ignore_eos", "detokenize", "skip_special_tokens", "spaces_between_special_tokens",
                "include_stop_str_in_output", "flat_logprobs")


@dataclass
class StructuredOutputsParams:
    """One constraint on the generated text (vLLM's ``StructuredOutputsParams``): a JSON schema (``json``: a dict, a
    JSON string or a pydantic model class), a ``regex``, one of the strings in ``choice``, a ``grammar`` (EBNF, or
    Lark when no rule is written ``::=``), any JSON object (``json_object=True``) or an xgrammar ``structural_tag``
    (a JSON string). Enforced by a token bitmask on the logits (pagedllm/engine/structured_output.py)."""
    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    # vLLM's knobs of the JSON-schema compilation. ``disable_fallback`` is honoured by construction: pagedllm has
    # one backend (xgrammar) and never falls back to another. ``whitespace_pattern`` (an outlines option) is not
    # supported: xgrammar takes ``disable_any_whitespace``.
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    disable_fallback: bool = False
    whitespace_pattern: str | None = None

    _KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")

    def __post_init__(self) -> None:
        if hasattr(self.json, "model_json_schema"):      # a pydantic model class: its schema
            self.json = self.json.model_json_schema()
        for name, types, what in (("json", (str, dict), "a JSON schema (a dict or a JSON string)"),
                                  ("regex", str, "a string"), ("grammar", str, "a string"),
                                  ("structural_tag", str, "a JSON string"), ("json_object", bool, "True or False")):
            value = getattr(self, name)
            if value is not None and not isinstance(value, types):
                raise ValueError(f"{name} must be {what}, got {type(value).__name__} {value!r:.100}.")
        for name in ("disable_any_whitespace", "disable_additional_properties", "disable_fallback"):
            value = getattr(self, name)
            if not isinstance(value, bool):     # a JSON "false" string would otherwise switch the knob on
                raise ValueError(f"{name} must be True or False, got {type(value).__name__} {value!r:.100}.")
        if self.choice is not None:
            if (not _is_list_like(self.choice) or not all(isinstance(c, str) for c in self.choice)
                    or not self.choice):
                raise ValueError(f"choice must be a non-empty list of strings, got {self.choice!r}.")
            self.choice = list(self.choice)
        if self.whitespace_pattern is not None:
            raise ValueError("whitespace_pattern is not supported (it is an outlines option; pagedllm's xgrammar "
                             "backend takes disable_any_whitespace=True for compact JSON).")
        for name in ("json", "regex", "grammar", "structural_tag"):
            if isinstance(getattr(self, name), str):
                check_encodable(name, [getattr(self, name)])
        check_encodable("choice", self.choice or [])
        kinds = self.kinds
        if len(kinds) > 1:
            raise ValueError(f"You can only use one kind of structured outputs constraint but multiple are "
                             f"specified: {', '.join(kinds)}.")
        if not kinds:
            raise ValueError("You must use one kind of structured outputs constraint but none are specified "
                             "(json, regex, choice, grammar, json_object or structural_tag).")

    @property
    def kinds(self) -> list[str]:
        return [k for k in self._KINDS if getattr(self, k) not in (None, False)]

    @property
    def kind(self) -> str:
        return self.kinds[0]


@dataclass
class GuidedDecodingParams(StructuredOutputsParams):
    """vLLM's older name for ``StructuredOutputsParams`` (``SamplingParams(guided_decoding=...)``), still in many
    tutorials. ``backend`` is accepted for compatibility: pagedllm has one backend, xgrammar."""
    backend: str | None = None
    backend_was_auto: bool = False

    def __post_init__(self) -> None:
        if self.backend not in (None, "auto", "xgrammar"):
            raise ValueError(f"Structured output backend {self.backend!r} is not supported: pagedllm uses xgrammar "
                             f"(backend='xgrammar' or 'auto').")
        super().__post_init__()


def _is_list_like(value: Any) -> bool:
    """A list, tuple or other iterable of items; a string or bytes (iterable, but one value) and a number are not:
    they are ValueErrors that name the field, never a TypeError from iterating them."""
    return hasattr(value, "__iter__") and not isinstance(value, (str, bytes, dict))


def check_encodable(name: str, texts: list[str]) -> None:
    """JSON and Python strings can hold lone surrogates ("\\ud800"), which no tokenizer or grammar can encode."""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{name} contains invalid Unicode (lone surrogate).") from None


@dataclass
class RepetitionDetectionParams:
    """vLLM's repetition detection: a request ends (finish_reason "repetition", stop_reason "repetition_detected")
    once its output ends with a run of ``min_count`` copies of one pattern of ``min_pattern_size`` (0: 1) to
    ``max_pattern_size`` tokens. ``max_pattern_size=0``: off."""
    max_pattern_size: int = 0
    min_pattern_size: int = 0
    min_count: int = 0

    def __post_init__(self) -> None:
        for name in ("max_pattern_size", "min_pattern_size", "min_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r:.100}.")
        if self.max_pattern_size < 0 or self.min_pattern_size < 0 or self.min_pattern_size > self.max_pattern_size:
            raise ValueError("max_pattern_size, min_pattern_size must be >=0, with min_pattern_size <= "
                             "max_pattern_size. Set both to 0 to disable repetitive pattern detection.")
        if self.max_pattern_size > 0 and self.min_count < 2:
            raise ValueError("min_count must be >= 2 to detect repetitive patterns in engine output. If you do not "
                             "wish to detect repetitive patterns, set max_pattern_size to 0.")

    def found_in(self, output_ids: list[int]) -> bool:
        """Whether ``output_ids`` end with ``min_count`` copies of a pattern of an allowed size."""
        if self.max_pattern_size <= 0:
            return False
        for size in range(max(self.min_pattern_size, 1), self.max_pattern_size + 1):
            span = size * self.min_count
            if span > len(output_ids):
                return False
            tail = output_ids[-span:]
            if tail == tail[-size:] * self.min_count:
                return True
        return False


class RequestOutputKind(IntEnum):
    CUMULATIVE = 0   # every output carries the whole text so far
    DELTA = 1        # only what is new since the last output
    FINAL_ONLY = 2   # one output when the request finishes


def check_truncate_prompt_tokens(value: int | None) -> None:
    """vLLM's rule for ``truncate_prompt_tokens`` (SamplingParams and PoolingParams): None, -1 (the last
    max_model_len tokens) or a positive count."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"truncate_prompt_tokens must be an integer, got {type(value).__name__} {value!r:.100}.")
    if value == 0 or value < -1:
        raise ValueError(f"truncate_prompt_tokens must be -1 or >= 1 (-1: keep the last max_model_len tokens), "
                         f"got {value}")


@dataclass
class SamplingParams:
    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    # vLLM's: logprobs and prompt_logprobs returned as a FlatLogprobs (pagedllm.logprobs: flat columns that read as
    # the list of dicts), not a list of dicts.
    flat_logprobs: bool = False
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    truncate_prompt_tokens: int | None = None     # keep the prompt's last k tokens; -1: the last max_model_len
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    # vLLM's: a DELTA stream reports this request's new tokens once this many have come (the engine's
    # stream_interval where that is larger); its first and its final output go out at once.
    stream_interval: int | None = None
    extra_args: dict[str, Any] | None = None
    # Constrained generation (JSON schema, regex, choice, grammar); ``guided_decoding`` is vLLM's older spelling,
    # moved into ``structured_outputs`` on construction.
    structured_outputs: StructuredOutputsParams | None = None
    guided_decoding: GuidedDecodingParams | None = None
    # vLLM's name for what pagedllm does not do yet: None, or a ValueError that says so (not an unknown keyword).
    logits_processors: list[Any] | None = None
    # With a reasoning parser (the engine's reasoning_parser): at most this many thinking tokens, then the
    # end-of-thinking token is forced (vLLM's). None or -1: no limit.
    thinking_token_budget: int | None = None
    # vLLM's: True computes the whole prompt again instead of reading its cached prefix (None: only for a request with
    # prompt_logprobs, whose cached tokens would have no logits).
    skip_reading_prefix_cache: bool | None = None
    # vLLM's: end the request when its output repeats a pattern (a RepetitionDetectionParams, or a dict of its
    # fields); checked by the engine core's stop check (engine/scheduler.py).
    repetition_detection: RepetitionDetectionParams | None = None
    # Filled by the engine: EOS ids of the model (generation_config may list several).
    _all_stop_token_ids: set[int] = field(default_factory=set, repr=False)
    # Filled by ``update_from_tokenizer``: each bad word as token ids (with and without a leading space).
    _bad_words_token_ids: list[list[int]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._verify_numbers()
        if self.best_of is None:
            self.best_of = self.n
        if self.seed == -1:
            self.seed = None
        if self.top_k is None or self.top_k == -1:
            self.top_k = 0
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        elif isinstance(self.stop, (list, tuple)) and all(isinstance(x, str) for x in self.stop):
            self.stop = list(self.stop)
        else:
            raise ValueError(f"stop must be a string or a list of strings, got {self.stop!r:.100}.")
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.logit_bias is not None:
            try:
                bias = {int(k): float(v) for k, v in self.logit_bias.items()}
            except (TypeError, ValueError, AttributeError, OverflowError):
                raise ValueError(f"logit_bias must map token ids to numbers, got {self.logit_bias!r:.200}.") from None
            bad = [k for k, v in bias.items() if not math.isfinite(v)]
            if bad:
                raise ValueError(f"logit_bias values must be finite numbers, got {bias[bad[0]]} for token {bad[0]}.")
            # vLLM clamps to OpenAI's range [-100, 100].
            self.logit_bias = {k: max(-100.0, min(100.0, v)) for k, v in bias.items()}
        if 0 < self.temperature < 0.01:
            # vLLM raises tiny temperatures to 0.01: below that the softmax overflows in fp16/bf16.
            self.temperature = 0.01
        self._take_guided_decoding()
        self._verify_args()
        if self.temperature < _SAMPLING_EPS:
            # Greedy: the other sampling knobs have no effect; make that explicit.
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
        self._all_stop_token_ids = set(self.stop_token_ids)

    def _verify_numbers(self) -> None:
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r:.100}.")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}.")
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if value is None and name not in ("n", "min_tokens"):
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r:.100}.")
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise ValueError(f"{name} must fit in a 64-bit integer, got {value}.")
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {type(value).__name__} {value!r:.100}.")
        if not isinstance(self.output_kind, RequestOutputKind):
            try:
                self.output_kind = RequestOutputKind(self.output_kind)
            except (ValueError, TypeError):
                kinds = ", ".join(kind.name for kind in RequestOutputKind)
                raise ValueError(f"output_kind must be a RequestOutputKind ({kinds}), got "
                                 f"{self.output_kind!r:.100}.") from None
        for name in _TOKEN_LIST_FIELDS:
            ids = getattr(self, name)
            if ids is not None and (not _is_list_like(ids) or not all(
                    isinstance(t, int) and not isinstance(t, bool) for t in ids)):
                raise ValueError(f"{name} must be a list of token ids (integers), got {ids!r:.100}.")
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, int):
                raise ValueError(f"seed must be an integer, got {self.seed!r:.100}.")
            # With n > 1 the i-th completion samples with seed + i (input_processor.py): all of them must fit.
            n = self.n if self.n > 0 else 1
            if not _INT64_MIN <= self.seed <= _UINT64_MAX - (n - 1):
                raise ValueError(f"seed must be in [{_INT64_MIN}, {_UINT64_MAX - (n - 1)}] (a 64-bit seed; with n={n} "
                                 f"completions seeded seed .. seed+{n - 1}), got {self.seed}.")

    def _take_guided_decoding(self) -> None:
        """``guided_decoding`` (vLLM's older name) into ``structured_outputs``, then check what that holds. Run at
        construction and again when the request is added (``verify_against_model``), so a script that assigns
        ``sp.guided_decoding = GuidedDecodingParams(...)`` (or ``sp.structured_outputs = ...``) afterwards is
        honoured or refused, not ignored."""
        if self.guided_decoding is not None:
            if self.structured_outputs is not None:
                raise ValueError("Set structured_outputs or guided_decoding (its older name), not both.")
            self.structured_outputs, self.guided_decoding = self.guided_decoding, None
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise ValueError(f"structured_outputs must be a StructuredOutputsParams, got "
                             f"{type(self.structured_outputs).__name__}.")

    def _verify_args(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool):
            raise ValueError(f"n must be an int, but is of type {type(self.n)}")
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        if self.n > MAX_N:
            raise ValueError(f"n must be at most {MAX_N}, got {self.n}.")
        if self.best_of < self.n:
            raise ValueError(f"best_of must be greater than or equal to n, got n={self.n} and "
                             f"best_of={self.best_of}.")
        if self.best_of > self.n:
            raise ValueError(f"best_of > n is not supported (vLLM V1 removed it): best_of must be None or equal to n, "
                             f"got n={self.n} and best_of={self.best_of}.")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise ValueError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise ValueError(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")
        if not self.repetition_penalty > 0.0:
            raise ValueError(f"repetition_penalty must be greater than zero, got {self.repetition_penalty}.")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool):
            raise ValueError(f"top_k must be an integer, got {type(self.top_k).__name__}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.stream_interval is not None and self.stream_interval < 1:
            raise ValueError(f"stream_interval must be at least 1, got {self.stream_interval}.")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be greater than or equal to 0, got {self.min_tokens}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, "
                             f"got {self.min_tokens}.")
        if self.logprobs is not None and self.logprobs < -1:
            raise ValueError(f"logprobs must be non-negative or -1, got {self.logprobs}.")
        if self.prompt_logprobs is not None and self.prompt_logprobs < -1:
            raise ValueError(f"prompt_logprobs must be non-negative or -1, got {self.prompt_logprobs}.")
        check_truncate_prompt_tokens(self.truncate_prompt_tokens)
        if any(not s for s in self.stop):
            raise ValueError("stop cannot contain an empty string.")
        check_encodable("stop", self.stop)
        if self.stop and not self.detokenize:
            raise ValueError("stop strings are only supported when detokenize is True. "
                             "Set detokenize=True to use stop.")
        if self.allowed_token_ids is not None and len(self.allowed_token_ids) == 0:
            raise ValueError("allowed_token_ids is not None and empty!")
        if self.temperature < _SAMPLING_EPS and self.n > 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {self.n}.")
        if self.bad_words is not None and (not _is_list_like(self.bad_words)
                                           or not all(isinstance(w, str) and w.strip() for w in self.bad_words)):
            raise ValueError(f"bad_words must be a list of non-empty strings, got {self.bad_words!r}.")
        check_encodable("bad_words", self.bad_words or [])
        if self.extra_args is not None and not isinstance(self.extra_args, dict):
            raise ValueError(f"extra_args must be a dict, got {type(self.extra_args).__name__}.")
        if self.logits_processors:
            # vLLM v1 refuses them too: a batch-level class (logits_processors=[...] on the engine) replaces them.
            raise ValueError("Per-request logits_processors callables are not supported (as in vLLM v1): pass a "
                             "LogitsProcessor class to LLM(logits_processors=[...]), or wrap the callable in an "
                             "AdapterLogitsProcessor (pagedllm.v1.sample.logits_processor).")
        budget = self.thinking_token_budget
        if budget is not None:
            if isinstance(budget, bool) or not isinstance(budget, int) or budget < -1:
                raise ValueError("`thinking_token_budget` must be a non-negative integer or -1 for unlimited.")
            if budget == -1:
                self.thinking_token_budget = None
        if isinstance(self.repetition_detection, dict):
            self.repetition_detection = RepetitionDetectionParams(**self.repetition_detection)
        if self.repetition_detection is not None and not isinstance(self.repetition_detection,
                                                                    RepetitionDetectionParams):
            raise ValueError(f"repetition_detection must be a RepetitionDetectionParams, got "
                             f"{type(self.repetition_detection).__name__}.")
        if self.skip_reading_prefix_cache is not None and not isinstance(self.skip_reading_prefix_cache, bool):
            raise ValueError(f"skip_reading_prefix_cache must be True, False or None, got "
                             f"{self.skip_reading_prefix_cache!r:.100}.")
        if self.skip_reading_prefix_cache is False and self.prompt_logprobs is not None:
            raise ValueError("skip_reading_prefix_cache=False cannot be combined with prompt_logprobs: the prompt "
                             "tokens read from the prefix cache would have no logprobs.")

    # ---- helpers used by the engine ---------------------------------------------------------------------
    @property
    def greedy(self) -> bool:
        return self.temperature < _SAMPLING_EPS

    def verify_against_model(self, vocab_size: int, max_logprobs: int) -> None:
        """Checks that need the model: token ids in the vocabulary, logprob counts within limits (and the constraint
        again: it may have been assigned after construction)."""
        self._take_guided_decoding()
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is None:
                continue
            requested = vocab_size if value == -1 else value
            if max_logprobs != -1 and requested > max_logprobs:
                label = "sample" if name == "logprobs" else "prompt"
                raise ValueError(f"Requested {label} logprobs of {requested}, which is greater than max allowed: "
                                 f"{max_logprobs}")
        for token_id in self.stop_token_ids:
            if not 0 <= token_id < vocab_size:
                raise ValueError(f"stop_token_ids contains out-of-vocab token id {token_id}.")
        if self.logit_bias:
            bad = [t for t in self.logit_bias if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"token_id(s) {bad} in logit_bias contain out-of-vocab token ids. "
                                 f"Vocabulary size: {vocab_size}")
        if self.allowed_token_ids is not None:
            if not all(0 <= t < vocab_size for t in self.allowed_token_ids):
                raise ValueError("allowed_token_ids contains out-of-vocab token id!")

    def update_from_tokenizer(self, tokenizer: Any, vocab_size: int | None = None) -> None:
        """Encode ``bad_words`` (vLLM's rule): each word without special tokens, and again with a leading space
        where that gives another token sequence of the same length (the word in the middle of a text), so both
        spellings are banned. ``vocab_size`` (the model's): a word whose tokens fall outside it (a tokenizer with
        added tokens the model's embedding lacks) is vLLM's ValueError here, not an index error in the sampler's
        step, which takes the engine down with every request in it."""
        if not self.bad_words:
            return
        sequences: list[list[int]] = []
        for word in self.bad_words:
            plain = tokenizer.encode(word.lstrip(), add_special_tokens=False)
            spaced = tokenizer.encode(" " + word.lstrip(), add_special_tokens=False)
            variants = [plain]
            if plain and spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
                variants.append(spaced)
            sequences += [list(ids) for ids in variants if ids and list(ids) not in sequences]
        if vocab_size is not None:
            invalid = [t for ids in sequences for t in ids if not 0 <= t < vocab_size]
            if invalid:
                raise ValueError(f"The model vocabulary size is {vocab_size}, but the following tokens were specified "
                                 f"as bad: {invalid}. All token id values should be integers satisfying: "
                                 f"0 <= token_id <= {vocab_size - 1}.")
        self._bad_words_token_ids = sequences

    def verify_without_tokenizer(self) -> None:
        """Raise for what needs a tokenizer, for an engine that has none (``skip_tokenizer_init``)."""
        if self.structured_outputs is not None:
            raise ValueError("structured_outputs needs the tokenizer (the grammar is matched against the "
                             "vocabulary), and this engine was started without one (skip_tokenizer_init=True).")
        if self.bad_words:
            raise ValueError("bad_words needs the tokenizer (the words are encoded to token ids), and this engine "
                             "was started without one (skip_tokenizer_init=True).")

    @property
    def needs_host_tokens(self) -> bool:
        """A multi-token bad word is banned by looking at the tokens just generated, so this request's next token
        cannot be sampled before the host has the previous one (no asynchronous sampling)."""
        return any(len(ids) > 1 for ids in self._bad_words_token_ids or ())

    def clone(self) -> "SamplingParams":
        return copy.deepcopy(self)

    @classmethod
    def from_optional(cls, **kwargs: Any) -> "SamplingParams":
        """Like the constructor, but a ``None`` value means "use the default" (the server passes unset fields)."""
        return cls(**{k: v for k, v in kwargs.items() if v is not None})


@dataclass
class BeamSearchParams:
    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        for name in ("beam_width", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r:.100}.")
        for name in ("temperature", "length_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r:.100}.")
        for name in ("ignore_eos", "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r:.100}.")
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be at least 1, got {self.beam_width}.")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
