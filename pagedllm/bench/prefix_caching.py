"""`pagedllm bench prefix_caching`: offline throughput on prompts that share a prefix (vLLM's
benchmark_prefix_caching), with prefix caching off and on, side by side.

Each prompt = one shared ``--prefix-len`` prefix + a body whose length is drawn from ``--input-length-range`` (random
tokens, or ShareGPT prompts in that range with ``--dataset-path``); the set is repeated ``--repeat-count`` times and
shuffled (or sorted by length with ``--sort``). Greedy, ``ignore_eos``, ``--output-len`` tokens each. Without
``--[no-]enable-prefix-caching`` both modes run, each in a fresh process.
"""
from __future__ import annotations

import argparse
import random
from typing import Any

import numpy as np

from pagedllm.bench.datasets import sample_sharegpt
from pagedllm.bench.offline import add_engine_args, compare_prefix_caching, optional_prefix_caching_flag
from pagedllm.bench.utils import try_get_tokenizer, vocab_ids, write_json


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--dataset-path", type=str, default=None,
                        help="ShareGPT json file for the prompt bodies (default: random tokens).")
    parser.add_argument("--prefix-len", type=int, default=0, help="Tokens of the prefix shared by every prompt.")
    parser.add_argument("--input-length-range", type=str, default="128:256",
                        help="MIN:MAX token length of each prompt body (after the prefix).")
    parser.add_argument("--num-prompts", type=int, default=1, help="Distinct prompts.")
    parser.add_argument("--repeat-count", type=int, default=1, help="Times each prompt is sent.")
    parser.add_argument("--sort", action="store_true", help="Sort prompts by length instead of shuffling.")
    parser.add_argument("--output-len", type=int, default=10, help="Generated tokens per request.")
    parser.add_argument("--disable-detokenize", action="store_true")
    parser.add_argument("--output-json", type=str, default=None, help="Write both modes' figures to this file.")
    add_engine_args(parser)
    optional_prefix_caching_flag(parser)
    return parser


def parse_length_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(x) for x in text.split(":"))
    except ValueError as exc:
        raise ValueError(f"--input-length-range must be MIN:MAX, got {text!r}.") from exc
    if low < 1 or high < low:
        raise ValueError(f"--input-length-range needs 1 <= MIN <= MAX, got {text!r}.")
    return low, high


def build_prompts(args: argparse.Namespace, tokenizer) -> list[list[int]]:
    """Token-id prompts: shared prefix + body, repeated and shuffled (seeded) or sorted."""
    low, high = parse_length_range(args.input_length_range)
    seed = args.seed if args.seed is not None else 0
    rng = np.random.default_rng(seed)
    allowed = np.asarray(vocab_ids(tokenizer), dtype=np.int64)
    prefix = rng.choice(allowed, size=args.prefix_len).tolist()
    if args.dataset_path:
        if tokenizer is None:
            raise ValueError("--dataset-path needs a tokenizer (pass --tokenizer).")
        pool = sample_sharegpt(args.dataset_path, 10 * args.num_prompts, tokenizer, seed=seed, oversample=False)
        bodies = []
        for req in pool:
            ids = tokenizer(req.prompt_text, add_special_tokens=False).input_ids
            if low <= len(ids) <= high:
                bodies.append(ids)
            if len(bodies) == args.num_prompts:
                break
        if len(bodies) < args.num_prompts:
            raise ValueError(f"Only {len(bodies)} ShareGPT prompts have a length in {args.input_length_range}; "
                             f"{args.num_prompts} requested.")
    else:
        lengths = rng.integers(low, high + 1, size=args.num_prompts)
        bodies = [rng.choice(allowed, size=int(n)).tolist() for n in lengths]
    prompts = [prefix + body for body in bodies] * args.repeat_count
    if args.sort:
        prompts.sort(key=len)
    else:
        random.Random(seed).shuffle(prompts)
    return prompts


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.num_prompts < 1 or args.repeat_count < 1 or args.output_len < 1:
        raise ValueError("--num-prompts, --repeat-count and --output-len must be >= 1.")
    tokenizer = None if args.skip_tokenizer_init else try_get_tokenizer(
        args.tokenizer or args.model, args.trust_remote_code, required=bool(args.dataset_path))
    prompts = build_prompts(args, tokenizer)
    print(f"Testing {len(prompts)} requests ({args.num_prompts} prompts x {args.repeat_count}, "
          f"shared prefix {args.prefix_len} tokens, body {args.input_length_range} tokens, "
          f"output {args.output_len} tokens)")
    warmup = [{"prompt_token_ids": list(range(1, 17))}]
    sampling = {"temperature": 0.0, "max_tokens": args.output_len, "ignore_eos": True,
                "detokenize": not args.disable_detokenize}
    results = compare_prefix_caching(args, [{"prompt_token_ids": p} for p in prompts], sampling, warmup,
                                     "Prefix Caching Benchmark")
    if args.output_json:
        write_json(args.output_json, results)
    return results
