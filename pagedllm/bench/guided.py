"""The cost of structured output, offline (benchmarks/benchmark_guided.py): the same prompts generated with their
constraint (json-schema / regex / choice) and without it, each free request running exactly as many tokens as its
constrained twin did (ignore_eos), so the two runs differ only by the grammar work: compiling, filling the bitmask
on the host, masking the logits, advancing the matchers, and sampling synchronously."""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from pagedllm.bench.datasets import STRUCTURED_DATASETS, sample_structured
from pagedllm.bench.offline import add_engine_args, create_llm, engine_kwargs


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--dataset-name", type=str, default="json-schema", choices=list(STRUCTURED_DATASETS),
                        help="Constraint of every request.")
    parser.add_argument("--num-prompts", type=int, default=32, help="Requests, all submitted at once.")
    parser.add_argument("--output-len", type=int, default=96, help="max_tokens of each constrained request.")
    parser.add_argument("--repeats", type=int, default=2, help="Timed runs of each mode (the fastest counts).")
    parser.add_argument("--output-json", type=str, default=None, help="Write the results to this JSON file.")
    return add_engine_args(parser)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from pagedllm import SamplingParams, StructuredOutputsParams
    llm = create_llm(engine_kwargs(args))
    requests = sample_structured(args.dataset_name, args.num_prompts, args.output_len, llm.get_tokenizer())
    prompts = [r.prompt_text for r in requests]
    constrained = [SamplingParams(temperature=0.0, max_tokens=args.output_len,
                                  structured_outputs=StructuredOutputsParams(**r.structured_outputs))
                   for r in requests]
    llm.generate(prompts, constrained, use_tqdm=False)           # warm-up, and the grammars compile once
    lengths = [len(o.outputs[0].token_ids) for o in llm.generate(prompts, constrained, use_tqdm=False)]
    free = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in lengths]
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for mode, params in (("constrained", constrained), ("free", free)):
            start = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - start
            assert [len(o.outputs[0].token_ids) for o in outputs] == lengths
            best[mode] = min(best.get(mode, float("inf")), elapsed)
    tokens = sum(lengths)
    result = {"dataset_name": args.dataset_name, "num_prompts": len(prompts), "output_tokens": tokens,
              "constrained_s": best["constrained"], "free_s": best["free"],
              "constrained_output_tok_s": tokens / best["constrained"], "free_output_tok_s": tokens / best["free"],
              "constraint_cost_pct": 100.0 * (1.0 - best["free"] / best["constrained"])}
    print("{:=^72}".format(f" structured output: {args.dataset_name} "))
    print(f"requests {len(prompts)}, output tokens {tokens} (mean {tokens / len(prompts):.1f} per request)")
    print(f"constrained  {best['constrained']:8.3f} s  {result['constrained_output_tok_s']:9.1f} output tok/s")
    print(f"free         {best['free']:8.3f} s  {result['free_output_tok_s']:9.1f} output tok/s")
    print(f"constraint cost: {result['constraint_cost_pct']:.1f}% of output throughput")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)
    return result
