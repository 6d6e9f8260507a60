#!/bin/bash
# Session 11, final check of the W8A8 routing (2..64 rows on any shape, 65..128 on 7B qkv / o / down, configs from
# s11b-s11d): GPU tests of the kernels and the engine, then 7B offline: FP8 latency + sharegpt + bs1 (predicted:
# latency ~3.5 s, sharegpt 13,691 -> ~13,900 with the 65..128-row steps off _scaled_mm, bs1 ~366 unchanged), bf16
# latency + sharegpt (the masked x rows: within noise of 4.56-4.64 s and 11,002-11,055 tok/s).
# Carry [".whl", ".bench"] (~7 min).
. benchmarks/gpu_session9/common.sh
PYTHONPATH=$R timeout 240 python3 -m pytest -q -p no:cacheprovider -n 8 -rf --tb=line tests/gpu/test_quant_fp8_kernels.py tests/gpu/test_triton_gemv.py tests/gpu/test_pdl.py tests/gpu/test_engine_gpu.py 2>&1 | grep -E "^FAILED|passed|failed|Error" | cut -c1-220 | head -30
ANCHOR_KW='{"quantization": "fp8"}' PYTHONPATH=$R timeout 200 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b latency_8x1024x1024 sharegpt_like_1000 bs1_128_256 2>&1 | grep '^{' | sed "s/^/fp8 /" | cut -c1-300
PYTHONPATH=$R timeout 150 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b latency_8x1024x1024 sharegpt_like_1000 2>&1 | grep '^{' | sed "s/^/bf16 /" | cut -c1-300
