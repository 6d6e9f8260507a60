"""Serving metrics from per-request timings, computed and printed as vLLM's benchmark_serving does.

Per successful request: output_tokens = usage.completion_tokens, else the re-tokenized generated text;
TPOT = (E2EL − TTFT) / (output_tokens − 1), only when output_tokens > 1; ITL gaps of all requests are pooled.
Throughputs = totals / benchmark duration. Statistics use numpy (population std, linear percentiles).
Goodput counts requests meeting every SLO (a request with ≤ 1 output token has TPOT 0 there).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from pagedllm.bench.request_funcs import RequestFuncOutput
from pagedllm.bench.utils import percentile_label

MS_PER_S = 1000.0
GOODPUT_METRICS = ("ttft", "tpot", "e2el")
PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")
# vLLM's client-side queueing metrics (with --max-concurrency): arrival -> send, and E2EL plus that wait.
QUEUE_METRICS = ("client_queue_time", "e2el_including_client_queue")
METRIC_TITLES = {  # name in labels, header of the block
    "ttft": ("TTFT", "Time to First Token"),
    "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
    "itl": ("ITL", "Inter-token Latency"),
    "e2el": ("E2EL", "End-to-end Latency"),
    "client_queue_time": ("Client Queue Time", "Client-side Queueing"),
    "e2el_including_client_queue": ("E2EL incl. Client Queue", "Queue-inclusive End-to-end Latency"),
}
LABEL_WIDTH, VALUE_WIDTH, BLOCK_WIDTH = 40, 10, 50


@dataclass
class MetricStats:
    mean: float
    median: float
    std: float
    percentiles: list[tuple[float, float]]   # (p, value), both ms

    @classmethod
    def of(cls, values_s: Sequence[float], percentiles: Sequence[float]) -> "MetricStats":
        data = np.asarray(values_s if len(values_s) else [0.0], dtype=np.float64) * MS_PER_S
        return cls(mean=float(np.mean(data)), median=float(np.median(data)), std=float(np.std(data)),
                   percentiles=[(p, float(np.percentile(data, p))) for p in percentiles])


@dataclass
class BenchmarkMetrics:
    completed: int
    failed: int
    total_input: int
    total_output: int
    request_throughput: float
    request_goodput: float
    output_throughput: float
    total_token_throughput: float
    max_output_tokens_per_s: float
    max_concurrent_requests: int
    stats: dict[str, MetricStats] = field(default_factory=dict)   # ttft, tpot, itl, e2el


def parse_goodput(pairs: Sequence[str] | None) -> dict[str, float]:
    """``["ttft:200", "tpot:50"]`` -> ``{"ttft": 200.0, "tpot": 50.0}`` (milliseconds), validated."""
    slos: dict[str, float] = {}
    for pair in pairs or []:
        try:
            name, value = pair.split(":")
            slos[name.strip()] = float(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                'Invalid format found for service level objectives. Specify service level objectives for goodput '
                'as "KEY:VALUE" pairs, where the key is a metric name, and the value is a number in milliseconds.'
            ) from exc
    for name, value in slos.items():
        if name not in GOODPUT_METRICS:
            raise ValueError(f"Invalid metric name found, {name}: {value}. The service level objective name should "
                             f"be one of {list(GOODPUT_METRICS)}.")
        if value < 0:
            raise ValueError(f"Invalid value found, {name}: {value}. The service level objective value should be "
                             "non-negative.")
    return slos


def output_token_count(output: RequestFuncOutput, tokenizer) -> int:
    if output.output_tokens:
        return output.output_tokens
    if tokenizer is not None:
        return len(tokenizer(output.generated_text, add_special_tokens=False).input_ids)
    return output.num_chunks


def peak_rates(outputs: Sequence[RequestFuncOutput]) -> tuple[float, int]:
    """Largest number of streamed chunks in any one-second bucket, and the most requests in flight at one instant
    (vLLM's sweep over the half-open [start, end) intervals: a request ending as another starts does not overlap
    it)."""
    done = [o for o in outputs if o.success]
    if not done:
        return 0.0, 0
    t0 = min(o.start_time for o in done)
    end = max(o.start_time + o.latency for o in done)
    buckets = int(np.ceil(end - t0)) + 1
    chunks = np.zeros(buckets)
    for o in done:
        times = o.start_time + o.ttft + np.concatenate([[0.0], np.cumsum(o.itl)])
        idx = np.floor(times - t0).astype(int)
        np.add.at(chunks, idx[(idx >= 0) & (idx < buckets)], 1)
    events = sorted([(o.start_time, 1) for o in done] + [(o.start_time + o.latency, -1) for o in done])
    in_flight = peak = 0
    for _, delta in events:       # at equal times the departure (-1) sorts first
        in_flight += delta
        peak = max(peak, in_flight)
    return float(chunks.max()), peak


def calculate_metrics(input_lens: Sequence[int], outputs: Sequence[RequestFuncOutput], duration_s: float,
                      tokenizer, percentiles: Sequence[float],
                      goodput_slos: dict[str, float] | None = None) -> tuple[BenchmarkMetrics, list[int]]:
    """Returns the metrics and the output length of each request (0 for a failed one)."""
    output_lens: list[int] = []
    ttfts, tpots, all_tpots, itls, e2els = [], [], [], [], []
    total_input = 0
    completed = 0
    for prompt_len, out in zip(input_lens, outputs):
        if not out.success:
            output_lens.append(0)
            continue
        n_out = output_token_count(out, tokenizer)
        output_lens.append(n_out)
        total_input += prompt_len
        tpot = 0.0
        if n_out > 1:
            tpot = (out.latency - out.ttft) / (n_out - 1)
            tpots.append(tpot)
        all_tpots.append(tpot)
        itls.extend(out.itl)
        ttfts.append(out.ttft)
        e2els.append(out.latency)
        completed += 1

    good = 0
    if goodput_slos:
        per_metric = {"ttft": ttfts, "tpot": all_tpots, "e2el": e2els}
        names = list(goodput_slos)
        for i in range(completed):
            if all(per_metric[n][i] * MS_PER_S <= goodput_slos[n] for n in names):
                good += 1

    if completed == 0:
        print("All requests failed. This is likely due to a misconfiguration on the benchmark arguments.")
    peak_tokens, peak_requests = peak_rates(outputs)
    total_output = sum(output_lens)
    metrics = BenchmarkMetrics(
        completed=completed, failed=len(outputs) - completed, total_input=total_input, total_output=total_output,
        request_throughput=completed / duration_s, request_goodput=good / duration_s,
        output_throughput=total_output / duration_s,
        total_token_throughput=(total_input + total_output) / duration_s,
        max_output_tokens_per_s=peak_tokens, max_concurrent_requests=peak_requests,
        stats={name: MetricStats.of(values, percentiles)
               for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els))})
    return metrics, output_lens


# ---- the printed block and the JSON summary ---------------------------------------------------------------------
def _line(label: str, value: Any, fmt: str = "") -> str:
    return f"{label:<{LABEL_WIDTH}} {value:<{VALUE_WIDTH}{fmt}}"


def format_result_block(metrics: BenchmarkMetrics, duration_s: float, *, selected_metrics: Sequence[str],
                        max_concurrency: int | None, request_rate: float, goodput: bool,
                        pooling: bool = False, probe: dict[str, Any] | None = None) -> str:
    """vLLM's block; for a pooling backend (embeddings) no output-token lines, only request and token throughput.
    ``probe``: the --probe-request-rate stats (``probe_stats``), in their own section before the latencies."""
    lines = ["{:=^{w}}".format(" Serving Benchmark Result ", w=BLOCK_WIDTH),
             _line("Successful requests:", metrics.completed),
             _line("Failed requests:", metrics.failed)]
    if max_concurrency is not None:
        lines.append(_line("Maximum request concurrency:", max_concurrency))
    if request_rate != float("inf"):
        lines.append(_line("Request rate configured (RPS):", request_rate, ".2f"))
    lines += [_line("Benchmark duration (s):", duration_s, ".2f"),
              _line("Total input tokens:", metrics.total_input)]
    if pooling:
        lines += [_line("Request throughput (req/s):", metrics.request_throughput, ".2f"),
                  _line("Total token throughput (tok/s):", metrics.total_token_throughput, ".2f")]
        return "\n".join(lines + _probe_lines(probe) + _stat_lines(metrics, selected_metrics) + ["=" * BLOCK_WIDTH])
    lines += [_line("Total generated tokens:", metrics.total_output),
              _line("Request throughput (req/s):", metrics.request_throughput, ".2f")]
    if goodput:
        lines.append(_line("Request goodput (req/s):", metrics.request_goodput, ".2f"))
    lines += [_line("Output token throughput (tok/s):", metrics.output_throughput, ".2f"),
              _line("Peak output token throughput (tok/s):", metrics.max_output_tokens_per_s, ".2f"),
              _line("Peak concurrent requests:", float(metrics.max_concurrent_requests), ".2f"),
              _line("Total token throughput (tok/s):", metrics.total_token_throughput, ".2f")]
    return "\n".join(lines + _probe_lines(probe) + _stat_lines(metrics, selected_metrics) + ["=" * BLOCK_WIDTH])


def probe_stats(latencies_s: Sequence[float], failed: int) -> dict[str, Any] | None:
    """vLLM's --probe-request-rate summary (its result keys); None when no probe succeeded."""
    if not latencies_s:
        return None
    return {"probe_completed": len(latencies_s), "probe_failed": failed,
            "probe_median_e2el_ms": float(np.median(latencies_s)) * 1000,
            "probe_p99_e2el_ms": float(np.percentile(latencies_s, 99)) * 1000,
            "probe_max_e2el_ms": float(max(latencies_s)) * 1000}


