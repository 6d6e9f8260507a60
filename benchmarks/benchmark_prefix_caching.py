"""Benchmark the effect of prefix caching on prompts sharing a prefix
(same flags as `pagedllm bench prefix_caching`; vLLM's benchmarks/benchmark_prefix_caching.py)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pagedllm.config import FlexibleArgumentParser  # noqa: E402
from pagedllm.bench import prefix_caching  # noqa: E402

if __name__ == "__main__":
    parser = FlexibleArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    prefix_caching.add_cli_args(parser)
    prefix_caching.main(parser.parse_args())
