#!/bin/bash
# Queued by session 28 for the next GPU session (carry [".whl", ".bench"]; .whl from `../shared/gpu/wheelhouse.sh
# bitsandbytes opentelemetry-api importlib-metadata zipp py-spy`). One PART a call; the order is the priority.
# PART=1 (~250 s): the int4 wide kernel's x rows past M, re-read against masked (pairs.sh PART=5: the probe at
#         partial row tiles). If masked wins at partial tiles, PART=2 decides the default.
# PART=2 (~520 s): pairs.sh PART=6: pure decode at 20 / 40 / 96 / 160 / 256 rows, AWQ latency (8 rows: the decode
#         kernel under the same switch) and AWQ ShareGPT, base against
#         the committed routing masked and masked + the 128 / 256-row pairs routes. If masked + routes win:
#         MASK_PARTIAL_ROWS = True and route benchmarks/gpu_session28/pairs_table.json's 128 / 256 buckets.
# PART=3 (~420 s): the whole tests/gpu tree (session 28's run was cut at 300 s with one failure since fixed).
# PART=4: issue 13 / 18 rows (H200 wanted): session 25's next.sh PART=2; and the cold start twice.
. benchmarks/gpu_session9/common.sh
case "${PART:-1}" in
1) PART=5 bash benchmarks/gpu_session28/pairs.sh ;;
2) PART=6 bash benchmarks/gpu_session28/pairs.sh ;;
3) PART=1 T=${T:-420} bash benchmarks/gpu_session26/next.sh ;;
4) PART=2 bash benchmarks/gpu_session25/next.sh
   SWITCH=PAGEDLLM_LOGGING_LEVEL VALUES="INFO INFO" timeout 150 bash benchmarks/gpu_session9/s9e.sh 2>&1 \
     | grep -E "health|Built|start-up " | cut -c1-400 ;;
esac
