"""Offline priority scheduling benchmark (vLLM's benchmarks/benchmark_prioritization.py): one ``LLM.generate`` over
all requests, each with priority 0 or 1 at random (equally likely; lower is served first), timed end to end.

Prints ``Throughput: X requests/s, Y tokens/s`` where tokens = prompt + output length of every request (vLLM's count:
``n`` does not multiply it). Synthetic prompts are ``--input-len`` random token ids; ``--dataset`` takes a ShareGPT file.
"""
from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass

from pagedllm.bench.datasets import sample_random, sample_sharegpt
from pagedllm.bench.offline import add_engine_args, create_llm, engine_kwargs, llm_tokenizer, sampling_params
from pagedllm.bench.utils import write_json

BACKENDS = ("pagedllm", "vllm")


@dataclass
class PrioritizedRequest:
    prompt: str | dict          # text, or a TokensPrompt dict
    prompt_len: int
    output_len: int
    priority: int


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--backend", type=str, default="pagedllm", choices=list(BACKENDS),
                        help="pagedllm (alias vllm): LLM.generate with per-request priorities.")
    parser.add_argument("--dataset", type=str, default=None, help="Path to a ShareGPT dataset (default: synthetic).")
    parser.add_argument("--input-len", type=int, default=None, help="Input prompt length for each request.")
    parser.add_argument("--output-len", type=int, default=None,
                        help="Output length for each request. Overrides the output length from the dataset.")
    parser.add_argument("--n", type=int, default=1, help="Number of generated sequences per prompt.")
    parser.add_argument("--num-prompts", type=int, default=200, help="Number of prompts to process.")
    parser.add_argument("--output-json", type=str, default=None,
                        help="Path to save the throughput results in JSON format.")
    parser.add_argument("--detokenize", action="store_true",
                        help="Detokenize the response (detokenization time included in the latency measurement).")
    add_engine_args(parser)
    return parser


def validate_args(args: argparse.Namespace) -> None:
    if args.backend == "vllm":
        args.backend = "pagedllm"
    if args.dataset is None:
        if args.input_len is None or args.output_len is None:
            raise ValueError("Without --dataset, --input-len and --output-len are required.")
    elif args.input_len is not None:
        raise ValueError("--input-len is only for synthetic prompts; it cannot be combined with --dataset.")
    if args.output_len is not None and args.output_len < 1:
        raise ValueError(f"--output-len must be >= 1, got {args.output_len}.")
    if args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}.")


def sample_prioritized(args: argparse.Namespace, tokenizer) -> list[PrioritizedRequest]:
    rng = random.Random(args.seed or 0)
    if args.dataset is None:
        samples = sample_random(args.num_prompts, args.input_len, args.output_len, tokenizer=None,
                                seed=args.seed or 0)
    else:
        samples = sample_sharegpt(args.dataset, args.num_prompts, tokenizer, seed=args.seed or 0,
                                  output_len=args.output_len, oversample=False)
    return [PrioritizedRequest(s.llm_prompt(), s.prompt_len, s.expected_output_len, 0 if rng.random() < 0.5 else 1)
            for s in samples]


def main(args: argparse.Namespace) -> dict:
    print(args)
    validate_args(args)
    # Priorities only order the queue under scheduling_policy="priority" (vLLM's rule; under "fcfs" a non-zero
    # priority is an error): this benchmark is about them, so it asks for that policy.
    llm = create_llm(engine_kwargs(args, scheduling_policy="priority"))
    requests = sample_prioritized(args, llm_tokenizer(llm))
    params = [sampling_params(n=args.n, temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=r.output_len,
                              detokenize=args.detokenize) for r in requests]
    start = time.perf_counter()
    llm.generate([r.prompt for r in requests], params, priority=[r.priority for r in requests], use_tqdm=True)
    elapsed = time.perf_counter() - start
    total_num_tokens = sum(r.prompt_len + r.output_len for r in requests)
    print(f"Throughput: {len(requests) / elapsed:.2f} requests/s, {total_num_tokens / elapsed:.2f} tokens/s")
    results = {"elapsed_time": elapsed, "num_requests": len(requests), "total_num_tokens": total_num_tokens,
               "requests_per_second": len(requests) / elapsed, "tokens_per_second": total_num_tokens / elapsed}
    if args.output_json:
        write_json(args.output_json, results)
    return results
