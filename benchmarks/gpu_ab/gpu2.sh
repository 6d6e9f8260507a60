#!/bin/bash
# A/B harness used for the session-5 boundaries comparison (docs/perf.md). Before a device call: copy the
# baseline package to .bench/base/pagedllm, ../shared/bench/*.py to .bench/sb/, wheels to .whl/ (wheelhouse.sh);
# run from the repo root with carry [".whl", ".bench"] and this script copied to .bench/.
# Device call 2: served A/B (shared/bench/serve_workload.py, concurrency 100), base then new per model.
[ -d /tmp/site/fastapi ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
R=$PWD
for eng in new base; do
  root=$R; [ $eng = base ] && root=$R/.bench/base
  mkdir -p /tmp/bin_$eng
  printf '#!/bin/bash\nPYTHONPATH=%s:/tmp/site exec python3 -m pagedllm.entrypoints.cli "$@"\n' "$root" > /tmp/bin_$eng/pagedllm
  chmod +x /tmp/bin_$eng/pagedllm
done
for model in ${MODELS:-qwen2.5-7b qwen2.5-1.5b}; do
  for eng in ${ENGINES:-new base}; do
    mkdir -p $OUT/$eng
    PATH=/tmp/bin_$eng:$PATH PYTHONPATH=/tmp/site LOG_DIR=$OUT/$eng timeout 280 python3 .bench/sb/serve_workload.py pagedllm $model sharegpt_like_1000 100 | sed "s/^/$eng /"
    grep -i "error\|Traceback" $OUT/$eng/server_pagedllm_$model.log | head -5
  done
done
