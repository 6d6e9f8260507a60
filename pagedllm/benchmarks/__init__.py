"""vLLM's ``vllm.benchmarks`` import paths, which its examples use (``from vllm.benchmarks.datasets import
add_dataset_parser, get_samples``): pagedllm's benchmarks are pagedllm/bench."""
