"""`pagedllm bench long_document_qa`: offline throughput of repeated questions over long documents (vLLM's
benchmark_long_document_qa_throughput), with prefix caching off and on, side by side.

``--num-documents`` documents of ``--document-length`` random tokens (distinct from their first token on, so none is
a prefix of another) are each sent ``--repeat-count`` times: ``tile`` (all documents, then all again), ``interleave``
(each document's repeats back to back) or ``random`` (tiled, then shuffled with ``--shuffle-seed``). A warm-up on one
unrelated document of the same length runs first, untimed.
"""
from __future__ import annotations

import argparse
import random
from typing import Any

import numpy as np

from pagedllm.bench.offline import add_engine_args, compare_prefix_caching, optional_prefix_caching_flag
from pagedllm.bench.utils import try_get_tokenizer, vocab_ids, write_json

REPEAT_MODES = ("random", "tile", "interleave")


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--num-documents", type=int, default=8, help="Number of documents.")
    parser.add_argument("--document-length", type=int, default=20000, help="Tokens per document.")
    parser.add_argument("--output-len", type=int, default=10, help="Generated tokens per request.")
    parser.add_argument("--repeat-count", type=int, default=2, help="Times each document is sent.")
    parser.add_argument("--repeat-mode", type=str, default="random", choices=list(REPEAT_MODES),
                        help="Order of the repeated requests.")
    parser.add_argument("--shuffle-seed", type=int, default=0, help="Seed of the random repeat mode.")
    parser.add_argument("--output-json", type=str, default=None, help="Write both modes' figures to this file.")
    add_engine_args(parser)
    optional_prefix_caching_flag(parser)
    return parser


def repeat_prompts(prompts: list, repeat_count: int, mode: str, seed: int) -> list:
    if mode == "tile":
        return prompts * repeat_count
    if mode == "interleave":
        return [p for p in prompts for _ in range(repeat_count)]
    if mode == "random":
        out = prompts * repeat_count
        random.Random(seed).shuffle(out)
        return out
    raise ValueError(f"--repeat-mode must be one of {REPEAT_MODES}, got {mode!r}.")


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.num_documents < 1 or args.document_length < 1 or args.repeat_count < 1 or args.output_len < 1:
        raise ValueError("--num-documents, --document-length, --repeat-count and --output-len must be >= 1.")
    tokenizer = None if args.skip_tokenizer_init else try_get_tokenizer(args.tokenizer or args.model,
                                                                        args.trust_remote_code)
    allowed = np.asarray(vocab_ids(tokenizer), dtype=np.int64)
    rng = np.random.default_rng(args.seed if args.seed is not None else 0)
    # Distinct first tokens guarantee that no document shares a cached prefix with another (or with the warm-up).
    first = rng.choice(allowed, size=args.num_documents + 1, replace=len(allowed) < args.num_documents + 1)
    docs = [[int(first[i])] + rng.choice(allowed, size=args.document_length - 1).tolist()
            for i in range(args.num_documents + 1)]
    warmup, documents = docs[0], docs[1:]
    prompts = repeat_prompts(documents, args.repeat_count, args.repeat_mode, args.shuffle_seed)
    print(f"Testing {len(prompts)} requests ({args.num_documents} documents x {args.repeat_count}, "
          f"{args.document_length} tokens each, repeat mode {args.repeat_mode}, output {args.output_len} tokens)")
    sampling = {"temperature": 0.0, "max_tokens": args.output_len, "ignore_eos": True}
    results = compare_prefix_caching(args, [{"prompt_token_ids": p} for p in prompts], sampling,
                                     [{"prompt_token_ids": warmup}], "Long Document QA Benchmark")
    for name in ("prefix_caching_off", "prefix_caching_on"):
        if name in results:
            print(f"Time to execute all requests ({name.replace('_', ' ')}): "
                  f"{results[name]['elapsed_time']:.4f} secs")
    if args.output_json:
        write_json(args.output_json, results)
    return results
