"""Benchmark repeated requests over long documents, prefix caching off vs on
(same flags as `pagedllm bench long_document_qa`; vLLM's benchmarks/benchmark_long_document_qa_throughput.py)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pagedllm.config import FlexibleArgumentParser  # noqa: E402
from pagedllm.bench import long_document_qa  # noqa: E402

if __name__ == "__main__":
    parser = FlexibleArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    long_document_qa.add_cli_args(parser)
    long_document_qa.main(parser.parse_args())
