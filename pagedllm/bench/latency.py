"""`pagedllm bench latency`: end-to-end latency of one batch (vLLM's benchmark_latency).

A batch of random token-id prompts is generated with SamplingParams(n, temperature=1.0, top_p=1.0, ignore_eos=True,
max_tokens=output_len); each iteration times one whole ``LLM.generate``. Prefix caching is off by default so repeated
iterations do not hit the cache.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

from pagedllm.bench.offline import add_engine_args, create_llm, engine_kwargs, llm_tokenizer, sampling_params
from pagedllm.bench.utils import write_json
from pagedllm.config import profiler_settings

PERCENTAGES = (10, 25, 50, 75, 90, 99)
MAX_DUMMY_TOKEN_ID = 10000


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--input-len", type=int, default=32, help="Prompt tokens per request.")
    parser.add_argument("--output-len", type=int, default=128, help="Generated tokens per request.")
    parser.add_argument("--batch-size", type=int, default=8, help="Requests per generate call.")
    parser.add_argument("--n", type=int, default=1, help="Sequences generated per prompt.")
    parser.add_argument("--use-beam-search", action="store_true", help="Use LLM.beam_search (beam width = --n).")
    parser.add_argument("--num-iters-warmup", type=int, default=10, help="Untimed iterations first.")
    parser.add_argument("--num-iters", type=int, default=30, help="Timed iterations.")
    parser.add_argument("--profile", action="store_true",
                        help="Profile one iteration: with VLLM_TORCH_PROFILER_DIR or --profiler-config the engine's "
                             "profiler (LLM.start_profile, traces in that folder, as vLLM's); else torch.profiler "
                             "in this process, its trace in --profile-result-dir.")
    parser.add_argument("--profile-result-dir", type=str, default=None,
                        help="Where this process's torch.profiler trace goes (older vLLM's flag; default "
                             "./pagedllm_benchmark_result).")
    parser.add_argument("--output-json", type=str, default=None, help="Write the latencies to this JSON file.")
    parser.add_argument("--disable-detokenize", action="store_true", help="Do not detokenize the outputs.")
    add_engine_args(parser)
    parser.set_defaults(enable_prefix_caching=False)
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.batch_size < 1 or args.input_len < 1 or args.output_len < 1 or args.num_iters < 1:
        raise ValueError("--batch-size, --input-len, --output-len and --num-iters must be >= 1.")
    llm = create_llm(engine_kwargs(args))
    tokenizer = llm_tokenizer(llm)
    high = MAX_DUMMY_TOKEN_ID if tokenizer is None else min(MAX_DUMMY_TOKEN_ID, len(tokenizer))
    rng = np.random.default_rng(args.seed if args.seed is not None else 0)
    token_ids = rng.integers(high, size=(args.batch_size, args.input_len))
    prompts = [{"prompt_token_ids": row} for row in token_ids.tolist()]

    if args.use_beam_search:
        from pagedllm import BeamSearchParams
        beam = BeamSearchParams(beam_width=args.n, max_tokens=args.output_len, ignore_eos=True)

        def generate() -> None:
            llm.beam_search(prompts, beam)
    else:
        params = sampling_params(n=args.n, temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=args.output_len,
                                 detokenize=not args.disable_detokenize)

        def generate() -> None:
            llm.generate(prompts, params, use_tqdm=False)

    def timed() -> float:
        start = time.perf_counter()
        generate()
        return time.perf_counter() - start

    from tqdm import tqdm
    print("Warming up...")
    for _ in tqdm(range(args.num_iters_warmup), desc="Warmup iterations"):
        timed()
    engine_profiler = profiler_settings(args.profiler_config) if args.profile_result_dir is None else None
    if args.profile and engine_profiler is not None:
        print(f"Profiling (results will be saved to '{engine_profiler.torch_profiler_dir}')...")
        llm.start_profile()
        generate()
        llm.stop_profile()
        return {}
    if args.profile:
        profile_dir = args.profile_result_dir or os.path.join(".", "pagedllm_benchmark_result")
        os.makedirs(profile_dir, exist_ok=True)
        import torch
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            timed()
        trace = os.path.join(profile_dir, "latency_trace.json")
        prof.export_chrome_trace(trace)
        print(f"Profiler trace written to {trace}")
        return {}
    latencies = np.array([timed() for _ in tqdm(range(args.num_iters), desc="Profiling iterations")])
    percentiles = np.percentile(latencies, PERCENTAGES)
    print(f"Avg latency: {np.mean(latencies)} seconds")
    print(f"Std latency: {np.std(latencies)} seconds")
    for p, value in zip(PERCENTAGES, percentiles):
        print(f"{p}% percentile latency: {value} seconds")
    results = {
        "avg_latency": float(np.mean(latencies)),
        "std_latency": float(np.std(latencies)),
        "latencies": latencies.tolist(),
        "percentiles": {str(p): float(v) for p, v in zip(PERCENTAGES, percentiles)},
    }
    if args.output_json:
        write_json(args.output_json, results)
    return results
