#!/bin/bash
# Session 11, issue 13 (FP8): the W8A8 skinny GEMM's configs at M = 1 and 16 (M = 8 was in s11a), and
# M = 32..128 with larger row tiles against fp8 _scaled_mm and bf16 cuBLAS (does the kernel pay beyond 16 rows?).
# Prediction: at M = 32-64 the weight read still dominates (gate_up 136 MB fp8 = ~34 us at 4 TB/s against
# _scaled_mm's ~64 us at M = 16), so W8A8 row tiles of 32-64 should beat _scaled_mm; bf16 near cuBLAS.
# Carry [".whl", ".bench"] (~6 min).
. benchmarks/gpu_session9/common.sh
timeout 450 python3 benchmarks/kernels/skinny_fp8_probe.py --part sweep,bigm --ms 1,16 --big-ms 32,64 --deadline 400 --out $OUT/probe2.json 2>&1 | tee $OUT/probe2.log | grep -v Warning | tail -40
