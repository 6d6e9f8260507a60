#!/bin/bash
# Queued by session 27 for the next GPU session (carry [".whl", ".bench"]; .whl from `../shared/gpu/wheelhouse.sh
# bitsandbytes opentelemetry-api importlib-metadata zipp py-spy`; prefer an H200: issues 13 / 18 are H200 rows).
# PART=1: the whole tests/gpu tree (one -v run, full log kept), then the cold start twice (issue 18: <= 15 s on an
#         H200; H100 at 02d05c2: 13.6-13.8 s with a warm page cache).
# PART=2: issue 13's AWQ rows and issue 18's bf16 rows (session 25's next.sh PART=2).
# PART=3: the PAGEDLLM_COMPILE_DURING_DRY_PASS A/B (overlap_ab.sh; prediction: memory profile + warm-up 4.3-4.7 ->
#         ~3.5-4.0 s, /health ~0.5-1 s sooner; flip its default in envs.py if it holds).
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/next27_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${PART:-1}" = 1 ]; then
PART=1 T=${T:-420} bash benchmarks/gpu_session26/next.sh     # the whole suite, as session 26 queued it
SWITCH=PAGEDLLM_LOGGING_LEVEL VALUES="INFO INFO" timeout 150 bash benchmarks/gpu_session9/s9e.sh 2>&1 | grep -E "health|Built|start-up " | cut -c1-400
fi
if [ "${PART:-1}" = 2 ]; then
PART=2 bash benchmarks/gpu_session25/next.sh
fi
if [ "${PART:-1}" = 3 ]; then
bash benchmarks/gpu_session27/overlap_ab.sh
fi
