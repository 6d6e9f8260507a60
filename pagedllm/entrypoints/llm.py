"""``LLM``: vLLM's offline API (generate, chat, beam_search; embed, encode, classify, score for pooling models) over
an in-process LLMEngine."""
from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from pagedllm.config import EngineArgs
from pagedllm.engine.engine import LLMEngine, PromptType
from pagedllm.engine.input_processor import PromptTokenization
from pagedllm.entrypoints.beam_search import best_beams, check_logprobs_mode, extend_beams, step_params
from pagedllm.entrypoints.chat_utils import apply_chat_template, format_message_content, score_template_text
from pagedllm.entrypoints.media import load_image
from pagedllm.entrypoints.pooling.utils import pair_score
from pagedllm.entrypoints.openai.tool_parsers import functions_by_name
from pagedllm.outputs import (BeamSearchOutput, BeamSearchSequence, ClassificationRequestOutput,
                              EmbeddingRequestOutput, PoolingRequestOutput, RequestOutput, ScoringOutput,
                              ScoringRequestOutput)
from pagedllm.pooling_params import POOLING_TASKS, VLLM_POOLING_TASKS_NOT_SUPPORTED, PoolingParams
from pagedllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams


# use_tqdm: show the progress bar, or a tqdm-like callable that builds it (vLLM's Callable[..., tqdm]).
UseTqdm = bool | Callable[..., Any]


def _prompt_list(prompts: Any, name: str = "prompts") -> list:
    """One prompt (a string or a prompt dict) or a list / tuple of them, as a list."""
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if not hasattr(prompts, "__iter__") or isinstance(prompts, bytes):   # a list, a tuple, a pandas Series, ... do
        raise ValueError(f"{name} must be a string, a prompt dict or a list of them, got {type(prompts).__name__}.")
    return list(prompts)


def _lora_list(lora_request: Any, count: int, mismatch: str) -> list:
    """A LoRA request per prompt: ``lora_request`` repeated, or its list (``mismatch``: the ValueError of a list
    of another length)."""
    if isinstance(lora_request, (list, tuple)):
        if len(lora_request) != count:
            raise ValueError(mismatch)
        return list(lora_request)
    return [lora_request] * count


def _text_of(prompt: Any, name: str) -> Any:
    """A text prompt's string (a cross-encoder tokenizes the pair itself); anything else as given, for the
    tokenizer step's error."""
    if isinstance(prompt, dict) and "prompt" in prompt and "prompt_token_ids" not in prompt:
        return prompt["prompt"]
    if isinstance(prompt, dict):
        raise ValueError(f"{name}: a cross-encoder scores text pairs; token-id prompts cannot be paired.")
    return prompt


