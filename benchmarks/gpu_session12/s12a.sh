#!/bin/bash
# Session 12, first call: tests/gpu on the tree of abdc0d0 (7f0a9e5's capture test never ran on a GPU), then where a
# 7B bf16 decode step goes now (bs1 and the latency run's M = 8 steps, kernels by GPU time), then one cold start of
# `serve` 7B with its timeline (issue 18's 15 s row). Carry [".whl", ".bench"] (~8 min).
. benchmarks/gpu_session9/common.sh
PYTHONPATH=$R timeout 330 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=line tests/gpu 2>&1 | grep -E "^FAILED|^SKIPPED|passed|failed|rror" | cut -c1-240 | head -40
export PAGEDLLM_BENCH_DIR=.bench/sb
PYTHONPATH=$R timeout 90 python3 benchmarks/profile_offline.py qwen2.5-7b bs1_128_256 --steps 60:120 2>&1 | grep -v Warning | tail -60 | cut -c1-200
PYTHONPATH=$R timeout 120 python3 benchmarks/profile_offline.py qwen2.5-7b latency_8x1024x1024 --steps 600:630 2>&1 | grep -v Warning | tail -60 | cut -c1-200
VALUES="1" bash benchmarks/gpu_session9/s9e.sh