def _probe_lines(probe: dict[str, Any] | None) -> list[str]:
    if probe is None:
        return []
    return ["{:-^{w}}".format("Probe Requests", w=BLOCK_WIDTH),
            _line("Probe requests completed:", probe["probe_completed"]),
            _line("Probe requests failed:", probe["probe_failed"]),
            _line("Median probe E2EL (ms):", probe["probe_median_e2el_ms"], ".2f"),
            _line("P99 probe E2EL (ms):", probe["probe_p99_e2el_ms"], ".2f"),
            _line("Max probe E2EL (ms):", probe["probe_max_e2el_ms"], ".2f")]


def _stat_lines(metrics: BenchmarkMetrics, selected_metrics: Sequence[str]) -> list[str]:
    lines = []
    for name in PERCENTILE_METRICS + QUEUE_METRICS:
        if name not in selected_metrics or name not in metrics.stats:
            continue
        short, header = METRIC_TITLES[name]
        st = metrics.stats[name]
        lines.append("{:-^{w}}".format(header, w=BLOCK_WIDTH))
        lines.append(_line(f"Mean {short} (ms):", st.mean, ".2f"))
        lines.append(_line(f"Median {short} (ms):", st.median, ".2f"))
        for p, value in st.percentiles:
            lines.append(_line(f"P{percentile_label(p)} {short} (ms):", value, ".2f"))
    return lines


