#!/bin/bash
# Prepared in session 9, not run (the device time was spent). Issue 18: the Triton variants of the start-up warm-up
# built on threads (PAGEDLLM_COMPILE_THREADS, kernels/parallel_compile.py; off by default until this runs). Its GPU
# test first, then s9e.sh's cold /health A/B with 16 threads vs 0. Prediction: memory profile + warm-up 8.4 s ->
# ~4.7 s (the 6.5 s of builds -> ~2.8 s, the dry pass adding ~1 s). Carry [".whl", ".bench"] as s9a.sh (~4 min).
. benchmarks/gpu_session9/common.sh
python3 -m pytest -q -p no:cacheprovider tests/gpu/test_parallel_compile.py tests/gpu/test_triton_ops.py 2>&1 | tail -3
SWITCH=PAGEDLLM_COMPILE_THREADS VALUES="${VALUES:-16 0 16 0}" bash benchmarks/gpu_session9/s9e.sh
