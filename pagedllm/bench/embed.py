"""`pagedllm bench embed`: offline embedding throughput (LLM.embed) for N sentences, optionally side by side with
sentence-transformers' ``encode`` at a fixed batch size on the same sentences and the same device.

The sentences are made up from a fixed word list (seeded), 5 to 40 words each: short retrieval-style inputs.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from pagedllm.bench.offline import add_engine_args, create_llm, engine_kwargs
from pagedllm.bench.utils import write_json

_WORDS = ("the a model engine request token cache block paged attention embedding vector search query document "
          "retrieval server batch scheduler prefill decode sentence transformer encoder pooling mean normalize "
          "fast slow small large cpu gpu memory latency throughput text language system user answer question "
          "data index store find match score rank").split()


def make_sentences(num: int, seed: int = 0, min_words: int = 5, max_words: int = 40) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, size=int(rng.integers(min_words, max_words + 1)))).capitalize() + "."
            for _ in range(num)]


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--num-sentences", type=int, default=1000, help="Sentences to embed.")
    parser.add_argument("--st-batch-size", type=int, default=32,
                        help="sentence-transformers' encode batch size (with --compare-sentence-transformers).")
    parser.add_argument("--compare-sentence-transformers", action="store_true",
                        help="Also time sentence-transformers' encode on the same sentences (CPU).")
    parser.add_argument("--num-iters", type=int, default=3, help="Timed runs of each (the best is reported).")
    parser.add_argument("--output-json", type=str, default=None, help="Write the results to this JSON file.")
    add_engine_args(parser)
    parser.set_defaults(model="sentence-transformers/all-MiniLM-L6-v2", runner="pooling")
    return parser


def _best_time(fn, iters: int) -> float:
    fn()   # warm-up (first-call allocations, oneDNN weight packing)
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.num_sentences < 1 or args.num_iters < 1:
        raise ValueError("--num-sentences and --num-iters must be >= 1.")
    sentences = make_sentences(args.num_sentences, args.seed or 0)
    llm = create_llm(engine_kwargs(args))
    ours = _best_time(lambda: llm.embed(sentences, use_tqdm=False), args.num_iters)
    result: dict[str, Any] = {"model": args.model, "num_sentences": len(sentences),
                              "pagedllm_seconds": ours, "pagedllm_embeddings_per_s": len(sentences) / ours}
    print(f"pagedllm:              {len(sentences) / ours:8.1f} embeddings/s ({ours:.3f} s for {len(sentences)})")
    if args.compare_sentence_transformers:
        from sentence_transformers import SentenceTransformer
        st = SentenceTransformer(llm.llm_engine.config.model.model_dir, device="cpu")
        theirs = _best_time(lambda: st.encode(sentences, batch_size=args.st_batch_size), args.num_iters)
        result.update(st_batch_size=args.st_batch_size, sentence_transformers_seconds=theirs,
                      sentence_transformers_embeddings_per_s=len(sentences) / theirs, speedup=theirs / ours)
        print(f"sentence-transformers: {len(sentences) / theirs:8.1f} embeddings/s ({theirs:.3f} s, batch "
              f"{args.st_batch_size})")
        print(f"pagedllm / sentence-transformers: {theirs / ours:.2f}x")
    if args.output_json:
        write_json(args.output_json, result)
    return result
