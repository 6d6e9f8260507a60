#!/bin/bash
# Session 27: the GPU tests of kernels/parallel_compile.py (launchers on the pool, Triton prepared in the background)
# and of sleep mode, then `serve` 7B dummy to /health from an empty Triton cache with PAGEDLLM_TRITON_PREP 0 / 1
# (balanced order). Carry [".whl", ".bench"] (~4 min).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/prep_ab.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
PYTHONPATH=$R timeout 200 python3 -m pytest -v -p no:cacheprovider tests/gpu/test_parallel_compile.py \
  tests/gpu/test_sleep_mode_gpu.py > $OUT/prep_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/prep_tests.log | cut -c1-200 | tail -12
SWITCH=PAGEDLLM_TRITON_PREP VALUES="${VALUES:-0 1 1 0 0 1}" bash benchmarks/gpu_session9/s9e.sh
ONLY_SPY=1 bash benchmarks/gpu_session27/coldstart_spy.sh 2>&1 | grep -E "health|Built" 
