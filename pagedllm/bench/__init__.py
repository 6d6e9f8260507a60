"""Benchmarks with vLLM's flags, output and metrics: `pagedllm bench serve | throughput | latency | prefix_caching |
long_document_qa | compare` (see cli.py) and the thin scripts in benchmarks/."""
