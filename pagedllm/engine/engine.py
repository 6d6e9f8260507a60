"""LLMEngine: add_request / step / abort_request, in-process (what ``LLM`` drives).

The front end (input processor: tokenize + validate; output processor: detokenize, stop strings, ``n`` gathering)
and the engine core (scheduler + model runner: engine/core.py) run in the caller's thread; each ``step`` returns
RequestOutputs for the requests that made progress.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Iterable, Mapping

from pagedllm.config import EngineArgs, EngineConfig, ModelConfig
from pagedllm.engine.core import EngineCore, create_engine_config
from pagedllm.engine.input_processor import InputProcessor, PromptType, load_tokenizer, warn_trace_headers_unused
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.engine.scheduler import StepStats
from pagedllm.logger import log_engine_start
from pagedllm.lora.request import LoRARequest, needs_loading
from pagedllm.outputs import RequestOutput
from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import SamplingParams
from pagedllm.usage.usage_lib import UsageContext
from pagedllm.worker.sleep_mode import check_sleep_enabled, check_sleep_level, check_sleep_mode, check_wake_up_tags

logger = logging.getLogger(__name__)

__all__ = ["LLMEngine", "PromptType", "StepStats"]


class LLMEngine:
    def __init__(self, config: EngineConfig):
        t0 = time.perf_counter()
        self.config = config
        self.tokenizer = None if config.args.skip_tokenizer_init else load_tokenizer(config)
        self.core = EngineCore(config)
        self.input_processor = InputProcessor(config, self.tokenizer)
        self.output_processor = OutputProcessor(self.tokenizer, config.args.stream_interval)
        self._loras_added: dict[int, LoRARequest] = {}      # adapters add_lora has checked and loaded, by id
        # LLM(disable_log_stats=False): the server's periodic throughput / KV-cache line, offline too.
        self.stats = None
        if not config.args.disable_log_stats:
            from pagedllm.metrics import EngineMetrics
            self.stats = EngineMetrics.for_engine(config)
            self.stats.attach(self.core.snapshot, config.cache_config)
        self.startup_seconds = time.perf_counter() - t0
        log_engine_start(logger, self.core.info(), self.startup_seconds)

    @classmethod
    def from_engine_args(cls, args: EngineArgs, usage_context: UsageContext | str | None = None) -> "LLMEngine":
        """``usage_context`` (vLLM's UsageContext): picks the scheduler's defaults as in vLLM (see
        pagedllm/usage/usage_lib.py); pagedllm sends no usage report. None: the arguments' own (the LLM class's)."""
        return cls(create_engine_config(args.for_usage_context(usage_context)))

    # ---- the core's parts (tests and tools look at them) ---------------------------------------------------------
    @property
    def scheduler(self):
        return self.core.scheduler

    @property
    def kv_cache(self):
        return self.core.kv_cache

    @property
    def runner(self):
        return self.core.runner

    # ---- model facts ----------------------------------------------------------------------------------------------
    @property
    def model_config(self) -> ModelConfig:
        """vLLM's ``llm.llm_engine.model_config`` (max_model_len, dtype, hf_config, ...)."""
        return self.config.model_config

    @property
    def cache_config(self):
        """vLLM's ``llm.llm_engine.cache_config`` (block_size, cache_dtype, num_gpu_blocks once sized, ...)."""
        return self.config.cache_config

    @property
    def vllm_config(self) -> EngineConfig:
        """vLLM's ``llm.llm_engine.vllm_config``: the engine's resolved configuration. Of vLLM's sub-configs it has
        ``model_config`` (what examples read: ``vllm_config.model_config.hf_config.id2label``), ``scheduler_config``,
        ``cache_config`` (``num_gpu_blocks`` once sized) and ``parallel_config``, read-only."""
        return self.config

    def get_model_config(self) -> ModelConfig:
        return self.config.model_config

    def get_supported_tasks(self) -> tuple[str, ...]:
        return self.config.supported_tasks

    def get_tokenizer(self):
        """The engine's HF tokenizer (None with skip_tokenizer_init=True), as vLLM's ``LLMEngine.get_tokenizer``."""
        return self.tokenizer

    @property
    def vocab_size(self) -> int:
        return self.input_processor.vocab_size

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.input_processor.eos_token_ids

    def default_sampling_params(self) -> SamplingParams:
        return self.input_processor.default_sampling_params()

    def tokenize_prompt(self, prompt: PromptType, add_special_tokens: bool = True) -> tuple[str | None, list[int]]:
        return self.input_processor.tokenize_prompt(prompt, add_special_tokens)

    # ---- requests -----------------------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams | PoolingParams | None = None,
                    arrival_time: float | None = None, lora_request=None, tokenization_kwargs: dict | None = None,
                    trace_headers: Mapping[str, str] | None = None, priority: int = 0) -> str:
        """vLLM's argument order. ``tokenization_kwargs``: see ``InputProcessor.apply_tokenization_kwargs``;
        ``trace_headers``: pagedllm exports no traces (a warning says so, as vLLM does with tracing off)."""
        if request_id in self.output_processor.requests:
            raise ValueError(f"Request id {request_id!r} is already running.")
        warn_trace_headers_unused(trace_headers)
        if tokenization_kwargs is not None:
            prompt, params = self.input_processor.apply_tokenization_kwargs(prompt, params, tokenization_kwargs)
        req = self.input_processor.process(request_id, prompt, params, arrival_time, priority, lora_request)
        if lora_request is not None and needs_loading(self._loras_added, lora_request):
            self.add_lora(lora_request)      # loaded and checked now: a bad adapter fails this call
        self.output_processor.add_request(req)
        if self.stats is not None:
            self.stats.on_request_added(request_id, req.params, req.arrival_time, len(req.prompt_token_ids))
        for child in req.children:
            self.core.add_request(child)
        return request_id

    def abort_request(self, request_ids: str | Iterable[str]) -> None:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for rid in request_ids:
            state = self.output_processor.requests.get(rid)
            self.core.abort_requests(self.output_processor.abort_request(rid))
            if state is not None and self.stats is not None:
                self.stats.on_request_aborted(rid, len(state.completions))

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return self.output_processor.get_num_unfinished_requests()

    # ---- one step -----------------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        outputs, _ = self.step_with_stats()
        return outputs

    def step_with_stats(self) -> tuple[list[RequestOutput], StepStats]:
        core_outputs, stats = self.core.step()
        failed = self.core.take_failed_requests()
        if failed:      # a grammar that passed the front end's check failed to compile (not expected)
            for cid in failed:
                self.abort_request(self.output_processor.core_to_request.get(cid, cid))
            raise next(iter(failed.values()))
        outputs, stopped = self.output_processor.process_outputs(core_outputs)
        if stopped:
            self.core.abort_requests(stopped)   # stop strings: the core frees them before its next step
        if self.stats is not None:
            snapshot = self.core.snapshot()
            self.stats.on_step(stats, outputs, snapshot, time.time(),
                               token_request_ids=self.output_processor.last_token_request_ids)
            self.stats.maybe_log(snapshot)
        return outputs, stats

    # ---- LoRA adapters (vLLM's LLMEngine.add_lora / remove_lora / list_loras) ------------------------------------
    def add_lora(self, lora_request) -> bool:
        """Load an adapter into the workers now (a bad folder, rank or module is a ValueError); requests naming it
        later start without loading it. False when it was loaded already."""
        needs_loading(self._loras_added, lora_request)     # an id of another adapter: ValueError
        added = self.core.add_lora(lora_request)
        self._loras_added[lora_request.lora_int_id] = lora_request
        return added

    def remove_lora(self, lora_id: int) -> bool:
        self._loras_added.pop(lora_id, None)
        return self.core.remove_lora(lora_id)

    def list_loras(self) -> set[int]:
        return self.core.list_loras()

    def pin_lora(self, lora_id: int) -> bool:
        """Keep a loaded adapter in the workers' CPU memory beyond max_cpu_loras."""
        return self.core.pin_lora(lora_id)

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        return self.core.reset_prefix_cache(reset_running_requests, reset_connector)

    def reset_mm_cache(self) -> None:
        """vLLM's reset of its multimodal processor cache (and reset_encoder_cache, of its encoder outputs): pagedllm
        keeps neither across requests (each request's images are processed, and their encoder outputs held, for that
        request only), so there is nothing to clear; both exist for scripts and tools that call them."""

    def reset_encoder_cache(self) -> None:
        """See reset_mm_cache: nothing cached across requests."""

    def start_profile(self, profile_prefix: str | None = None) -> None:
        """torch.profiler over every worker's steps until ``stop_profile`` writes the traces
        (PAGEDLLM_TORCH_PROFILER_DIR / VLLM_TORCH_PROFILER_DIR)."""
        self.core.collective_rpc("start_profile", (profile_prefix,))

    def stop_profile(self) -> None:
        self.core.collective_rpc("stop_profile")

    def do_log_stats(self) -> None:
        """Log the periodic statistics line now (vLLM's; nothing with disable_log_stats=True, LLM's default)."""
        if self.stats is not None:
            self.stats.maybe_log(self.core.snapshot(), force=True)

    def get_metrics(self) -> list:
        """The engine's metrics now (vLLM's ``get_metrics``: pagedllm/metrics_reader.py), as ``/metrics`` shows them.
        Needs the statistics, which ``LLM`` turns off by default: ``LLM(..., disable_log_stats=False)``."""
        if self.stats is None:
            raise ValueError("get_metrics() needs the engine's statistics, which are off: create the LLM with "
                             "disable_log_stats=False.")
        from pagedllm.metrics import PREFIX
        from pagedllm.metrics_reader import metrics_snapshot
        return metrics_snapshot(self.stats.registry, PREFIX)

    # ---- sleep mode (worker/sleep_mode.py) ------------------------------------------------------------------------
    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        """vLLM's sleep: level 1 moves the weights to CPU memory and frees the KV cache, level 2 frees both, level 0
        only pauses scheduling. ``mode``: the requests in flight are aborted ("abort"), run to the end first
        ("wait") or kept in the queue to go on after ``wake_up`` ("keep"; their KV is computed again)."""
        check_sleep_level(level)
        check_sleep_mode(mode)
        check_sleep_enabled(self.config.args.enable_sleep_mode, level)
        if mode == "abort":
            self.abort_request(list(self.output_processor.requests))
        elif mode == "wait":
            while self.has_unfinished_requests() and not self.core.is_sleeping():
                self.step()
        core_outputs, _ = self.core.sleep(level)
        _, stopped = self.output_processor.process_outputs(core_outputs)     # kept requests' last tokens
        if stopped:
            self.core.abort_requests(stopped)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Take back the memory of ``tags`` ("weights", "kv_cache"; "scheduling" ends a level-0 pause; None: all)."""
        check_wake_up_tags(tags)
        self.core.wake_up(tags)

    def is_sleeping(self) -> bool:
        return self.core.is_sleeping()

    # ---- the workers ----------------------------------------------------------------------------------------------
    def collective_rpc(self, method, timeout: float | None = None, args: tuple = (),
                       kwargs: dict | None = None) -> list:
        """Call ``method`` (a worker method's name, or a function taking the worker first) on every worker; each
        one's result, in rank order (vLLM's ``collective_rpc``). The worker is the ``ModelRunner``."""
        if timeout is not None:
            raise ValueError("collective_rpc(timeout=...) is not supported yet by pagedllm: the call waits for "
                             "every worker; leave timeout=None.")
        return self.core.collective_rpc(method, tuple(args), kwargs)

    def apply_model(self, func) -> list:
        """``func(model)`` on every worker's model; each one's result (vLLM's ``apply_model``)."""
        return self.collective_rpc(functools.partial(_apply_model, func))


def _apply_model(func, runner) -> object:
    """One worker's part of ``apply_model`` (a module-level function: it travels to worker processes by name, the
    caller's ``func`` by value with cloudpickle)."""
    return runner.apply_model(func)
