#!/bin/bash
# Session 10, issue 18: (1) the skinny GEMM against cuBLAS at M = 1, 2, 4, 8, 16 on the 7B decode shapes (the
# latency run's decode steps are M = 8: 4.7 ms a step against 3.9 at M = 1); (2) cold `serve` 7B to /health twice
# with the defaults (threads + the one-request decode in the warm-up); (3) latency_8x1024x1024 as a same-session
# baseline. Carry [".whl", ".bench"] (~4 min).
. benchmarks/gpu_session9/common.sh
python3 benchmarks/kernels/bench_gemv.py --shapes 7B --ms 1,2,4,8,16 --out $OUT/gemv 2>&1 | grep -v "^ *$"
VALUES="16 16" SWITCH=PAGEDLLM_COMPILE_THREADS bash benchmarks/gpu_session9/s9e.sh 2>&1 | grep -E "health 200|start-up " | cut -c1-420
PYTHONPATH=$R:/tmp/site PAGEDLLM_BENCH_DIR=.bench/sb python3 benchmarks/profile_offline.py qwen2.5-7b latency_8x1024x1024 --steps 300:330 2>&1 | grep -v -E "^(INFO|WARNING|DEBUG)" | tail -60
