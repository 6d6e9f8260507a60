"""The front end's input processor: one place that tokenizes a prompt, checks it and its sampling settings against
the model, and builds the engine-core request(s) — used by ``LLM`` / ``LLMEngine`` and by the API server alike.

``n > 1`` becomes ``n`` core requests sharing the prompt (child ids ``"{i}_{request_id}"``; a seeded request's
children get seeds ``seed + i``), so the core only ever samples one sequence per request; the output processor
gathers them back into one ``RequestOutput``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from pagedllm.config import GENERATION_CONFIG_SAMPLING_KEYS, EngineArgs, EngineConfig, reasoning_parser_name
from pagedllm.engine import structured_output
from pagedllm.engine.messages import EngineCoreRequest
from pagedllm.engine.multimodal import MediaProcessor, ProcessedMedia, has_media
from pagedllm.inputs import PromptType, check_prompt_keys, is_embeds_prompt
from pagedllm.lora.request import LoRARequest
from pagedllm.model.layers.logits_processors import load_logits_processor_classes
from pagedllm.pooling_params import PoolingParams
from pagedllm.reasoning_parsers import HarmonyReasoningParser, get_reasoning_parser
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class ProcessedRequest:
    """A request ready for the engine core (``children``) and for the output processor (the rest)."""
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams | PoolingParams
    arrival_time: float
    children: list[EngineCoreRequest] = field(default_factory=list)
    lora_request: Any = None       # the adapter it runs with (pagedllm.lora.LoRARequest), for its outputs
    # An EmbedsPrompt's embeddings (a CPU tensor [num_tokens, hidden_size]); prompt_token_ids are then that many
    # placeholders (0), never shown: its RequestOutput has prompt_token_ids=None, as vLLM's.
    prompt_embeds: Any = None
    # Images: step_data.MultiModalFeature per image (prompt_token_ids hold their expanded placeholders).
    mm_features: Any = None


# vLLM's tokenization_kwargs keys a prompt's tokenization honours (its renderer's TokenizeParams).
TOKENIZATION_KWARGS = ("truncate_prompt_tokens", "truncation", "max_length", "add_special_tokens", "do_lower_case")


@dataclass
class PromptTokenization:
    """What ``tokenization_kwargs`` ask of a call's prompts (generate, chat, the pooling calls)."""
    truncate_prompt_tokens: int | None = None    # keep this many tokens (-1: max_model_len); None: no truncation
    max_length: int | None = None                # without truncation: a longer prompt is an error
    add_special_tokens: bool = True
    do_lower_case: bool = False

    @classmethod
    def from_kwargs(cls, kwargs: dict | None, truncate_prompt_tokens: int | None,
                    add_special_tokens: bool = True) -> "PromptTokenization":
        """vLLM's reading: ``truncation`` True / "longest_first" truncates to ``max_length`` (else max_model_len),
        False / "do_not_truncate" not at all; ``max_length`` alone is a length limit; the ``truncate_prompt_tokens``
        argument wins over the key; ``add_special_tokens`` is the call's default (False for chat). A key vLLM would
        ignore is an error here."""
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ValueError(f"tokenization_kwargs must be a dict, got {type(kwargs).__name__}.")
        kw = dict(kwargs or {})
        unknown = sorted(set(kw) - set(TOKENIZATION_KWARGS))
        if unknown:
            raise ValueError(f"tokenization_kwargs {unknown} are not supported by pagedllm; supported keys: "
                             f"{list(TOKENIZATION_KWARGS)}.")
        out = cls(truncate_prompt_tokens=kw.get("truncate_prompt_tokens"), max_length=kw.get("max_length"),
                  add_special_tokens=add_special_tokens)
        if out.max_length is not None and (not isinstance(out.max_length, int) or isinstance(out.max_length, bool)
                                           or out.max_length < 1):
            raise ValueError(f"tokenization_kwargs max_length must be a positive int, got {out.max_length!r}.")
        truncation = kw.get("truncation")
        if truncation in (True, "longest_first"):
            out.truncate_prompt_tokens = out.max_length if out.max_length is not None else -1
        elif truncation in (False, "do_not_truncate"):
            out.truncate_prompt_tokens = None
        elif truncation is not None:
            raise ValueError(f"tokenization_kwargs truncation must be True, False, 'longest_first' or "
                             f"'do_not_truncate', got {truncation!r}.")
        for name in ("add_special_tokens", "do_lower_case"):
            if name in kw:
                if not isinstance(kw[name], bool):
                    raise ValueError(f"tokenization_kwargs {name} must be True or False, got {kw[name]!r}.")
                setattr(out, name, kw[name])
        if truncate_prompt_tokens is not None:
            out.truncate_prompt_tokens = truncate_prompt_tokens
        return out

    def check_length(self, ids: list[int]) -> None:
        if self.max_length is not None and self.truncate_prompt_tokens is None and len(ids) > self.max_length:
            raise ValueError(f"The prompt has {len(ids)} tokens, more than tokenization_kwargs max_length="
                             f"{self.max_length}; add truncation=True to truncate it.")


