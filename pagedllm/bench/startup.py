"""`pagedllm bench startup`: vLLM's cold and warm start-up time of ``LLM(...)``, each start in a process of its own.

Cold starts run on empty caches (a fresh temporary PAGEDLLM_CACHE_DIR and TRITON_CACHE_DIR per start: the converted
GGUF weights and tokenizer, the compiled Triton kernels), warm starts on the caches the warm-up start filled. The
printed lines and the JSON keys are vLLM's; pagedllm does not use torch.compile, so its compilation times are 0.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Iterator

from pagedllm.bench.offline import add_engine_args, call_in_fresh_process, engine_kwargs
from pagedllm.bench.utils import write_json

PERCENTAGES = [10, 25, 50, 75, 90, 99]


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--num-iters-cold", type=int, default=3, help="Number of cold startup iterations.")
    parser.add_argument("--num-iters-warmup", type=int, default=1,
                        help="Number of warmup iterations before benchmarking warm startups.")
    parser.add_argument("--num-iters-warm", type=int, default=3, help="Number of warm startup iterations.")
    parser.add_argument("--output-json", type=str, default=None,
                        help="Path to save the startup time results in JSON format.")
    add_engine_args(parser)
    return parser


@contextmanager
def cold_caches() -> Iterator[dict[str, str]]:
    """Fresh, empty cache folders for one cold start (removed after it): the environment to start it with."""
    folder = tempfile.mkdtemp(prefix="pagedllm_startup_bench_cold_")
    try:
        yield {"PAGEDLLM_CACHE_DIR": os.path.join(folder, "pagedllm"),
               "TRITON_CACHE_DIR": os.path.join(folder, "triton")}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _time_llm_start(kwargs: dict[str, Any]) -> float:
    from pagedllm import LLM
    start = time.perf_counter()
    LLM(**kwargs)
    return time.perf_counter() - start


def measure_startup(kwargs: dict[str, Any], env: dict[str, str]) -> float:
    """Seconds ``LLM(**kwargs)`` takes in a fresh spawned process started with ``env`` over this environment."""
    return call_in_fresh_process(_time_llm_start, kwargs, env=env)


def _print_stats(title: str, times: list[float]) -> dict[str, float]:
    import numpy as np
    percentiles = dict(zip(PERCENTAGES, np.percentile(np.array(times), PERCENTAGES).tolist()))
    print(f"\n{title}:")
    print(f"Avg total startup time: {float(np.mean(times)):.2f} seconds")
    print(f"Avg compilation time:   {0.0:.2f} seconds")
    print("Startup time percentiles:")
    for percentage, value in percentiles.items():
        print(f"  {percentage}%: {value:.2f} seconds")
    print("Compilation time percentiles:")
    for percentage in PERCENTAGES:
        print(f"  {percentage}%: {0.0:.2f} seconds")
    return percentiles


def main(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("num_iters_cold", "num_iters_warm"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if args.num_iters_warmup < 0:
        raise ValueError(f"--num-iters-warmup must be >= 0, got {args.num_iters_warmup}.")
    from tqdm.auto import tqdm
    kwargs = engine_kwargs(args)
    print("Measuring cold startup time...\n")
    cold = []
    for _ in tqdm(range(args.num_iters_cold), desc="Cold startup iterations"):
        with cold_caches() as env:
            cold.append(measure_startup(kwargs, env))
    print("\nWarming up for warm startup measurement...\n")
    for _ in tqdm(range(args.num_iters_warmup), desc="Warmup iterations"):
        measure_startup(kwargs, {})
    print("\nMeasuring warm startup time...\n")
    warm = [measure_startup(kwargs, {}) for _ in tqdm(range(args.num_iters_warm), desc="Warm startup iterations")]
    print("\n" + "=" * 60)
    print("STARTUP TIME BENCHMARK RESULTS")
    print("=" * 60)
    cold_percentiles = _print_stats("COLD STARTUP", cold)
    warm_percentiles = _print_stats("WARM STARTUP", warm)
    print("=" * 60)
    zeros = dict.fromkeys(PERCENTAGES, 0.0)
    results = {
        "avg_cold_startup_time": sum(cold) / len(cold), "avg_cold_compilation_time": 0.0,
        "cold_startup_times": cold, "cold_compilation_times": [0.0] * len(cold),
        "cold_startup_percentiles": cold_percentiles, "cold_compilation_percentiles": zeros,
        "avg_warm_startup_time": sum(warm) / len(warm), "avg_warm_compilation_time": 0.0,
        "warm_startup_times": warm, "warm_compilation_times": [0.0] * len(warm),
        "warm_startup_percentiles": warm_percentiles, "warm_compilation_percentiles": zeros,
    }
    if args.output_json:
        write_json(args.output_json, results)
    return results
