"""Benchmark online serving throughput and latency of an OpenAI-compatible server
(same flags as `pagedllm bench serve`; vLLM's benchmarks/benchmark_serving.py)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pagedllm.config import FlexibleArgumentParser  # noqa: E402
from pagedllm.bench import serve  # noqa: E402

if __name__ == "__main__":
    parser = FlexibleArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_cli_args(parser)
    serve.main(parser.parse_args())
