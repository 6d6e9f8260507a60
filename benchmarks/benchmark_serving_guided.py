"""Online serving benchmark with structured-output requests (vLLM's benchmarks/benchmark_serving_guided.py):
`pagedllm bench serve` with --dataset-name json-schema by default (regex and choice too); every request carries
its constraint (guided_json / guided_regex / guided_choice)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pagedllm.config import FlexibleArgumentParser  # noqa: E402
from pagedllm.bench import serve  # noqa: E402

if __name__ == "__main__":
    parser = FlexibleArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_cli_args(parser)
    parser.set_defaults(dataset_name="json-schema")
    serve.main(parser.parse_args())
