#!/bin/bash
# Session 29: sleep mode with the KV cache in a CUDA memory pool of its own (sleep_mode.kv_cache_pool); the GPU
# sleep test, then the same with the pool off (mutation: the test must fail). Carry [".whl", ".bench"].
. benchmarks/gpu_session9/common.sh
nvidia-smi --query-gpu=name --format=csv,noheader
PYTHONPATH=$R timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_sleep_mode_gpu.py tests/gpu/test_spec_decode_gpu.py 2>&1 | tail -3
# the packed int4 kernels after ca2a09f (the whole-W scratch path as the one-slab case; UNTABLED_WIDE's numerics)
PYTHONPATH=$R timeout 150 python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_quant_packed_kernels.py \
  tests/gpu/test_quant_awq_engine_gpu.py 2>&1 | tail -3
rm -rf /tmp/mut && mkdir /tmp/mut && cp -r pagedllm tests /tmp/mut/
sed -i 's/kv_cache_pool(self.config.args.enable_sleep_mode/kv_cache_pool(False/' /tmp/mut/pagedllm/worker/model_runner.py
grep -c "kv_cache_pool(False" /tmp/mut/pagedllm/worker/model_runner.py
cd /tmp/mut && PYTHONPATH=/tmp/mut timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_sleep_mode_gpu.py 2>&1 | grep -E "passed|failed|assert \(" | head -5
cd $R
# The scratch path in slabs (SCRATCH_SLAB_BYTES, off): the probe. Prediction: at 512..2048 rows gate_up and qkv
# 15-35% faster than the whole-W path (the 4.6x HBM traffic of its bf16 write + read gone); down, whose slabs are
# narrow (K 18944) and re-read a large x, little or slower.
PYTHONPATH=$R timeout 150 python3 benchmarks/kernels/slab_probe.py --deadline 110 2>&1 | grep -v Warning
# On an H200 (issues 13 and 18's rows are H200 figures): AWQ 7B bs1 + ShareGPT, then 1.5B bs1 and 7B ShareGPT.
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 100 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 \
    sharegpt_like_1000 2>&1 | offline_summary "awq"
  PYTHONPATH=$R timeout 60 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-1.5b bs1_128_256 2>&1 | offline_summary "1.5b"
  PYTHONPATH=$R timeout 80 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 2>&1 | offline_summary "7b"
fi