def summary_dict(metrics: BenchmarkMetrics, duration_s: float, *, selected_metrics: Sequence[str],
                 goodput: bool, pooling: bool = False) -> dict[str, Any]:
    """The metric keys of vLLM's --save-result JSON (a pooling backend's: no output-token keys)."""
    result: dict[str, Any] = {
        "duration": duration_s,
        "completed": metrics.completed,
        "failed": metrics.failed,
        "total_input_tokens": metrics.total_input,
        "total_output_tokens": metrics.total_output,
        "request_throughput": metrics.request_throughput,
        "request_goodput": metrics.request_goodput if goodput else None,
        "output_throughput": metrics.output_throughput,
        "total_token_throughput": metrics.total_token_throughput,
        "max_output_tokens_per_s": metrics.max_output_tokens_per_s,
        "max_concurrent_requests": metrics.max_concurrent_requests,
    }
    if pooling:
        for key in ("total_output_tokens", "request_goodput", "output_throughput", "max_output_tokens_per_s",
                    "max_concurrent_requests"):
            del result[key]
    for name in PERCENTILE_METRICS + QUEUE_METRICS:
        if name not in selected_metrics or name not in metrics.stats:
            continue
        st = metrics.stats[name]
        result[f"mean_{name}_ms"] = st.mean
        result[f"median_{name}_ms"] = st.median
        result[f"std_{name}_ms"] = st.std
        for p, value in st.percentiles:
            result[f"p{percentile_label(p)}_{name}_ms"] = value
    return result
