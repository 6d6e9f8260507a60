"""Benchmark offline inference throughput
(same flags as `pagedllm bench throughput`; vLLM's benchmarks/benchmark_throughput.py)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pagedllm.config import FlexibleArgumentParser  # noqa: E402
from pagedllm.bench import throughput  # noqa: E402

if __name__ == "__main__":
    parser = FlexibleArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    throughput.add_cli_args(parser)
    throughput.main(parser.parse_args())
