"""Benchmark offline prioritization: LLM.generate with a random priority (0 or 1) per request
(vLLM's benchmarks/benchmark_prioritization.py; same flags and printed line)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pagedllm.bench import prioritization  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    prioritization.add_cli_args(parser)
    prioritization.main(parser.parse_args())
