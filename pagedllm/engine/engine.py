"""LLMEngine: add_request / step / abort_request, in-process.

Prompts are tokenized here, requests live in the Scheduler, the ModelRunner does the forward pass, and each step
returns RequestOutputs for the requests that made progress. ``n > 1`` is run as ``n`` child requests sharing the
prompt (the prefix cache shares its blocks); their completions are gathered into one RequestOutput.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import torch

from pagedllm.config import EngineArgs, EngineConfig
from pagedllm.engine.detokenizer import IncrementalDetokenizer, decode_token
from pagedllm.engine.kv_cache import KVCacheManager
from pagedllm.engine.request import FINISH_REASONS, Request, RequestStatus
from pagedllm.engine.scheduler import Scheduler, SchedulerOutput
from pagedllm.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

if TYPE_CHECKING:
    from pagedllm.worker.model_runner import LaunchedStep, ModelRunnerOutput

logger = logging.getLogger(__name__)

PromptType = str | dict[str, Any]


@dataclass
class ParentRequest:
    """What the user submitted: one prompt, n completions."""
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    children: list[Request] = field(default_factory=list)
    detoks: list[IncrementalDetokenizer | None] = field(default_factory=list)
    sent_tokens: list[int] = field(default_factory=list)   # per child, for DELTA outputs
    sent_chars: list[int] = field(default_factory=list)
    prompt_logprobs: list | None = None

    @property
    def finished(self) -> bool:
        return all(c.is_finished for c in self.children)


@dataclass
class StepStats:
    """What one step did, for logs and metrics."""
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    num_preemptions: int = 0
    finished: list[tuple[Request, str]] = field(default_factory=list)


class LLMEngine:
    def __init__(self, config: EngineConfig):
        from pagedllm.worker.model_runner import ModelRunner

        self.config = config
        t0 = time.perf_counter()
        self.tokenizer = None if config.args.skip_tokenizer_init else load_tokenizer(config)
        self.runner = ModelRunner(config)
        num_blocks = self.runner.determine_num_blocks()
        capacity = num_blocks * config.block_size
        if num_blocks <= 0:
            raise ValueError("No memory left for the KV cache: raise gpu_memory_utilization (GPU) or "
                             "kv_cache_memory_gb (CPU), or lower max_num_batched_tokens.")
        if capacity < config.max_model_len:
            raise ValueError(
                f"The model's max seq len ({config.max_model_len}) is larger than the maximum number of tokens that "
                f"can be stored in KV cache ({capacity}). Try increasing the KV cache size or decreasing "
                f"max_model_len when initializing the engine.")
        self.runner.allocate_kv_cache(num_blocks)
        self.kv_cache = KVCacheManager(num_blocks, config.block_size, config.args.enable_prefix_caching)
        self.scheduler = Scheduler(self.kv_cache, config.max_num_seqs, config.max_num_batched_tokens,
                                   config.max_model_len, config.args.enable_chunked_prefill)
        self.eos_token_ids = self._eos_token_ids()
        self.parents: dict[str, ParentRequest] = {}
        self.child_to_parent: dict[str, str] = {}
        # Async scheduling: the launched step whose tokens the host has not seen yet.
        self._in_flight: tuple[SchedulerOutput, LaunchedStep] | None = None
        self._async_scheduling = config.async_scheduling    # fixed for the engine's life (reads the environment)
        self.startup_seconds = time.perf_counter() - t0
        logger.info("pagedllm engine ready in %.1f s: %s on %s (%s), %d KV blocks of %d tokens (%d tokens)",
                    self.startup_seconds, config.args.model, config.device, str(config.dtype).replace("torch.", ""),
                    num_blocks, config.block_size, capacity)

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> "LLMEngine":
        return cls(args.create_config())

    # ---- model facts ----------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.config.hf_config.vocab_size

    def _eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.config.model.generation_config.get("eos_token_id"),
                       getattr(self.config.hf_config, "eos_token_id", None),
                       getattr(self.tokenizer, "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(int(x) for x in source)
        return ids

    def default_sampling_params(self) -> SamplingParams:
        """SamplingParams() overridden by the model's generation_config (vLLM's behaviour when none is given)."""
        gen = self.config.model.generation_config
        keys = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens"}
        values = {ours: gen[theirs] for theirs, ours in keys.items() if gen.get(theirs) is not None}
        if gen.get("do_sample") is False:
            values["temperature"] = 0.0
        return SamplingParams(**values)

    # ---- requests -----------------------------------------------------------------------------------------------
    def tokenize_prompt(self, prompt: PromptType, add_special_tokens: bool = True) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            text, ids = prompt, None
        elif isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                text, ids = prompt.get("prompt"), list(prompt["prompt_token_ids"])
            elif "prompt" in prompt:
                text, ids = prompt["prompt"], None
            else:
                raise ValueError("A prompt dict needs 'prompt' or 'prompt_token_ids'.")
        else:
            raise ValueError(f"Unsupported prompt type {type(prompt).__name__}; use str, "
                             f"{{'prompt': ...}} or {{'prompt_token_ids': [...]}}.")
        if ids is None:
            if not isinstance(text, str):
                raise ValueError(f"prompt must be a string, got {type(text).__name__}.")
            if self.tokenizer is None:
                raise ValueError("Text prompts need a tokenizer, but skip_tokenizer_init=True: pass "
                                 "{'prompt_token_ids': [...]} instead.")
            ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return text, ids

    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams | None = None,
                    arrival_time: float | None = None, priority: int = 0) -> None:
        if request_id in self.parents:
            raise ValueError(f"Request id {request_id!r} is already running.")
        params = params if params is not None else self.default_sampling_params()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"Expected SamplingParams, got {type(params).__name__}.")
        text, ids = self.tokenize_prompt(prompt)
        if params.truncate_prompt_tokens is not None:
            ids = ids[-params.truncate_prompt_tokens:]
        self._validate(ids, params)
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = self.config.max_model_len - len(ids)
        parent = ParentRequest(request_id, text, ids, params, arrival_time or time.time())
        for index in range(params.n):
            child_id = request_id if params.n == 1 else f"{index}_{request_id}"
            child_params = params
            if params.n > 1 and params.seed is not None:
                child_params = params.clone()
                child_params.seed = params.seed + index
            child = Request(child_id, ids, child_params, self.eos_token_ids, parent.arrival_time, priority,
                            max_tokens=max_tokens)
            if child_params.seed is not None:
                child.generator = torch.Generator(device=self.config.device).manual_seed(child_params.seed)
            parent.children.append(child)
            detok = None
            if self.tokenizer is not None and params.detokenize:
                detok = IncrementalDetokenizer(self.tokenizer, child)
            parent.detoks.append(detok)
            parent.sent_tokens.append(0)
            parent.sent_chars.append(0)
            self.child_to_parent[child_id] = request_id
        self.parents[request_id] = parent
        for child in parent.children:
            self.scheduler.add_request(child)

    def _validate(self, ids: list[int], params: SamplingParams) -> None:
        if not ids:
            raise ValueError("The decoder prompt cannot be empty")
        vocab = self.vocab_size
        bad = [t for t in ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"Token id {bad[0]} is out of vocabulary (vocab size {vocab}).")
        if len(ids) > self.config.max_model_len:
            raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of "
                             f"{self.config.max_model_len}. Make sure that `max_model_len` is no smaller than the "
                             f"number of text tokens.")
        params.verify_against_model(vocab, self.config.args.max_logprobs)
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer (skip_tokenizer_init=True).")

    def abort_request(self, request_ids: str | Iterable[str]) -> None:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for rid in request_ids:
            parent = self.parents.pop(rid, None)
            if parent is None:
                continue
            for child in parent.children:
                if not child.is_finished:
                    self.scheduler.finish_request(child, RequestStatus.FINISHED_ABORTED)
                self.child_to_parent.pop(child.request_id, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self.parents)

    def get_num_unfinished_requests(self) -> int:
        return len(self.parents)

    # ---- one step -----------------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        outputs, _ = self.step_with_stats()
        return outputs

    def step_with_stats(self) -> tuple[list[RequestOutput], StepStats]:
        """Schedule and launch a step; return the outputs of whatever finished on the device.

        Synchronous: the step's own outputs. Async scheduling (CUDA default): step N is launched first, then the
        host waits for step N-1's tokens and turns them into outputs while the device runs step N; step N
        already computes step N-1's tokens, taking them from the device (a request that turns out to have
        stopped just drops its extra token). Steps that need the host's view of every token before sampling
        (logprobs, penalties) are sampled synchronously, after the step in flight is processed."""
        stats = StepStats()
        sched = self.scheduler.schedule()
        stats.num_preemptions = len(sched.preempted)
        launched, sample_async = None, False
        if not sched.is_empty:
            sample_async = self._async_scheduling and _can_sample_async(sched)
            for item in sched.scheduled:
                r = item.request
                stats.num_prompt_tokens += max(0, min(r.num_computed_tokens + item.num_new_tokens,
                                                      r.num_prompt_tokens) - r.num_computed_tokens)
            launched = self.runner.launch(sched, sample_async)
        touched: dict[str, ParentRequest] = {}
        if self._in_flight is not None:
            prev_sched, prev_step = self._in_flight
            self._in_flight = None
            self._process_tokens(prev_sched, self.runner.finish(prev_step), stats, touched)
        if launched is not None:
            if sample_async:
                self.scheduler.advance(sched)
                self._in_flight = (sched, launched)
            else:
                result = self.runner.finish(launched)
                self.scheduler.advance(sched)
                self._process_tokens(sched, result, stats, touched)
        # A prefill chunk that produced prompt logprobs but no token yet is not reported (like vLLM).
        outputs = []
        for parent in touched.values():
            out = self._make_output(parent)
            if out is not None:
                outputs.append(out)
            if parent.finished:
                self.parents.pop(parent.request_id, None)
                for c in parent.children:
                    self.child_to_parent.pop(c.request_id, None)
        return outputs, stats

    def _process_tokens(self, sched: SchedulerOutput, result: ModelRunnerOutput, stats: StepStats,
                        touched: dict[str, ParentRequest]) -> None:
        """Commit a step's sampled tokens: logprobs, stop checks, detokenization; collects the touched parents."""
        now = time.time()
        for item in sched.scheduled:
            rows = result.prompt_logprobs.get(item.request.request_id)
            if rows is not None:
                self._record_prompt_logprobs(item.request, rows)
        got_token = self.scheduler.commit_tokens(sched, result.sampled)
        for r in got_token:
            stats.num_generation_tokens += 1
            if r.first_token_time is None:
                r.first_token_time = now
            r.last_token_time = now
            lp = result.logprobs.get(r.request_id)
            if lp is not None:
                self._record_logprobs(r, lp)
            parent = self.parents[self.child_to_parent[r.request_id]]
            index = parent.children.index(r) if len(parent.children) > 1 else 0
            status = self.scheduler.check_stop(r)
            detok = parent.detoks[index]
            if detok is not None:
                # The EOS / stop token's own text is left out unless include_stop_str_in_output (as vLLM).
                ids = r.token_ids
                if status == RequestStatus.FINISHED_STOPPED and not r.sampling_params.include_stop_str_in_output:
                    ids = ids[:-1]
                # Stop strings only count once min_tokens are out (as vLLM).
                stop_str = detok.update(ids, check_stop=r.num_output_tokens > r.sampling_params.min_tokens)
                if stop_str is not None and (status is None or r.stop_reason is None):
                    r.stop_reason = stop_str
                    status = RequestStatus.FINISHED_STOPPED
            if status is not None:
                self.scheduler.finish_request(r, status)
                stats.finished.append((r, FINISH_REASONS[status]))
            touched[parent.request_id] = parent

    def _logprob_dict(self, ids, vals, chosen, chosen_lp, rank) -> dict[int, Logprob]:
        entries: dict[int, Logprob] = {}
        dec = (lambda t: decode_token(self.tokenizer, t)) if self.tokenizer is not None else (lambda t: None)
        # The sampled token first, then the top-k (vLLM's order); rank 1 = most likely.
        entries[chosen] = Logprob(chosen_lp, rank, dec(chosen))
        for j, (tid, val) in enumerate(zip(ids, vals)):
            if tid not in entries:
                entries[tid] = Logprob(val, j + 1, dec(tid))
        return entries

    def _record_logprobs(self, r: Request, lp: tuple) -> None:
        ids, vals, chosen_lp, rank = lp
        r.output_logprobs.append(self._logprob_dict(ids, vals, r.token_ids[-1], chosen_lp, rank))
        r.cumulative_logprob += chosen_lp

    def _record_prompt_logprobs(self, r: Request, rows: list) -> None:
        if not r.prompt_logprobs:
            r.prompt_logprobs = [None] + [None] * (r.num_prompt_tokens - 1)
        for pos, target, lp, rank, ids, vals in rows:
            r.prompt_logprobs[pos] = self._logprob_dict(ids, vals, target, lp, rank)

    def _make_output(self, parent: ParentRequest) -> RequestOutput | None:
        kind = parent.params.output_kind
        finished = parent.finished
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        completions = []
        for index, (child, detok) in enumerate(zip(parent.children, parent.detoks)):
            token_ids = child.output_token_ids
            text = detok.visible_text(child.is_finished) if detok is not None else ""
            logprobs = child.output_logprobs if child.sampling_params.logprobs is not None else None
            if kind == RequestOutputKind.DELTA:
                token_ids = token_ids[parent.sent_tokens[index]:]
                text = text[parent.sent_chars[index]:]
                if logprobs is not None:
                    logprobs = logprobs[parent.sent_tokens[index]:]
                parent.sent_tokens[index] = child.num_output_tokens
                parent.sent_chars[index] += len(text)
            completions.append(CompletionOutput(
                index=index, text=text, token_ids=list(token_ids),
                cumulative_logprob=child.cumulative_logprob if child.sampling_params.logprobs is not None else None,
                logprobs=logprobs, finish_reason=FINISH_REASONS.get(child.status),
                stop_reason=child.stop_reason))
        first = parent.children[0]
        prompt_logprobs = first.prompt_logprobs or None if parent.params.prompt_logprobs is not None else None
        metrics = RequestMetrics(arrival_time=parent.arrival_time, first_scheduled_time=first.first_scheduled_time,
                                 first_token_time=first.first_token_time, last_token_time=first.last_token_time,
                                 finished_time=time.time() if finished else None)
        return RequestOutput(request_id=parent.request_id, prompt=parent.prompt,
                             prompt_token_ids=parent.prompt_token_ids, prompt_logprobs=prompt_logprobs,
                             outputs=completions, finished=finished, metrics=metrics,
                             num_cached_tokens=max(first.num_cached_tokens, 0))

    def reset_prefix_cache(self) -> bool:
        return self.kv_cache.reset_prefix_cache()


def _can_sample_async(sched: SchedulerOutput) -> bool:
    """Can this step be sampled before the host has seen the previous step's tokens? Not when the sampler
    needs every token on the host (penalties) or the host must read logprobs."""
    for item in sched.scheduled:
        sp = item.request.sampling_params
        if (sp.logprobs is not None or sp.prompt_logprobs is not None or sp.repetition_penalty != 1.0
                or sp.frequency_penalty or sp.presence_penalty):
            return False
    return True


def load_tokenizer(config: EngineConfig):
    from transformers import AutoTokenizer
    args = config.args
    try:
        return AutoTokenizer.from_pretrained(config.model.tokenizer_path, trust_remote_code=args.trust_remote_code,
                                             revision=args.tokenizer_revision, use_fast=args.tokenizer_mode != "slow")
    except Exception as e:
        raise ValueError(f"Could not load the tokenizer from {config.model.tokenizer_path!r}: {e}. "
                         f"Pass tokenizer=... or skip_tokenizer_init=True.") from None
