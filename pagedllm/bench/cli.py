"""`pagedllm bench {serve,throughput,latency,startup,prefix_caching,long_document_qa,embed,compare}`.

``add_bench_parser(subparsers)`` adds the ``bench`` command to the ``pagedllm`` CLI; each sub-command parser gets
``func`` (``args.func(args)`` runs it). ``python -m pagedllm.bench.cli SUBCOMMAND ...`` works on its own too.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

from pagedllm.config import FlexibleArgumentParser

# name -> (module, one-line help)
BENCHMARKS = {
    "serve": ("pagedllm.bench.serve", "Online serving benchmark against an OpenAI-compatible server."),
    "throughput": ("pagedllm.bench.throughput", "Offline throughput of LLM.generate (or HF transformers)."),
    "latency": ("pagedllm.bench.latency", "Latency of generating one batch, over several iterations."),
    "startup": ("pagedllm.bench.startup", "Cold and warm start-up time of LLM(...), each start in its own process."),
    "prefix_caching": ("pagedllm.bench.prefix_caching",
                       "Offline throughput on prompts sharing a prefix, prefix caching off vs on."),
    "long_document_qa": ("pagedllm.bench.long_document_qa",
                         "Repeated requests over long documents, prefix caching off vs on."),
    "embed": ("pagedllm.bench.embed", "Offline embedding throughput of LLM.embed (optionally vs sentence-transformers)."),
    "compare": ("pagedllm.bench.compare", "Several saved results side by side (table and --plot)."),
}


def _runner(module_name: str) -> Callable[[argparse.Namespace], object]:
    def run(args: argparse.Namespace) -> object:
        return importlib.import_module(module_name).main(args)
    return run


def add_bench_subcommands(subparsers) -> None:
    for name, (module_name, help_text) in BENCHMARKS.items():
        aliases = ["long_document_qa_throughput"] if name == "long_document_qa" else []   # vLLM's script name
        parser = subparsers.add_parser(name, aliases=aliases, help=help_text, description=help_text,
                                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        importlib.import_module(module_name).add_cli_args(parser)
        parser.set_defaults(func=_runner(module_name), bench_type=name)


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``bench`` (with its sub-commands) to the subparsers of the ``pagedllm`` command."""
    bench = subparsers.add_parser("bench", help="Benchmark the engine or a server (vLLM's `vllm bench`).",
                                  description="Benchmark the engine or a server.")
    bench_sub = bench.add_subparsers(dest="bench_type", metavar="{" + ",".join(BENCHMARKS) + "}")
    bench_sub.required = True
    add_bench_subcommands(bench_sub)
    return bench


def main(argv: list[str] | None = None) -> None:
    parser = FlexibleArgumentParser(prog="pagedllm bench", description="Benchmark the engine or a server.")
    sub = parser.add_subparsers(dest="bench_type", metavar="{" + ",".join(BENCHMARKS) + "}")
    sub.required = True
    add_bench_subcommands(sub)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
