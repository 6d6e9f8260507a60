#!/bin/bash
# Session 7, call A: issue-18 baseline at HEAD. Served 7B c=100 cold Triton cache (start-up timeline), again warm,
# then the offline rows (7B bs1 / latency / ShareGPT, 1.5B bs1).
[ -d /tmp/site/fastapi ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
R=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p /tmp/bin_new
printf '#!/bin/bash\nPYTHONPATH=%s:/tmp/site exec python3 -m pagedllm.entrypoints.cli "$@"\n' "$R" > /tmp/bin_new/pagedllm
chmod +x /tmp/bin_new/pagedllm
export TRITON_CACHE_DIR=/tmp/tcache_s7
for run in ${SERVE_RUNS:-cold warm}; do
  [ $run = cold ] && rm -rf $TRITON_CACHE_DIR
  mkdir -p $OUT/$run
  PATH=/tmp/bin_new:$PATH PYTHONPATH=/tmp/site LOG_DIR=$OUT/$run timeout 200 python3 .bench/sb/serve_workload.py pagedllm qwen2.5-7b sharegpt_like_1000 ${CONC:-100} | sed "s/^/$run /"
  grep -E "start-up |engine ready|after start-up" $OUT/$run/server_pagedllm_qwen2.5-7b.log | cut -c1-250 | head -8
  grep -c "after start-up" $OUT/$run/server_pagedllm_qwen2.5-7b.log
done
for spec in ${OFFLINE:-"qwen2.5-7b bs1_128_256 latency_8x1024x1024 sharegpt_like_1000" "qwen2.5-1.5b bs1_128_256"}; do
  PYTHONPATH=$R:/tmp/site timeout 240 python3 .bench/sb/offline_workload.py pagedllm $spec 2>$OUT/err_off.log
  grep -E "start-up |after start-up" $OUT/err_off.log | cut -c1-250 | head -5; tail -2 $OUT/err_off.log | cut -c1-200
done
