#!/bin/bash
# Session 12: the 3 tensor-parallel GPU tests that failed under `-n 8` in s12a (their memory check saw the other
# test workers' memory), alone; then what each small kernel adds to a 7B bf16 decode step (leave-one-out, bs1 and
# the latency run's M = 8). Prediction: each of silu / norm / rotary / attention adds ~2-4 us a layer serialized at
# bs1 (0.45 ms of the 3.9 ms step is outside the GEMMs). Carry [".whl", ".bench"] (~4 min).
. benchmarks/gpu_session9/common.sh
PYTHONPATH=$R timeout 120 python3 -m pytest -q -p no:cacheprovider -rf --tb=line tests/gpu/test_tensor_parallel_gpu.py 2>&1 | grep -E "^FAILED|passed|failed" | cut -c1-240
for v in base no_silu no_norm no_rotary no_attn base; do
  PYTHONPATH=$R PAGEDLLM_BENCH_DIR=.bench/sb timeout 100 python3 benchmarks/kernels/leave_one_out.py $v qwen2.5-7b bs1_128_256 latency_8x1024x1024 2>&1 | grep '^{' | sed "s/^/$v /" | python3 -c "
import sys, json
for l in sys.stdin:
    v, j = l.split(' ', 1); d = json.loads(j); print(v, d['workload'], d['seconds'], d['output_tok_s'])"
done
