"""Benchmark the latency of processing a single batch of requests
(same flags as `pagedllm bench latency`; vLLM's benchmarks/benchmark_latency.py)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pagedllm.config import FlexibleArgumentParser  # noqa: E402
from pagedllm.bench import latency  # noqa: E402

if __name__ == "__main__":
    parser = FlexibleArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    latency.add_cli_args(parser)
    latency.main(parser.parse_args())