def warn_trace_headers_unused(trace_headers: Any) -> None:
    """vLLM's engines take ``trace_headers`` (OpenTelemetry context); pagedllm exports no traces, so headers given
    are said to be unused, as vLLM says when its tracing is off."""
    if trace_headers:
        logger.warning("trace_headers were given, but pagedllm exports no traces (no otlp_traces_endpoint): "
                       "they are not used.")


class InputProcessor:
    def __init__(self, config: EngineConfig, tokenizer: Any):
        self.config = config
        self.tokenizer = tokenizer
        self.vocab_size: int = config.hf_config.vocab_size
        self.max_model_len = config.max_model_len
        self.max_logprobs = config.args.max_logprobs
        self.eos_token_ids = frozenset(self._eos_token_ids())
        # The tokenizer's EOS: a stop on it reports no stop_reason; the generation config's other EOS ids report
        # theirs (vLLM adds them to the request's stop_token_ids).
        self.eos_token_id: int | None = getattr(tokenizer, "eos_token_id", None)
        # Custom logits processors' classes: each request's parameters pass their validate_params here.
        self.logits_processor_classes = load_logits_processor_classes(config.args.logits_processors)
        # Images (multi_modal_data): the model's HF processor and limit_mm_per_prompt (engine/multimodal.py).
        self.media = MediaProcessor(config, tokenizer)
        reasoning = reasoning_parser_name(config.args)
        if reasoning and tokenizer is not None:
            # A tokenizer without the parser's think tags fails now, not at the first constrained request.
            get_reasoning_parser(reasoning).token_ids(tokenizer.get_vocab())

    def _eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.config.model.generation_config.get("eos_token_id"),
                       getattr(self.config.hf_config, "eos_token_id", None),
                       getattr(self.tokenizer, "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(int(x) for x in source)
        # An id the model cannot sample (a generation config or tokenizer EOS past the model's vocabulary) stops
        # nothing; kept, min_tokens' mask indexed past the logits and the step's IndexError killed the engine.
        return {i for i in ids if 0 <= i < self.vocab_size}

    def generation_defaults(self) -> dict[str, Any]:
        """The SamplingParams fields that the model's generation_config and override_generation_config set (vLLM's
        ``get_diff_sampling_param``); empty when they set none."""
        gen = self.config.model.generation_config
        values = {ours: gen[theirs] for theirs, ours in GENERATION_CONFIG_SAMPLING_KEYS.items()
                  if gen.get(theirs) is not None}
        if gen.get("do_sample") is False:
            values["temperature"] = 0.0
        return values

    def default_sampling_params(self) -> SamplingParams:
        """SamplingParams() overridden by the generation defaults (vLLM's behaviour when none is given)."""
        return SamplingParams(**self.generation_defaults())

    # ---- tokenizing ---------------------------------------------------------------------------------------------
    def split_prompt(self, prompt: PromptType,
                     with_media: bool = False) -> tuple[str | None, list[int] | None, str | None]:
        """(text, token ids or None when the text still needs tokenizing, cache_salt) of any accepted prompt form:
        a string, ``{"prompt": str}`` or ``{"prompt_token_ids": [...]}`` (vLLM's TextPrompt / TokensPrompt).
        ``with_media``: the caller reads the prompt's multi_modal_data (generation); elsewhere it is an error."""
        if isinstance(prompt, str):
            return prompt, None, None
        if isinstance(prompt, dict):
            check_prompt_keys(prompt)     # mm_processor_kwargs etc. are errors, not silently dropped
            if has_media(prompt) and not with_media:
                raise ValueError("multi_modal_data is read by generation (LLM.generate / chat, /v1/chat/completions, "
                                 "/v1/completions); not supported yet here (pooling, beam search, tokenization).")
            salt = _cache_salt(prompt)
            if is_embeds_prompt(prompt):
                raise ValueError("prompt_embeds prompts are for generation (LLM.generate, /v1/completions); pass "
                                 "text or token ids here.")
            if "prompt_token_ids" in prompt:
                ids = prompt["prompt_token_ids"]
                if not isinstance(ids, (list, tuple)):
                    raise ValueError(f"prompt_token_ids must be a list of ints, got {type(ids).__name__}.")
                return prompt.get("prompt"), list(ids), salt
            if "prompt" in prompt:
                text = prompt["prompt"]
                if not isinstance(text, str):
                    raise ValueError(f"prompt must be a string, got {type(text).__name__}.")
                return text, None, salt
            raise ValueError("A prompt dict needs 'prompt' or 'prompt_token_ids'.")
        raise ValueError(f"Unsupported prompt type {type(prompt).__name__}; use str, "
                         f"{{'prompt': ...}} or {{'prompt_token_ids': [...]}}.")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("Text prompts need a tokenizer, but skip_tokenizer_init=True: pass "
                             "{'prompt_token_ids': [...]} instead.")
        _check_utf8(text)
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def tokenize_prompt(self, prompt: PromptType, add_special_tokens: bool = True) -> tuple[str | None, list[int]]:
        text, ids, _ = self.split_prompt(prompt)
        if ids is None:
            ids = self.encode(text, add_special_tokens)
        return text, ids

    # ---- checking and building ----------------------------------------------------------------------------------
    def tokenize_as_asked(self, prompt: PromptType, tokenization: PromptTokenization,
                          encode: Callable[[str, bool], list[int]]) -> tuple[PromptType, list[int]]:
        """A text prompt with the ids ``encode(text, add_special_tokens)`` gives it as ``tokenization`` asks
        (lower-cased first with do_lower_case), and those ids; a token-id prompt as given."""
        text, ids, _ = self.split_prompt(prompt, with_media=True)
        if ids is None:
            ids = encode(text.lower() if tokenization.do_lower_case else text, tokenization.add_special_tokens)
            prompt = {**prompt, "prompt_token_ids": ids} if isinstance(prompt, dict) else \
                {"prompt": text, "prompt_token_ids": ids}
        return prompt, ids

    def apply_tokenization_kwargs(self, prompt: PromptType, params: SamplingParams | PoolingParams | None,
                                  tokenization_kwargs: dict | None) -> tuple[PromptType, SamplingParams | PoolingParams]:
        """One engine request's ``tokenization_kwargs`` (vLLM's ``LLMEngine.add_request`` / ``AsyncLLMEngine.generate``
        / ``encode``; keys: see ``PromptTokenization``): the prompt tokenized as they ask, and the params with their
        truncation (``with_truncation``)."""
        tokenization = PromptTokenization.from_kwargs(tokenization_kwargs, None)
        if params is None:
            params = PoolingParams() if self.config.is_pooling else self.default_sampling_params()
        params = self.with_truncation(params, tokenization)
        return self.tokenize_for_request(prompt, params, tokenization), params

    @staticmethod
    def with_truncation(params: SamplingParams | PoolingParams,
                        tokenization: PromptTokenization) -> SamplingParams | PoolingParams:
        """``params``, or a clone with ``tokenization``'s truncate_prompt_tokens where it asks for one and the params
        bring none of their own (theirs wins, as in vLLM)."""
        if tokenization.truncate_prompt_tokens is None or getattr(params, "truncate_prompt_tokens", None) is not None:
            return params
        params = params.clone()
        params.truncate_prompt_tokens = tokenization.truncate_prompt_tokens
        return params

    def tokenize_for_request(self, prompt: PromptType, params: SamplingParams | PoolingParams,
                             tokenization: PromptTokenization) -> PromptType:
        """A request's text prompt tokenized as ``tokenization`` asks (token ids and embeddings as given), its length
        checked against ``max_length`` unless the request truncates."""
        if is_embeds_prompt(prompt):
            return prompt
        if isinstance(params, PoolingParams):
            prompt, ids = self.tokenize_as_asked(
                prompt, tokenization, lambda text, special: self.encode_for_pooling(text, params, special))
        else:
            prompt, ids = self.tokenize_as_asked(prompt, tokenization, self.encode)
        if getattr(params, "truncate_prompt_tokens", None) is None:
            tokenization.check_length(ids)
        return prompt

    def process(self, request_id: str, prompt: PromptType, params: SamplingParams | PoolingParams | None,
                arrival_time: float | None = None, priority: int = 0, lora_request: Any = None,
                reasoning_ended: bool | None = None) -> ProcessedRequest:
        """Tokenize (unless the prompt brings token ids), validate, and build the core request(s). Raises
        ValueError naming what is wrong; nothing reaches the engine core then. ``reasoning_ended`` (the server's,
        as vLLM's generate takes it): with a reasoning parser, whether the grammar applies from the first token
        (None: the engine core reads the prompt)."""
        if not isinstance(request_id, str) or not request_id:
            raise ValueError("request_id must be a non-empty string.")
        self._check_lora_request(lora_request)
        if self.config.is_pooling or isinstance(params, PoolingParams):
            if lora_request is not None:
                raise ValueError("LoRA adapters with pooling (embedding) models are not supported yet by pagedllm.")
            return self._process_pooling(request_id, prompt, params, arrival_time, priority)
        params = params if params is not None else self.default_sampling_params()
        if isinstance(prompt, dict) and prompt.get("token_type_ids") is not None:
            raise ValueError("token_type_ids are for pooling (cross-encoder) prompts; a generation prompt has one "
                             "segment.")
        if not isinstance(params, SamplingParams):
            raise ValueError(f"Expected SamplingParams, got {type(params).__name__}.")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError(f"priority must be an int, got {type(priority).__name__}.")
        self.config.verify_priority(priority)
        embeds = mm_features = None
        if is_embeds_prompt(prompt):
            check_prompt_keys(prompt)
            text, embeds, salt = None, self.check_prompt_embeds(prompt), _cache_salt(prompt)
            if params.truncate_prompt_tokens is not None:
                embeds = embeds[-self.truncation_limit(params):]
            if params.prompt_logprobs is not None:
                raise ValueError("prompt_logprobs are not available for a prompt_embeds prompt (it has no token "
                                 "ids to score).")
            ids = [0] * len(embeds)      # placeholders: the model reads the embeddings at these positions
        else:
            text, ids, salt = self.split_prompt(prompt, with_media=True)
            if ids is None:
                ids = self.encode(text)
            if has_media(prompt):
                if params.truncate_prompt_tokens is not None:
                    raise ValueError("truncate_prompt_tokens with multi_modal_data is not supported (it could cut "
                                     "an image's placeholder tokens).")
                ids, media = self.process_media(prompt, ids)
                mm_features = media.features or None
            if params.truncate_prompt_tokens is not None:
                ids = ids[-self.truncation_limit(params):]
        self._validate(ids, params)
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = self.max_model_len - len(ids)
        arrival = arrival_time if arrival_time is not None else time.time()
        out = ProcessedRequest(request_id, text, ids, params, arrival, lora_request=lora_request,
                               prompt_embeds=embeds, mm_features=mm_features)
        for index in range(params.n):
            child_id = request_id if params.n == 1 else f"{index}_{request_id}"
            child_params = params
            if params.n > 1 and params.seed is not None:
                child_params = params.clone()
                child_params.seed = params.seed + index
            out.children.append(EngineCoreRequest(child_id, ids, child_params, self.eos_token_ids, arrival,
                                                  priority, max_tokens, salt, eos_token_id=self.eos_token_id,
                                                  parent_request_id=request_id if params.n > 1 else None,
                                                  reasoning_ended=reasoning_ended,
                                                  lora_request=lora_request, prompt_embeds=embeds,
                                                  mm_features=mm_features))
        return out

    def process_media(self, prompt: dict, ids: list[int]) -> tuple[list[int], ProcessedMedia]:
        """A prompt's ids with each image placeholder expanded, and its images processed (engine/multimodal.py);
        a prompt the server has processed already (``ProcessedMedia``) as it is."""
        media = prompt["multi_modal_data"]
        if isinstance(media, ProcessedMedia):
            return ids, media
        return self.media.process(ids, media, prompt.get("mm_processor_kwargs"))

    def with_media_processed(self, prompt: PromptType) -> PromptType:
        """``prompt`` (tokenized) with its multi_modal_data processed and its ids expanded, or as it is without media:
        the async engine and the server run this on the tokenizer thread, off the event loop."""
        if not has_media(prompt) or isinstance(prompt["multi_modal_data"], ProcessedMedia):
            return prompt
        _, ids, _ = self.split_prompt(prompt, with_media=True)
        ids, media = self.process_media(prompt, ids)
        return {**prompt, "prompt_token_ids": ids, "multi_modal_data": media}

    def check_prompt_embeds(self, prompt: dict) -> Any:
        """An EmbedsPrompt's tensor checked against the model: [num_tokens, hidden_size] (a leading batch axis of
        1 is dropped, a sparse tensor made dense), finite floats, on the CPU."""
        if not self.config.args.enable_prompt_embeds:
            raise ValueError("You must set enable_prompt_embeds=True (--enable-prompt-embeds) to input "
                             "prompt_embeds.")
        if "prompt_token_ids" in prompt or "prompt" in prompt:
            raise ValueError("A prompt has either prompt_embeds or prompt / prompt_token_ids, not both.")
        embeds = prompt["prompt_embeds"]
        if not isinstance(embeds, torch.Tensor):
            raise ValueError(f"prompt_embeds must be a torch.Tensor, got {type(embeds).__name__}.")
        if embeds.layout != torch.strided:
            embeds = embeds.to_dense()
        if embeds.dim() == 3 and embeds.shape[0] == 1:
            embeds = embeds[0]
        hf = self.config.hf_config
        # OPT's embedding has its own width where it is projected in (word_embed_proj_dim), as HF's inputs_embeds.
        hidden = getattr(hf, "word_embed_proj_dim", None) or hf.hidden_size
        if embeds.dim() != 2 or embeds.shape[1] != hidden:
            raise ValueError(f"prompt_embeds must have shape [num_tokens, hidden_size={hidden}], got "
                             f"{list(embeds.shape)}.")
        if not embeds.is_floating_point():
            raise ValueError(f"prompt_embeds must be floating point, got {embeds.dtype}.")
        embeds = embeds.detach().to("cpu")
        if embeds.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            embeds = embeds.float()
        if not bool(torch.isfinite(embeds).all()):
            raise ValueError("prompt_embeds contain NaN or infinite values.")
        return embeds.contiguous()

    def _check_lora_request(self, lora_request: Any) -> None:
        if lora_request is None:
            return
        if not self.config.args.enable_lora:     # vLLM's wording
            raise ValueError(f"Got lora_request {lora_request} but LoRA is not enabled!")
        if not isinstance(lora_request, LoRARequest):
            raise ValueError(f"lora_request must be a LoRARequest (from pagedllm.lora.request import LoRARequest), "
                             f"got {type(lora_request).__name__}.")

    def _process_pooling(self, request_id: str, prompt: PromptType, params: PoolingParams | None,
                         arrival_time: float | None, priority: int) -> ProcessedRequest:
        """A pooling request: one core request whose one step pools its prompt (no sampling settings apply)."""
        if not self.config.is_pooling:
            raise ValueError("Embedding API is not supported by this model: it is a text generation model. Use an "
                             "embedding model, or pass runner='pooling' (--runner pooling, task='embed') to use "
                             "this model as one.")
        if params is None:
            params = PoolingParams()
        if not isinstance(params, PoolingParams):
            if self.config.model.is_token_classifier:
                raise ValueError("LLM.generate() is only supported for generative models: this is a pooling (token "
                                 "classification / reward) model. Use LLM.reward() / LLM.encode(pooling_task="
                                 "'token_classify').")
            if self.config.model.is_classifier:
                raise ValueError("LLM.generate() is only supported for generative models: this is a pooling "
                                 "(sequence classification) model. Use LLM.classify() / LLM.score().")
            raise ValueError("LLM.generate() is only supported for generative models: this is a pooling (embedding) "
                             "model. Use LLM.embed() / LLM.encode(), or pass runner='generate' to use the model as a "
                             "generative model.")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError(f"priority must be an int, got {type(priority).__name__}.")
        self.config.verify_priority(priority)
        self.config.verify_pooling_task(params.task)
        params.verify_step_pooling(self.config.token_pooling_type, self.config.token_row_width)
        self.config.verify_dimensions(params)
        text, ids, salt = self.split_prompt(prompt)
        token_types = prompt.get("token_type_ids") if isinstance(prompt, dict) else None
        if ids is None:
            if token_types is not None:
                raise ValueError("token_type_ids need prompt_token_ids (the tokens they belong to).")
            ids = self.encode_for_pooling(text, params)
        elif params.truncate_prompt_tokens is not None:
            keep = self.truncation_limit(params)
            ids = ids[-keep:]
            token_types = None if token_types is None else list(token_types)[-keep:]
        self._check_prompt_ids(ids, "prompt")
        if token_types is not None:
            params = params.clone()
            params.second_segment_start = second_segment_start(token_types, len(ids))
        arrival = arrival_time if arrival_time is not None else time.time()
        out = ProcessedRequest(request_id, text, ids, params, arrival)
        out.children.append(EngineCoreRequest(request_id, ids, _POOLING_STEP, frozenset(), arrival, priority, 1, salt,
                                              pooling_params=params))
        return out

    def truncation_limit(self, params: SamplingParams | PoolingParams) -> int:
        """How many of the prompt's last tokens ``truncate_prompt_tokens`` keeps (set: not None)."""
        limit = params.truncate_prompt_tokens
        if limit > self.max_model_len:      # vLLM's check and message
            raise ValueError(f"truncate_prompt_tokens value ({limit}) is greater than max_model_len "
                             f"({self.max_model_len}). Please, select a smaller truncation size.")
        return self.max_model_len if limit == -1 else limit

    def encode_for_pooling(self, text: str, params: PoolingParams, add_special_tokens: bool = True) -> list[int]:
        """A pooling prompt's token ids: with ``truncate_prompt_tokens`` the tokenizer truncates (its truncation side,
        keeping [CLS] ... [SEP]), as sentence-transformers does."""
        if self.config.model.do_lower_case:
            text = text.lower()
        if params.truncate_prompt_tokens is None or self.tokenizer is None:
            return self.encode(text, add_special_tokens)
        return self.tokenizer(text, truncation=True, max_length=self.truncation_limit(params),
                              add_special_tokens=add_special_tokens)["input_ids"]

    def encode_pair_for_pooling(self, first: str, second: str, params: PoolingParams,
                                add_special_tokens: bool = True) -> dict:
        """A cross-encoder's (query, document) pair as one prompt, joined as its tokenizer joins a text pair
        (``[CLS] q [SEP] d [SEP]`` with token types 0 then 1 for BERT, ``<s> q </s></s> d </s>`` for XLM-R), as vLLM
        does; ``truncate_prompt_tokens`` truncates the longer text first (the tokenizer's longest_first). A config
        with ``use_sep_token: false`` (vLLM's "LLM as reranker"; ``use_pad_token``, its older name) has the two
        texts concatenated and tokenized as one."""
        if self.tokenizer is None:
            raise ValueError("Scoring text pairs with a cross-encoder needs a tokenizer (skip_tokenizer_init=True).")
        for text in (first, second):
            if not isinstance(text, str):
                raise ValueError(f"A cross-encoder scores text pairs: each query and document must be a string, "
                                 f"got {type(text).__name__}.")
            _check_utf8(text)
        if self.config.model.do_lower_case:
            first, second = first.lower(), second.lower()
        kwargs: dict = {"add_special_tokens": add_special_tokens}
        if params.truncate_prompt_tokens is not None:
            kwargs.update(truncation=True, max_length=self.truncation_limit(params))
        hf = self.config.hf_config
        use_sep = getattr(hf, "use_pad_token", None)
        if use_sep is None:
            use_sep = getattr(hf, "use_sep_token", True)
        encoded = (self.tokenizer(text=first, text_pair=second, **kwargs) if use_sep
                   else self.tokenizer(text=first + second, **kwargs))
        prompt = {"prompt_token_ids": list(encoded["input_ids"])}
        if encoded.get("token_type_ids") is not None:
            prompt["token_type_ids"] = list(encoded["token_type_ids"])
        return prompt

    def _check_prompt_ids(self, ids: list[int], what: str) -> None:
        """vLLM's prompt checks and messages: not empty, every id in the vocabulary, no longer than max_model_len."""
        if not ids:
            raise ValueError(f"The {what} cannot be empty")
        vocab = self.vocab_size
        wrong = [t for t in ids if not isinstance(t, int) or isinstance(t, bool)]
        if wrong:
            raise ValueError(f"Token ids must be integers, got {type(wrong[0]).__name__} {wrong[0]!r:.50} in the "
                             f"{what}.")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"Token id {bad[0]} is out of vocabulary (vocab size {vocab}).")
        if len(ids) > self.max_model_len:
            raise ValueError(context_overflow_message(self.max_model_len, len(ids), 0))

    def _validate(self, ids: list[int], params: SamplingParams) -> None:
        self._check_prompt_ids(ids, "decoder prompt")
        if params.extra_args and not self.logits_processor_classes:
            raise ValueError("extra_args (vllm_xargs) are read by custom logits processors, and this engine has "
                             "none (logits_processors=[...], --logits-processors).")
        for cls in self.logits_processor_classes:
            cls.validate_params(params)
        vocab = self.vocab_size
        params.verify_against_model(vocab, self.max_logprobs)
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer (skip_tokenizer_init=True).")
        if self.tokenizer is None:
            params.verify_without_tokenizer()
        elif params.bad_words:
            params.update_from_tokenizer(self.tokenizer, vocab)
        if params.thinking_token_budget is not None and not reasoning_parser_name(self.config.args):
            # vLLM's check (its words name its --reasoning-config too).
            raise ValueError("thinking_token_budget is set but no reasoning parser is configured. Please set "
                             "--reasoning-parser (reasoning_parser=...) to use thinking_token_budget.")
        reasoning = reasoning_parser_name(self.config.args)
        if (reasoning and isinstance(get_reasoning_parser(reasoning), HarmonyReasoningParser)
                and (params.structured_outputs is not None or params.thinking_token_budget is not None)):
            raise ValueError("structured outputs and thinking_token_budget are not supported with the openai_gptoss "
                             "reasoning parser yet: gpt-oss's harmony output opens with its analysis channel, and no "
                             "single token ends it.")
        if params.structured_outputs is not None:
            params.structured_outputs = structured_output.with_engine_defaults(
                params.structured_outputs, self.config.args.structured_outputs_config)
            structured_output.validate(params.structured_outputs)   # a bad schema / regex fails here, not in the core


