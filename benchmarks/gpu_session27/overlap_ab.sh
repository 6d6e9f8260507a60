#!/bin/bash
# Session 27: `serve` 7B dummy to /health from an empty Triton cache
# with PAGEDLLM_COMPILE_DURING_DRY_PASS 0 / 1 (the variants queued after the dry warm-up, or as it meets them),
# balanced order, then the GPU tests of kernels/parallel_compile.py. Carry [".whl", ".bench"] (~3 min).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/overlap_ab.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
SWITCH=PAGEDLLM_COMPILE_DURING_DRY_PASS VALUES="${VALUES:-0 1 1 0 0 1}" bash benchmarks/gpu_session9/s9e.sh 2>&1 | grep -E "health|Built|start-up "
PYTHONPATH=$R timeout 200 python3 -m pytest -v -p no:cacheprovider tests/gpu/test_parallel_compile.py > $OUT/overlap_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed" $OUT/overlap_tests.log | cut -c1-200 | tail -12
