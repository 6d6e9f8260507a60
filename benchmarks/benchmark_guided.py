"""Offline cost of structured output (vLLM's benchmarks/benchmark_guided.py): the same prompts with and without
their constraint (json-schema / regex / choice), same output lengths; prints output throughput of both."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pagedllm.config import FlexibleArgumentParser  # noqa: E402
from pagedllm.bench import guided  # noqa: E402

if __name__ == "__main__":
    parser = FlexibleArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    guided.add_cli_args(parser)
    guided.main(parser.parse_args())