class LLM:
    """An LLM for offline inference: ``LLM(model).generate(prompts, SamplingParams(...))``."""

    def __init__(self, model: str = EngineArgs.model, **kwargs: Any):
        kwargs.setdefault("disable_log_stats", True)
        self.engine_args = EngineArgs.from_kwargs(model, **kwargs)
        self.llm_engine = LLMEngine.from_engine_args(self.engine_args)
        self._counter = itertools.count()

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> "LLM":
        llm = cls.__new__(cls)
        llm.engine_args = engine_args
        llm.llm_engine = LLMEngine.from_engine_args(engine_args)
        llm._counter = itertools.count()
        return llm

    @property
    def model_config(self):
        """vLLM's ``llm.model_config`` (``llm.llm_engine.model_config``: max_model_len, get_vocab_size(), ...)."""
        return self.llm_engine.model_config

    @property
    def supported_tasks(self) -> tuple[str, ...]:
        """vLLM's ``llm.supported_tasks``: ("generate",) or the pooling tasks the model takes."""
        return self.llm_engine.get_supported_tasks()

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        return self.llm_engine.default_sampling_params()

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        """Forget the prefix cache (vLLM's): False while requests hold blocks, unless ``reset_running_requests``
        puts them back in the queue first (they go on; their KV is computed again). The CPU tier of
        ``kv_offloading_size`` keeps its blocks (and takes the device's) unless ``reset_connector``, as vLLM's."""
        return self.llm_engine.reset_prefix_cache(reset_running_requests, reset_connector)

    def reset_mm_cache(self) -> None:
        """vLLM's: clear the multimodal caches. pagedllm keeps none across requests (LLMEngine.reset_mm_cache)."""
        self.llm_engine.reset_mm_cache()

    def reset_encoder_cache(self) -> None:
        """vLLM's: clear the cached encoder outputs. pagedllm keeps none across requests."""
        self.llm_engine.reset_encoder_cache()

    def start_profile(self, profile_prefix: str | None = None) -> None:
        """Record the engine's steps with torch.profiler until ``stop_profile()``, which writes a Chrome trace
        (``*.pt.trace.json.gz``; Perfetto or chrome://tracing) per worker into the folder of
        ``LLM(..., profiler_config={"profiler": "torch", "torch_profiler_dir": DIR})`` or of VLLM_TORCH_PROFILER_DIR
        (PAGEDLLM_TORCH_PROFILER_DIR) set before the LLM is created; without either, a RuntimeError (as vLLM)."""
        self.llm_engine.start_profile(profile_prefix)

    def stop_profile(self) -> None:
        self.llm_engine.stop_profile()

    def get_metrics(self) -> list:
        """A snapshot of the engine's metrics (``Counter`` / ``Gauge`` / ``Histogram`` objects of
        ``pagedllm.metrics_reader``: ``name``, ``labels``, ``value`` or ``count`` / ``sum`` / ``buckets``), named as
        the server's /metrics. Needs ``LLM(..., disable_log_stats=False)``, as vLLM's."""
        return self.llm_engine.get_metrics()

    # ---- sleep mode (vLLM's; needs enable_sleep_mode=True) ----------------------------------------------------------
    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        """Give back device memory without a restart. Level 1: the weights move to CPU memory and the KV cache is
        freed (its contents forgotten); level 2: the weights are dropped too (``wake_up`` loads them again from the
        checkpoint); level 0: scheduling pauses only. The prefix cache is reset. ``mode``: requests in flight are
        aborted ("abort"), finished first ("wait") or kept for after ``wake_up`` ("keep")."""
        self.llm_engine.sleep(level=level, mode=mode)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Take the memory back: ``tags`` among "weights", "kv_cache" (and "scheduling", after a level-0 sleep);
        None: all. Requests run again once nothing sleeps."""
        self.llm_engine.wake_up(tags)

    def is_sleeping(self) -> bool:
        return self.llm_engine.is_sleeping()

    # ---- the workers ----------------------------------------------------------------------------------------------
    def collective_rpc(self, method: str | Callable[..., Any], timeout: float | None = None, args: tuple = (),
                       kwargs: dict[str, Any] | None = None) -> list:
        """Run ``method`` on every worker and return each one's result (vLLM's): the name of a worker method
        (``ModelRunner``'s: e.g. "reload_weights"), or a function called with the worker first (``worker.model_runner``
        and ``worker.get_model()`` work as on vLLM's workers)."""
        return self.llm_engine.collective_rpc(method, timeout, args, kwargs)

    def apply_model(self, func: Callable[[Any], Any]) -> list:
        """``func(model)`` on the model inside each worker; each one's result. Move large tensors to the CPU
        before returning them."""
        return self.llm_engine.apply_model(func)

    # ---- generate -------------------------------------------------------------------------------------------------
    def generate(self, prompts: PromptType | Sequence[PromptType],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 use_tqdm: UseTqdm = True, lora_request: Any = None,
                 priority: list[int] | None = None, tokenization_kwargs: dict | None = None) -> list[RequestOutput]:
        """``lora_request``: a ``LoRARequest`` for every prompt, or a list of them (None: the base model), with
        ``LLM(..., enable_lora=True)``. ``tokenization_kwargs`` (vLLM's): ``add_special_tokens``, ``truncation`` /
        ``max_length`` / ``truncate_prompt_tokens`` (the last tokens kept), ``do_lower_case``."""
        prompts = _prompt_list(prompts)
        loras = _lora_list(lora_request, len(prompts), "The lengths of prompts and lora_request must be the same.")
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        if isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(prompts)
        else:
            if isinstance(sampling_params, dict) or not hasattr(sampling_params, "__iter__"):
                raise ValueError(f"sampling_params must be a SamplingParams or a list of them, got "
                                 f"{type(sampling_params).__name__}.")
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError("The lengths of prompts and params must be the same.")
        if priority is not None and len(priority) != len(prompts):
            raise ValueError("The lengths of prompts and priority must be the same.")
        for p in priority or ():
            self.llm_engine.config.verify_priority(p)
        if tokenization_kwargs is not None:
            prompts, params = self._tokenize_for_generation(prompts, params,
                                                            PromptTokenization.from_kwargs(tokenization_kwargs, None))
        return self._run(prompts, params, priority, use_tqdm, loras)

    def _tokenize_for_generation(self, prompts: list[PromptType], params: list[SamplingParams],
                                 tokenization: PromptTokenization) -> tuple[list[PromptType], list[SamplingParams]]:
        """generate()'s tokenization_kwargs: text prompts tokenized as they ask; their truncation becomes each
        request's truncate_prompt_tokens (a SamplingParams' own wins, as vLLM's)."""
        processor = self.llm_engine.input_processor
        truncated: dict[int, SamplingParams] = {}     # one clone per distinct object
        out_params = []
        for sp in params:
            if id(sp) not in truncated:
                truncated[id(sp)] = processor.with_truncation(sp, tokenization)
            out_params.append(truncated[id(sp)])
        return [processor.tokenize_for_request(prompt, sp, tokenization)
                for prompt, sp in zip(prompts, out_params)], out_params

    def _run(self, prompts: list[PromptType], params: list[SamplingParams], priority: list[int] | None,
             use_tqdm: UseTqdm, loras: list | None = None) -> list[RequestOutput]:
        engine = self.llm_engine
        if engine.is_sleeping():
            raise ValueError("The engine is sleeping (LLM.sleep()): call LLM.wake_up() before generating.")
        # generate() returns only finished outputs: asking the engine for FINAL_ONLY spares it building an
        # output (and copying the token list) for every request at every step. One clone per distinct object.
        final: dict[int, SamplingParams] = {}
        for sp in params:
            if id(sp) not in final and isinstance(sp, SamplingParams):
                final[id(sp)] = sp.clone()
                final[id(sp)].output_kind = RequestOutputKind.FINAL_ONLY
        params = [final.get(id(sp), sp) for sp in params]
        ids = []
        make_bar = use_tqdm if callable(use_tqdm) else tqdm
        # vLLM's two bars: the prompts as they are added (tokenized, checked), then as they finish.
        adding = make_bar(prompts, desc="Adding requests") if use_tqdm else prompts
        try:
            for i, prompt in enumerate(adding):
                rid = str(next(self._counter))
                engine.add_request(rid, prompt, params[i], priority=priority[i] if priority else 0,
                                   lora_request=loras[i] if loras else None)
                ids.append(rid)
        except Exception:
            engine.abort_request(ids)   # a bad prompt fails the call but leaves the engine clean
            raise
        finished: dict[str, RequestOutput] = {}
        bar = make_bar(total=len(ids), desc="Processed prompts", dynamic_ncols=True,
                       postfix="est. speed input: 0.00 toks/s, output: 0.00 toks/s") if use_tqdm else None
        t0 = time.perf_counter()
        n_in = n_out = 0
        wanted = set(ids)
        try:
            while wanted - finished.keys():
                for out in engine.step():
                    if out.finished and out.request_id in wanted:
                        finished[out.request_id] = out
                        if bar is not None:
                            n_in += len(out.prompt_token_ids or [])
                            if isinstance(out, RequestOutput):
                                n_out += sum(len(c.token_ids) for c in out.outputs)
                            dt = time.perf_counter() - t0
                            bar.postfix = (f"est. speed input: {n_in / dt:.2f} toks/s, "
                                           f"output: {n_out / dt:.2f} toks/s")
                            bar.update(1)
        except BaseException:
            engine.abort_request(ids)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [finished[rid] for rid in ids]

    # ---- pooling models -------------------------------------------------------------------------------------------
    def encode(self, prompts: PromptType | Sequence[PromptType],
               pooling_params: PoolingParams | Sequence[PoolingParams] | None = None, *,
               truncate_prompt_tokens: int | None = None, use_tqdm: UseTqdm = True, lora_request: Any = None,
               pooling_task: str = "encode", priority: list[int] | None = None,
               tokenization_kwargs: dict | None = None) -> list[PoolingRequestOutput]:
        """Pool each prompt's hidden states into one vector (``.outputs.data``, a tensor: an embedding, or with
        ``pooling_task="classify"`` a classifier's class probabilities), batched by the scheduler like generation. A
        pooling model only (runner='pooling'). ``tokenization_kwargs`` (vLLM's): ``truncation`` / ``max_length`` /
        ``truncate_prompt_tokens``, ``add_special_tokens``, ``do_lower_case``."""
        if not self.llm_engine.config.is_pooling:
            raise ValueError(f"LLM.{pooling_task}() is only supported for pooling (embedding or classification) "
                             f"models: this is a text generation model. Pass runner='pooling' (task='embed') to use "
                             f"it as one.")
        if lora_request is not None:
            raise ValueError("LoRA adapters with pooling (embedding) models are not supported yet by pagedllm.")
        # vLLM's task names pagedllm has no pooler for get PoolingParams' "not supported yet" below.
        if pooling_task not in POOLING_TASKS and pooling_task not in VLLM_POOLING_TASKS_NOT_SUPPORTED:
            raise ValueError(f"pooling_task must be one of {POOLING_TASKS}, got {pooling_task!r}.")
        if pooling_task == "encode" and self.llm_engine.config.model.is_token_classifier:
            pooling_task = "token_classify"      # the model's own output, as the server's /pooling without a task
        if pooling_task in POOLING_TASKS:
            self.llm_engine.config.verify_pooling_task(pooling_task)
        prompts = _prompt_list(prompts)
        if pooling_params is None or isinstance(pooling_params, PoolingParams):
            params = [pooling_params or PoolingParams()] * len(prompts)
        else:
            params = list(pooling_params) if isinstance(pooling_params, (list, tuple)) else [pooling_params]
            wrong = next((p for p in params if not isinstance(p, PoolingParams)), None)
            if wrong is not None:
                raise ValueError(f"pooling_params must be a PoolingParams or a list of them, got "
                                 f"{type(wrong).__name__} (SamplingParams are for LLM.generate).")
            if len(params) != len(prompts):
                raise ValueError("The lengths of prompts and pooling_params must be the same.")
        tokenization = PromptTokenization.from_kwargs(tokenization_kwargs, truncate_prompt_tokens)
        params = [p.clone() for p in params]     # the caller's objects stay as they were given
        for p in params:
            if p.task is not None and p.task != pooling_task:    # vLLM's check and message
                raise ValueError(f"You cannot overwrite param.task={p.task!r} with pooling_task={pooling_task!r}!")
            p.task = pooling_task
            if tokenization.truncate_prompt_tokens is not None:
                p.truncate_prompt_tokens = tokenization.truncate_prompt_tokens
            p.__post_init__()    # validates them (a task pagedllm has no pooler for is an error, not an embedding)
        if priority is not None and len(priority) != len(prompts):
            raise ValueError("The lengths of prompts and priority must be the same.")
        for p in priority or ():
            self.llm_engine.config.verify_priority(p)
        if tokenization_kwargs:
            prompts = [self._tokenize_for_pooling(prompt, p, tokenization) for prompt, p in zip(prompts, params)]
        return self._run(prompts, params, priority, use_tqdm)

    def _tokenize_for_pooling(self, prompt: PromptType, params: PoolingParams,
                              tokenization: PromptTokenization) -> PromptType:
        """A text prompt tokenized as ``tokenization`` asks (a token-id prompt as given), its length checked."""
        processor = self.llm_engine.input_processor
        prompt, ids = processor.tokenize_as_asked(
            prompt, tokenization, lambda text, special: processor.encode_for_pooling(text, params, special))
        tokenization.check_length(ids)
        return prompt

    def embed(self, prompts: PromptType | Sequence[PromptType],
              pooling_params: PoolingParams | Sequence[PoolingParams] | None = None, *,
              truncate_prompt_tokens: int | None = None, use_tqdm: UseTqdm = True, lora_request: Any = None,
              priority: list[int] | None = None,
              tokenization_kwargs: dict | None = None) -> list[EmbeddingRequestOutput]:
        """One embedding per prompt (``.outputs.embedding``, a list of floats)."""
        outputs = self.encode(prompts, pooling_params, truncate_prompt_tokens=truncate_prompt_tokens,
                              use_tqdm=use_tqdm, lora_request=lora_request, pooling_task="embed", priority=priority,
                              tokenization_kwargs=tokenization_kwargs)
        return [EmbeddingRequestOutput.from_base(o) for o in outputs]

    def classify(self, prompts: PromptType | Sequence[PromptType], *, use_tqdm: UseTqdm = True,
                 lora_request: Any = None, pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
                 truncate_prompt_tokens: int | None = None, priority: list[int] | None = None,
                 tokenization_kwargs: dict | None = None) -> list[ClassificationRequestOutput]:
        """Class probabilities per prompt (``.outputs.probs``, ``.outputs.num_classes``) from a sequence-
        classification model (``*ForSequenceClassification``): softmax over the labels, sigmoid for one label;
        ``PoolingParams(use_activation=False)`` gives the logits."""
        outputs = self.encode(prompts, pooling_params, truncate_prompt_tokens=truncate_prompt_tokens,
                              use_tqdm=use_tqdm, lora_request=lora_request, pooling_task="classify",
                              priority=priority, tokenization_kwargs=tokenization_kwargs)
        return [ClassificationRequestOutput.from_base(o) for o in outputs]

    def reward(self, prompts: PromptType | Sequence[PromptType], *, use_tqdm: UseTqdm = True,
               lora_request: Any = None, pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
               truncate_prompt_tokens: int | None = None, priority: list[int] | None = None,
               tokenization_kwargs: dict | None = None) -> list:
        """vLLM's reward-model API: every prompt token's reward (``.outputs.data``, ``[len, num_labels]``: a
        Qwen2ForRewardModel's sigmoid score, a process reward model's softmax over its two labels; the logits with
        ``PoolingParams(use_activation=False)``), i.e. ``LLM.encode(pooling_task="token_classify")``, as vLLM. On a
        ``*ForSequenceClassification`` reward model (Skywork-Reward, ...) that is its head on every token: the last
        row is the sequence's reward, which LLM.classify() gives alone."""
        return self.encode(prompts, pooling_params, truncate_prompt_tokens=truncate_prompt_tokens,
                           use_tqdm=use_tqdm, lora_request=lora_request, pooling_task="token_classify",
                           priority=priority, tokenization_kwargs=tokenization_kwargs)

    def score(self, text_1: PromptType | Sequence[PromptType], text_2: PromptType | Sequence[PromptType], *,
              truncate_prompt_tokens: int | None = None, use_tqdm: UseTqdm = True, lora_request: Any = None,
              pooling_params: PoolingParams | None = None,
              tokenization_kwargs: dict | None = None,
              chat_template: str | None = None) -> list[ScoringRequestOutput]:
        """Similarity of text pairs. A cross-encoder (a ``*ForSequenceClassification`` with one label, e.g.
        bge-reranker, ms-marco-MiniLM) reads each pair as one prompt and gives its score (its activation unless
        ``PoolingParams(use_activation=False)``); an embedding model gives the cosine of the two embeddings.
        ``text_1`` is one text scored against each of ``text_2``, or as many texts as ``text_2`` (pairwise), as
        vLLM; with pooler_config task "token_embed", ColBERT's MaxSim over the token embeddings (vLLM's late
        interaction). ``chat_template``: a cross-encoder's score template (Qwen3-Reranker's), rendering each pair as the
        messages ``[{"role": "query", ...}, {"role": "document", ...}]``, as vLLM's."""
        given, second = _prompt_list(text_1, "text_1"), _prompt_list(text_2, "text_2")
        first = given * len(second) if len(given) == 1 else given
        if len(first) != len(second) or not second:
            raise ValueError(f"text_1 must be one text or as many as text_2 (got {len(first)} and {len(second)}).")
        config = self.llm_engine.config
        if not config.is_pooling:
            raise ValueError("LLM.score() is only supported for pooling models: this is a text generation model. Pass "
                             "runner='pooling' to use it as one.")
        if config.model.is_classifier:
            return self._cross_encoder_score(first, second, pooling_params,
                                             PromptTokenization.from_kwargs(tokenization_kwargs,
                                                                             truncate_prompt_tokens),
                                             use_tqdm, lora_request, chat_template)
        if chat_template is not None:
            raise ValueError("chat_template (a score template) applies to cross-encoder scoring; this is an "
                             "embedding model, which scores the cosine of two embeddings.")
        params = (pooling_params or PoolingParams()).clone()
        # The cosine does not depend on the norms: the request's normalize / use_activation changes nothing here.
        params.normalize, params.use_activation = True, None
        task = "token_embed" if config.late_interaction else "embed"
        # One text against several is embedded once (vLLM's 1:N), then paired with each.
        encoded = self.encode(given + second, params, truncate_prompt_tokens=truncate_prompt_tokens,
                              use_tqdm=use_tqdm, lora_request=lora_request, pooling_task=task,
                              tokenization_kwargs=tokenization_kwargs)
        n = len(given)
        firsts = encoded[:n] * len(second) if n == 1 else encoded[:n]
        results = []
        for a, b in zip(firsts, encoded[n:]):
            score = pair_score(a.outputs.data, b.outputs.data, config.late_interaction)
            results.append(ScoringRequestOutput(f"{a.request_id}_{b.request_id}", ScoringOutput(score),
                                                a.prompt_token_ids + b.prompt_token_ids, True))
        return results

    def _cross_encoder_score(self, first: list, second: list, pooling_params: PoolingParams | None,
                             tokenization: PromptTokenization, use_tqdm: UseTqdm,
                             lora_request: Any, chat_template: str | None = None) -> list[ScoringRequestOutput]:
        self.llm_engine.config.verify_pooling_task("score")
        params = (pooling_params or PoolingParams()).clone()
        if tokenization.truncate_prompt_tokens is not None:
            params.truncate_prompt_tokens = tokenization.truncate_prompt_tokens
        params.task = "score"
        params.__post_init__()
        processor = self.llm_engine.input_processor

        def text(prompt: Any, name: str) -> Any:
            text = _text_of(prompt, name)
            return text.lower() if tokenization.do_lower_case and isinstance(text, str) else text
        if chat_template is not None:
            pairs = [{"prompt_token_ids": processor.encode_for_pooling(
                score_template_text(self.get_tokenizer(), chat_template, text(a, "text_1"), text(b, "text_2")),
                params, tokenization.add_special_tokens)} for a, b in zip(first, second)]
        else:
            pairs = [processor.encode_pair_for_pooling(text(a, "text_1"), text(b, "text_2"), params,
                                                       tokenization.add_special_tokens)
                     for a, b in zip(first, second)]
        for pair in pairs:
            tokenization.check_length(pair["prompt_token_ids"])
        outputs = self.encode(pairs, params, use_tqdm=use_tqdm, lora_request=lora_request, pooling_task="score")
        return [ScoringRequestOutput.from_base(o) for o in outputs]

    # ---- chat -----------------------------------------------------------------------------------------------------
    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, use_tqdm: UseTqdm = True,
             lora_request: Any = None, chat_template: str | None = None,
             chat_template_content_format: str = "auto", add_generation_prompt: bool = True,
             continue_final_message: bool = False, tools: list[dict] | None = None,
             chat_template_kwargs: dict | None = None, mm_processor_kwargs: dict | None = None,
             tokenization_kwargs: dict | None = None) -> list[RequestOutput]:
        """``mm_processor_kwargs`` (vLLM's): these conversations' image processor settings over the engine's
        (Qwen2-VL's min_pixels / max_pixels). ``tokenization_kwargs`` (vLLM's): the rendered conversation gets no
        special tokens unless ``add_special_tokens`` is True; ``truncation`` / ``max_length`` as in generate()."""
        if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, (list, tuple)):
            raise ValueError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts (one conversation) or "
                             f"a list of such lists, got {type(messages).__name__}.")
        if not messages:
            raise ValueError("messages must not be empty.")
        if isinstance(tools, list):
            # The server's checks of OpenAI's tool shape (callables, which HF's template turns into schemas, pass).
            functions_by_name([tool for tool in tools if not callable(tool)])
        tokenization = PromptTokenization.from_kwargs(tokenization_kwargs, None, add_special_tokens=False)
        if tokenization.do_lower_case:
            raise ValueError("tokenization_kwargs do_lower_case is not supported by LLM.chat (it would lower-case the "
                             "chat template's markup); lower-case the messages instead.")
        conversations = [messages] if isinstance(messages[0], dict) else list(messages)
        media = self.llm_engine.input_processor.media
        prompts = []
        for conv in conversations:
            images: list = []       # image parts (URLs, PIL images), in order; "<image>" stands for each
            content = format_message_content(conv, chat_template_content_format, images=images,
                                             image_placeholder=media.image_placeholder,
                                             template=chat_template or getattr(self.get_tokenizer(), "chat_template",
                                                                               None))
            prompt: dict = {"prompt_token_ids": apply_chat_template(
                self.get_tokenizer(), content, chat_template=chat_template,
                add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
                tools=tools, chat_template_kwargs=chat_template_kwargs,
                add_special_tokens=tokenization.add_special_tokens,
                trusted=True)}     # the caller's own template: their code, as trusted as the rest of their program
            if images:
                media.check_image_count(len(images))      # before any image is fetched
                local = self.llm_engine.config.args.allowed_local_media_path
                prompt["multi_modal_data"] = {"image": [load_image(x, local) for x in images]}
            if mm_processor_kwargs is not None:
                prompt["mm_processor_kwargs"] = mm_processor_kwargs
            prompts.append(prompt)
        outputs = self.generate(prompts, sampling_params, use_tqdm=use_tqdm, lora_request=lora_request,
                                tokenization_kwargs=tokenization_kwargs)
        tok = self.get_tokenizer()
        for prompt, out in zip(prompts, outputs):
            # The rendered conversation, one "<image>" per image (its prompt_token_ids hold the expanded ones).
            out.prompt = tok.decode(prompt["prompt_token_ids"] if "multi_modal_data" in prompt
                                    else out.prompt_token_ids)
        return outputs

    # ---- beam search ----------------------------------------------------------------------------------------------
    def beam_search(self, prompts: Sequence[PromptType], params: BeamSearchParams,
                    lora_request: Any = None, use_tqdm: bool = False,
                    concurrency_limit: int | None = None) -> list[BeamSearchOutput]:
        """vLLM's beam search: each step extends every live beam by one token with ``2 * beam_width`` logprobs,
        scores candidates by ``cum_logprob / len(tokens) ** length_penalty`` and keeps the best ``beam_width``. A
        step is one generate() over the live beams of ``concurrency_limit`` prompts at a time (None: all of them);
        a sequence's text is ``tokenizer.decode(tokens)``, prompt and special tokens included, as vLLM's.
        ``lora_request``: a ``LoRARequest`` for every prompt, or a list of them, as generate() takes it."""
        if not isinstance(params, BeamSearchParams):
            raise ValueError(f"params must be a BeamSearchParams, got {type(params).__name__}.")
        engine = self.llm_engine
        check_logprobs_mode(engine.config.args.logprobs_mode)
        tok = self.get_tokenizer()
        eos = engine.eos_token_ids
        prompts = _prompt_list(prompts)
        loras = _lora_list(lora_request, len(prompts), "Lora request list should be the same length as the prompts")
        if concurrency_limit is None:
            concurrency_limit = max(len(prompts), 1)
        if not isinstance(concurrency_limit, int) or isinstance(concurrency_limit, bool) or concurrency_limit < 1:
            raise ValueError(f"concurrency_limit must be a positive int, got {concurrency_limit!r}.")
        prompt_ids = [engine.tokenize_prompt(prompt)[1] for prompt in prompts]
        num_groups = -(-len(prompts) // concurrency_limit)
        # use_tqdm: one bar over the token steps of every group of prompts (vLLM shows the beam search's steps).
        bar = tqdm(total=num_groups * params.max_tokens, desc="Beam search", dynamic_ncols=True) \
            if use_tqdm else None
        sampling = step_params(params)
        results = []
        for start in range(0, len(prompts), concurrency_limit):
            group = prompt_ids[start:start + concurrency_limit]
            live = [[BeamSearchSequence(tokens=list(ids), logprobs=[], cum_logprob=0.0, lora_request=lora)]
                    for ids, lora in zip(group, loras[start:start + concurrency_limit])]
            done: list[list[BeamSearchSequence]] = [[] for _ in group]
            for step in range(params.max_tokens):
                beams = [seq for beams_of_prompt in live for seq in beams_of_prompt]
                if not beams:
                    if bar is not None:
                        bar.update(params.max_tokens - step)
                    break
                if bar is not None:
                    bar.update(1)
                outs = iter(self.generate([{"prompt_token_ids": s.tokens} for s in beams], sampling, use_tqdm=False,
                                          lora_request=[s.lora_request for s in beams]))
                live = [extend_beams(mine, [next(outs).outputs[0].logprobs[0] for _ in mine], params, eos, finished)
                        for mine, finished in zip(live, done)]
            for mine, finished in zip(live, done):
                best = best_beams(finished, mine, params, eos)
                for seq in best:
                    if tok is not None:
                        seq.text = tok.decode(seq.tokens)
                results.append(BeamSearchOutput(sequences=best))
        if bar is not None:
            bar.close()
        return results

