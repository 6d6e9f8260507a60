#!/bin/bash
# Session 29: sleep mode with the KV cache in a CUDA memory pool of its own (sleep_mode.kv_cache_pool); the GPU
# sleep test, then the same with the pool off (mutation: the test must fail). Carry [".whl", ".bench"].
. benchmarks/gpu_session9/common.sh
nvidia-smi --query-gpu=name --format=csv,noheader
PYTHONPATH=$R timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_sleep_mode_gpu.py tests/gpu/test_spec_decode_gpu.py 2>&1 | tail -3
rm -rf /tmp/mut && mkdir /tmp/mut && cp -r pagedllm tests /tmp/mut/
sed -i 's/kv_cache_pool(self.config.args.enable_sleep_mode/kv_cache_pool(False/' /tmp/mut/pagedllm/worker/model_runner.py
grep -c "kv_cache_pool(False" /tmp/mut/pagedllm/worker/model_runner.py
cd /tmp/mut && PYTHONPATH=/tmp/mut timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_sleep_mode_gpu.py 2>&1 | grep -E "passed|failed|assert \(" | head -5
