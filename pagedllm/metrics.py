"""Serving metrics: Prometheus series with vLLM's names under the ``pagedllm:`` prefix, and the periodic stats log line.

Everything here is fed by ``AsyncLLMEngine`` from one thread (the engine thread, or the thread reading the engine
process's outputs); gauges read the latest EngineSnapshot at scrape time. Per-request latencies are measured from the
outputs each step returns (for a FINAL_ONLY request, from the steps that gave it tokens): time to first token from
the request's arrival, inter-token latency between consecutive token steps, end-to-end at the finish.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pagedllm import envs
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

if TYPE_CHECKING:
    from pagedllm.config import CacheConfig, EngineConfig
    from pagedllm.engine.messages import EngineSnapshot
    from pagedllm.engine.scheduler import StepStats

logger = logging.getLogger("pagedllm.metrics")
PREFIX = "pagedllm:"

# Bucket edges in seconds, covering CPU CI (slow) to H100 decode (a few ms).
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0]
E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0]
TOKEN_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000]
# Tokens of one engine step (vLLM's edges: its CUDA-graph batch sizes, then powers of two).
ITERATION_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
N_BUCKETS = [1, 2, 5, 10, 20]

prometheus_client.disable_created_metrics()   # vLLM does not export the *_created series either


@dataclass
class _Tracked:
    arrival_time: float
    kind: RequestOutputKind
    num_prompt_tokens: int
    n: int | None = None                 # sampling requests only (a pooling request has no n / max_tokens)
    max_tokens: int | None = None
    seen_tokens: dict[int, int] = field(default_factory=dict)   # per completion index (CUMULATIVE outputs)
    num_generated: int = 0
    first_token_time: float | None = None
    last_token_time: float | None = None


class EngineMetrics:
    def __init__(self, model_name: str, registry: CollectorRegistry | None = None, log_stats: bool = True,
                 log_interval_s: float | None = None, max_loras: int = 0, num_speculative_tokens: int = 0):
        """``log_interval_s``: seconds between the statistics lines (None: VLLM_LOG_STATS_INTERVAL's, 10 s as
        vLLM's)."""
        self.model_name = model_name
        self.registry = registry if registry is not None else CollectorRegistry()
        self.log_stats = log_stats
        self.log_interval_s = log_interval_s if log_interval_s is not None else envs.log_stats_interval()
        labels = ["model_name"]
        r = self.registry

        def gauge(name, doc):
            return Gauge(PREFIX + name, doc, labels, registry=r)

        def counter(name, doc, extra=()):
            return Counter(PREFIX + name, doc, labels + list(extra), registry=r)

        def hist(name, doc, buckets):
            return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=r).labels(model_name)

        self.g_running = gauge("num_requests_running", "Number of requests in model execution batches.")
        self.g_waiting = gauge("num_requests_waiting", "Number of requests waiting to be processed.")
        self.g_kv_usage = gauge("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        # pagedllm's own: the block pool's counters (vLLM exports only the usage fraction).
        self.g_free_blocks = gauge("kv_cache_free_blocks", "KV-cache blocks in the free pool (prefix-cached or empty).")
        self.g_num_blocks = gauge("kv_cache_num_blocks", "KV-cache blocks in all.")
        # swap_space: vLLM v0's num_requests_swapped, and the CPU swap pool's counters.
        self.g_swapped = gauge("num_requests_swapped", "Number of requests whose KV cache is swapped to CPU memory.")
        self.g_swap_free_blocks = gauge("cpu_swap_free_blocks", "CPU swap blocks free (swap_space).")
        self.g_swap_num_blocks = gauge("cpu_swap_num_blocks", "CPU swap blocks in all (swap_space).")
        self.c_swapped_out = counter("swapped_out_blocks", "KV-cache blocks copied to CPU swap space.").labels(model_name)
        self.c_swapped_in = counter("swapped_in_blocks", "KV-cache blocks copied back from CPU swap space.").labels(
            model_name)
        # kv_offloading_size: the prefix cache's CPU tier.
        self.c_offloaded = counter("kv_offload_stored_blocks", "Evicted prefix-cache blocks copied to the CPU tier "
                                   "(kv_offloading_size).").labels(model_name)
        self.c_offload_hits = counter("kv_offload_hit_blocks", "Prefix blocks copied back from the CPU tier instead "
                                      "of recomputed (kv_offloading_size).").labels(model_name)
        self.c_prompt = counter("prompt_tokens", "Number of prefill tokens processed.").labels(model_name)
        self.c_generation = counter("generation_tokens", "Number of generation tokens processed.").labels(model_name)
        self.c_success = counter("request_success", "Count of successfully processed requests.", ["finished_reason"])
        self.c_preemptions = counter("num_preemptions", "Cumulative number of preemptions.").labels(model_name)
        self.c_prefix_queries = counter(
            "prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.").labels(model_name)
        self.c_prefix_hits = counter("prefix_cache_hits",
                                     "Prefix cache hits, in terms of number of cached tokens.").labels(model_name)
        self.h_ttft = hist("time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                           TTFT_BUCKETS)
        self.h_itl = hist("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.h_tpot = hist("time_per_output_token_seconds",
                           "Histogram of time per output token in seconds (deprecated name of the ITL).", ITL_BUCKETS)
        self.h_e2e = hist("e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
                          E2E_BUCKETS)
        self.h_queue = hist("request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
                            E2E_BUCKETS)
        self.h_prompt_tokens = hist("request_prompt_tokens", "Number of prefill tokens processed.", TOKEN_BUCKETS)
        self.h_generation_tokens = hist("request_generation_tokens", "Number of generation tokens processed.",
                                        TOKEN_BUCKETS)
        self.h_iteration_tokens = hist("iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                                       ITERATION_BUCKETS)
        self.h_params_n = hist("request_params_n", "Histogram of the n request parameter.", N_BUCKETS)
        self.h_params_max_tokens = hist("request_params_max_tokens", "Histogram of the max_tokens request parameter.",
                                        TOKEN_BUCKETS)
        # A request's phases after it was first scheduled (vLLM's definitions): prefill = until its first token,
        # decode = first to last token, inference = scheduled to last token.
        self.h_inference = hist("request_inference_time_seconds",
                                "Histogram of time spent in RUNNING phase for request.", E2E_BUCKETS)
        self.h_prefill = hist("request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.",
                              E2E_BUCKETS)
        self.h_decode = hist("request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.",
                             E2E_BUCKETS)
        # enable_lora (max_loras > 0): vLLM's lora_requests_info, one series per (max_lora, waiting adapters, running
        # adapters) labels, the names comma-joined, set to the time of the step that saw them (routers that place
        # requests by adapter read the newest series).
        self.max_loras = max_loras
        if max_loras:
            self.g_lora_info = Gauge(PREFIX + "lora_requests_info", "Running stats on lora requests.",
                                     ["max_lora", "waiting_lora_adapters", "running_lora_adapters"], registry=r)
        self._spec = None       # speculative decoding's counters, made at attach() when the engine runs it
        self._spec_seen: tuple | None = None
        self._interval_spec = [0, 0, 0, []]      # drafts, draft tokens, accepted, accepted per position
        if num_speculative_tokens:       # speculative_config: the series exist (at 0) from the start, as vLLM's
            self._make_spec_counters(None, num_speculative_tokens)
        self._tracked: dict[str, _Tracked] = {}
        self._prefix_seen = (0, 0)
        self._swap_seen = (0, 0)
        self._offload_seen = (0, 0)
        # For the periodic log line.
        self._last_log_time = time.monotonic()
        self._interval_prompt = 0
        self._interval_generation = 0
        self._interval_prefix = [0, 0]
        self._last_hit_rate = 0.0
        self._last_interval_active = False

    # ---- wiring ---------------------------------------------------------------------------------------------------
    def attach(self, snapshot: Callable[[], "EngineSnapshot"], cache_config: "CacheConfig | None" = None) -> None:
        """Gauges read the engine's latest snapshot when scraped. ``cache_config`` (the sized engine's): vLLM's
        cache_config_info, a gauge set to 1 whose labels are the cache config's fields as strings (num_gpu_blocks,
        block_size, ...), there from start-up."""
        name = self.model_name
        if cache_config is not None:
            info = {key: str(value) for key, value in asdict(cache_config).items()}
            Gauge(PREFIX + "cache_config_info", "Information of the LLMEngine CacheConfig", list(info),
                  registry=self.registry).labels(**info).set(1)
        self.g_running.labels(name).set_function(lambda: snapshot().num_running)
        self.g_waiting.labels(name).set_function(lambda: snapshot().num_waiting)
        self.g_kv_usage.labels(name).set_function(lambda: snapshot().kv_usage)
        self.g_free_blocks.labels(name).set_function(lambda: snapshot().num_free_blocks)
        self.g_num_blocks.labels(name).set_function(lambda: snapshot().num_blocks)
        self.g_swapped.labels(name).set_function(lambda: snapshot().num_swapped)
        self.g_swap_free_blocks.labels(name).set_function(lambda: snapshot().swap_free_blocks)
        self.g_swap_num_blocks.labels(name).set_function(lambda: snapshot().swap_num_blocks)
        first = snapshot()
        if first.spec_decoding is not None:
            if self._spec is None:
                self._make_spec_counters(first.spec_decoding)
            else:
                self._spec_seen = first.spec_decoding
        self._prefix_seen = (first.prefix_queries, first.prefix_hits)
        self._swap_seen = (first.blocks_swapped_out, first.blocks_swapped_in)
        self._offload_seen = (first.blocks_offloaded, first.offload_hit_blocks)

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)

    # ---- events (engine thread) -----------------------------------------------------------------------------------
    def on_request_added(self, request_id: str, params: SamplingParams, arrival_time: float,
                         num_prompt_tokens: int) -> None:
        sampling = isinstance(params, SamplingParams)
        self._tracked[request_id] = _Tracked(arrival_time, params.output_kind, num_prompt_tokens,
                                             n=params.n if sampling else None,
                                             max_tokens=params.max_tokens if sampling else None)

    def on_request_aborted(self, request_id: str, num_completions: int = 1) -> None:
        if self._tracked.pop(request_id, None) is not None:
            self.c_success.labels(self.model_name, "abort").inc(num_completions)

    def on_step(self, stats: "StepStats", outputs: list[RequestOutput], snapshot: "EngineSnapshot",
                now: float, token_request_ids: Sequence[str] = ()) -> None:
        """``token_request_ids``: the requests this step gave tokens, reported or not; a FINAL_ONLY request
        (``LLM.generate``'s) is timed from these, as its only output comes at its finish."""
        self.c_prompt.inc(stats.num_prompt_tokens)
        self.c_generation.inc(stats.num_generation_tokens)
        if stats.num_prompt_tokens + stats.num_generation_tokens > 0:
            self.h_iteration_tokens.observe(stats.num_prompt_tokens + stats.num_generation_tokens)
        if stats.num_preemptions:
            self.c_preemptions.inc(stats.num_preemptions)
        self._interval_prompt += stats.num_prompt_tokens
        self._interval_generation += stats.num_generation_tokens
        dq = snapshot.prefix_queries - self._prefix_seen[0]
        dh = snapshot.prefix_hits - self._prefix_seen[1]
        self._prefix_seen = (snapshot.prefix_queries, snapshot.prefix_hits)
        out_blocks = snapshot.blocks_swapped_out - self._swap_seen[0]
        in_blocks = snapshot.blocks_swapped_in - self._swap_seen[1]
        self._swap_seen = (snapshot.blocks_swapped_out, snapshot.blocks_swapped_in)
        stored = snapshot.blocks_offloaded - self._offload_seen[0]
        loaded = snapshot.offload_hit_blocks - self._offload_seen[1]
        self._offload_seen = (snapshot.blocks_offloaded, snapshot.offload_hit_blocks)
        if stored > 0:
            self.c_offloaded.inc(stored)
        if loaded > 0:
            self.c_offload_hits.inc(loaded)
        if out_blocks > 0:
            self.c_swapped_out.inc(out_blocks)
        if in_blocks > 0:
            self.c_swapped_in.inc(in_blocks)
        if dq > 0:
            self.c_prefix_queries.inc(dq)
            self.c_prefix_hits.inc(dh)
            self._interval_prefix[0] += dq
            self._interval_prefix[1] += dh
        if snapshot.spec_decoding is not None:
            if self._spec is None:
                self._make_spec_counters(None, len(snapshot.spec_decoding[3]))
            self._count_spec(snapshot.spec_decoding)
        if self.max_loras:
            self.g_lora_info.labels(str(self.max_loras), ",".join(snapshot.waiting_loras),
                                    ",".join(snapshot.running_loras)).set(now)
        for request_id in token_request_ids:
            t = self._tracked.get(request_id)
            if t is not None and t.kind == RequestOutputKind.FINAL_ONLY:
                self._on_token_step(t, now)
        for out in outputs:
            self._on_output(out, now)

    def _on_token_step(self, t: _Tracked, now: float) -> None:
        """A step that gave a request tokens: its first is the time to first token, each later one an inter-token
        latency (vLLM's, per engine step)."""
        if t.first_token_time is None:
            t.first_token_time = now
            self.h_ttft.observe(now - t.arrival_time)
        elif t.last_token_time is not None:
            self.h_itl.observe(now - t.last_token_time)
            self.h_tpot.observe(now - t.last_token_time)
        t.last_token_time = now

    def _on_output(self, out: RequestOutput, now: float) -> None:
        t = self._tracked.get(out.request_id)
        if t is None:
            return
        new_tokens = 0
        # A pooling request's output is one vector (PoolingOutput), not a list of completions: no tokens.
        completions = out.outputs if isinstance(out.outputs, list) else ()
        for c in completions:
            if t.kind == RequestOutputKind.CUMULATIVE:
                new = len(c.token_ids) - t.seen_tokens.get(c.index, 0)
                t.seen_tokens[c.index] = len(c.token_ids)
            else:
                new = len(c.token_ids)
            new_tokens += max(new, 0)
        if new_tokens > 0:
            request_metrics = getattr(out, "metrics", None)
            if t.kind != RequestOutputKind.FINAL_ONLY:
                self._on_token_step(t, now)
            elif t.first_token_time is None and request_metrics is not None \
                    and request_metrics.first_token_time is not None:
                # A FINAL_ONLY request is timed per token step (on_step); one whose steps were not seen gets the
                # output processor's first and last token times.
                t.first_token_time = request_metrics.first_token_time
                self.h_ttft.observe(t.first_token_time - t.arrival_time)
                t.last_token_time = request_metrics.last_token_time or now
            t.num_generated += new_tokens
        if out.finished:
            self._tracked.pop(out.request_id, None)
            self.h_e2e.observe(now - t.arrival_time)
            self.h_prompt_tokens.observe(t.num_prompt_tokens)
            self.h_generation_tokens.observe(t.num_generated)
            if t.n is not None:
                self.h_params_n.observe(t.n)
            if t.max_tokens is not None:
                self.h_params_max_tokens.observe(t.max_tokens)
            # A PoolingRequestOutput has no RequestMetrics (as vLLM's): no queue or phase times.
            request_metrics = getattr(out, "metrics", None)
            if request_metrics is not None and request_metrics.first_scheduled_time is not None:
                scheduled = request_metrics.first_scheduled_time
                self.h_queue.observe(max(0.0, scheduled - t.arrival_time))
                if t.first_token_time is not None and t.last_token_time is not None:
                    self.h_prefill.observe(max(0.0, t.first_token_time - scheduled))
                    self.h_decode.observe(t.last_token_time - t.first_token_time)
                    self.h_inference.observe(max(0.0, t.last_token_time - scheduled))
            for c in completions:
                self.c_success.labels(self.model_name, c.finish_reason or "abort").inc()
            if not completions:
                self.c_success.labels(self.model_name, "stop").inc()

    def _make_spec_counters(self, seen: tuple | None, num_positions: int = 0) -> None:
        """vLLM's spec_decode_* series (its SpecDecodingProm), made once the engine's snapshot shows speculative
        decoding (at attach, or with the first step's snapshot when the engine runs in another process); ``seen``:
        the counts already reported (None: zero)."""
        if seen is not None:
            num_positions = len(seen[3])
        r, name, labels = self.registry, self.model_name, ["model_name"]
        per_pos = Counter(PREFIX + "spec_decode_num_accepted_tokens_per_pos", "Accepted tokens per draft position.",
                          labels + ["position"], registry=r)
        self._spec = (Counter(PREFIX + "spec_decode_num_drafts", "Number of spec decoding drafts.", labels,
                              registry=r).labels(name),
                      Counter(PREFIX + "spec_decode_num_draft_tokens", "Number of draft tokens.", labels,
                              registry=r).labels(name),
                      Counter(PREFIX + "spec_decode_num_accepted_tokens", "Number of accepted tokens.", labels,
                              registry=r).labels(name),
                      [per_pos.labels(name, str(pos)) for pos in range(num_positions)])
        self._spec_seen = seen if seen is not None else (0, 0, 0, (0,) * num_positions)
        self._interval_spec[3] = [0] * num_positions

    def _count_spec(self, now_seen: tuple) -> None:
        seen = self._spec_seen
        deltas = [now_seen[i] - seen[i] for i in range(3)]
        pos_deltas = [a - b for a, b in zip(now_seen[3], seen[3])]
        self._spec_seen = now_seen
        for counter, d in zip(self._spec, deltas):
            if d > 0:
                counter.inc(d)
        interval = self._interval_spec
        for i, d in enumerate(deltas):
            interval[i] += d
        for pos, d in enumerate(pos_deltas):
            if d > 0:
                self._spec[3][pos].inc(d)
                interval[3][pos] += d

    def _log_spec(self, elapsed: float) -> None:
        """vLLM's SpecDecoding metrics line, for the interval's drafts."""
        drafts, draft_tokens, accepted, per_pos = self._interval_spec
        if drafts:
            logger.info("SpecDecoding metrics: Mean acceptance length: %.2f, Accepted throughput: %.2f tokens/s, "
                        "Drafted throughput: %.2f tokens/s, Accepted: %d tokens, Drafted: %d tokens, Per-position "
                        "acceptance rate: %s, Avg Draft acceptance rate: %.1f%%",
                        1 + accepted / drafts, accepted / elapsed, draft_tokens / elapsed, accepted, draft_tokens,
                        ", ".join(f"{n / drafts:.3f}" for n in per_pos),
                        100.0 * accepted / draft_tokens if draft_tokens else 0.0)
        self._interval_spec = [0, 0, 0, [0] * len(per_pos)]

    @classmethod
    def for_engine(cls, config: "EngineConfig", log_interval_s: float | None = None) -> "EngineMetrics":
        """An engine's own statistics, logged (vLLM's LoggingStatLogger line), when no server hands it a metrics
        object: ``LLM(disable_log_stats=False)``, ``AsyncLLMEngine.from_engine_args(AsyncEngineArgs())``."""
        spec = config.args.speculative_config
        return cls(config.served_model_name, log_stats=True, log_interval_s=log_interval_s,
                   max_loras=config.args.max_loras if config.args.enable_lora else 0,
                   num_speculative_tokens=spec.num_speculative_tokens if spec else 0)

    # ---- the log line -----------------------------------------------------------------------------------------------
    def maybe_log(self, snapshot: "EngineSnapshot", force: bool = False) -> None:
        if not self.log_stats:
            return
        now = time.monotonic()
        elapsed = now - self._last_log_time
        if elapsed < self.log_interval_s and not force:
            return
        running, waiting = snapshot.num_running, snapshot.num_waiting
        active = bool(self._interval_prompt or self._interval_generation or running or waiting)
        if active or self._last_interval_active:
            queries, hits = self._interval_prefix
            if queries:
                self._last_hit_rate = 100.0 * hits / queries
            logger.info("Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f tokens/s, "
                        "Running: %d reqs, Waiting: %d reqs, GPU KV cache usage: %.1f%%, Prefix cache hit rate: %.1f%%",
                        self._interval_prompt / elapsed, self._interval_generation / elapsed, running, waiting,
                        100.0 * snapshot.kv_usage, self._last_hit_rate)
            if self._spec is not None:
                self._log_spec(elapsed)
        self._last_interval_active = active
        self._last_log_time = now
        self._interval_prompt = self._interval_generation = 0
        self._interval_prefix = [0, 0]