def context_overflow_message(max_model_len: int, prompt_tokens: int, output_tokens: int) -> str:
    """vLLM's (0.18 on) words for a prompt plus the requested output over max_model_len, offline and served (the
    server's 400 has param "input_tokens"); ``output_tokens`` is 0 where no output length is asked (vLLM's default
    for a prompt check). The trailing "(parameter=..., value=...)" is part of vLLM's message text, and clients that
    retry with a smaller max_tokens read the numbers from it."""
    total = prompt_tokens + output_tokens
    return (f"This model's maximum context length is {max_model_len} tokens. However, you requested {output_tokens} "
            f"output tokens and your prompt contains {prompt_tokens} input tokens, for a total of {total} tokens. "
            f"Please reduce the length of the input prompt or the number of requested output tokens. "
            f"(parameter=input_tokens, value={prompt_tokens})")


def _cache_salt(prompt: dict) -> str | None:
    salt = prompt.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or not salt):
        raise ValueError("cache_salt must be a non-empty string.")
    return salt


def _check_utf8(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:   # JSON's "\ud800": no tokenizer can encode it; say what is wrong, not where
        raise ValueError("prompt contains invalid Unicode (lone surrogate).") from None


def second_segment_start(token_type_ids: Any, num_tokens: int) -> int | None:
    """Where a pair's second segment starts (its first token type 1), from a prompt's ``token_type_ids``: 0s, then
    1s, one per token (what a tokenizer gives a text pair); None when every type is 0."""
    if not isinstance(token_type_ids, (list, tuple)) or len(token_type_ids) != num_tokens:
        raise ValueError(f"token_type_ids must be a list with one entry per prompt token ({num_tokens}), got "
                         f"{token_type_ids!r:.100}.")
    types = list(token_type_ids)
    start = types.index(1) if 1 in types else len(types)
    if any(t != 0 for t in types[:start]) or any(t != 1 for t in types[start:]):
        raise ValueError(f"token_type_ids must be 0s then 1s (a text pair's two segments), got {types!r:.100}.")
    return start if start < len(types) else None


# A pooling request's sampling settings: never sampled; max_tokens=1 ends its scheduling with its prompt's step.
_POOLING_STEP = SamplingParams(max_tokens=1, detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)


def load_tokenizer(config: EngineConfig):
    return _load_tokenizer_from(config.model.tokenizer_path, config.args)


def _load_tokenizer_from(path: str, args: EngineArgs):
    from transformers import AutoTokenizer

    from pagedllm.model.hf_configs import remote_code_kwargs
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=args.trust_remote_code,
                                             revision=args.tokenizer_revision, use_fast=args.tokenizer_mode != "slow",
                                             token=args.hf_token,
                                             **remote_code_kwargs(args.trust_remote_code, args.code_revision))
    except Exception as e:
        raise ValueError(f"Could not load the tokenizer from {path!r}: {e}. "
                         f"Pass tokenizer=... or skip_tokenizer_init=True.") from None


