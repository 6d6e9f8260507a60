#!/bin/bash
# A/B harness used for the session-5 boundaries comparison (docs/perf.md). Before a device call: copy the
# baseline package to .bench/base/pagedllm, ../shared/bench/*.py to .bench/sb/, wheels to .whl/ (wheelhouse.sh);
# run from the repo root with carry [".whl", ".bench"] and this script copied to .bench/.
# Device call 1: tests/gpu on the new tree, then offline A/B (base = 397319e copy in .bench/base, new = this tree).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
git log --oneline -1 2>/dev/null
R=$PWD
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  PYTHONPATH=$R:/tmp/site timeout ${TEST_TIMEOUT:-230} python3 -m pytest -q -x -n 4 -p no:cacheprovider tests/gpu 2>&1 | tail -25
fi
for model in ${MODELS:-qwen2.5-7b qwen2.5-1.5b}; do
  for eng in ${ENGINES:-new base}; do
    root=$R; [ $eng = base ] && root=$R/.bench/base
    PYTHONPATH=$root:/tmp/site timeout 200 python3 .bench/sb/offline_workload.py pagedllm $model ${WORKLOADS:-sharegpt_like_1000 bs1_128_256} 2>$OUT/err_${eng}_${model}.log | sed "s/^/$eng /"
    tail -3 $OUT/err_${eng}_${model}.log | cut -c1-300
  done
done