def _tokenizer_key(path: str | None, args: EngineArgs) -> tuple:
    """What a loaded tokenizer depends on (``_load_tokenizer_from``'s inputs)."""
    return (path, args.trust_remote_code, args.tokenizer_revision, args.tokenizer_mode, args.hf_token,
            args.code_revision)


class EarlyTokenizers:
    """The API server's tokenizers (one for inputs, one for outputs), loaded while its engine-core process builds.

    The server only waits then, and afterwards loaded both one after the other before it could serve: 0.25-0.3 s
    each for SmolLM2 on the 2-core CPU VM (docs/perf.md, session 33), more for a 150k-token vocabulary. ``load`` runs
    in that wait, when ``model/loader.local_tokenizer_path`` can name the folder before the core resolves the model;
    ``take(config)`` hands one over if the core resolved the same folder with the same arguments, else loads one as
    before. Best effort: a failed early load is dropped, and the load in ``take`` reports the error."""

    def __init__(self, args: EngineArgs, count: int):
        self._args, self._count = args, count
        self._key: tuple | None = None
        self._loaded: list = []

    def load(self, core_answered: Callable[[], bool]) -> None:
        """Load them, stopping as soon as ``core_answered()`` (its build error, or a core ready this soon: the rest
        load in ``take``, as before)."""
        if self._args.skip_tokenizer_init:
            return
        from pagedllm.model.loader import local_tokenizer_path
        path = local_tokenizer_path(self._args)
        if path is None:
            return
        try:
            while len(self._loaded) < self._count and not core_answered():
                self._loaded.append(_load_tokenizer_from(path, self._args))
        except Exception:   # noqa: BLE001 - take() loads again and raises the error there
            self._loaded.clear()
        self._key = _tokenizer_key(path, self._args)

    def take(self, config: EngineConfig):
        if self._loaded and self._key == _tokenizer_key(config.model.tokenizer_path, config.args):
            return self._loaded.pop()
        return load_tokenizer(config)
