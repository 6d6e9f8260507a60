#!/bin/bash
# A/B harness used for the session-5 boundaries comparison (docs/perf.md). Before a device call: copy the
# baseline package to .bench/base/pagedllm, ../shared/bench/*.py to .bench/sb/, wheels to .whl/ (wheelhouse.sh);
# run from the repo root with carry [".whl", ".bench"] and this script copied to .bench/.
# Device call 2: offline 1.5B ShareGPT interleaved (new, base, new, base), then served A/B at concurrency 100.
[ -d /tmp/site/fastapi ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
R=$PWD
git log --oneline -1 2>/dev/null
for eng in new base new base; do
  root=$R; [ $eng = base ] && root=$R/.bench/base
  PYTHONPATH=$root:/tmp/site timeout 120 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-1.5b sharegpt_like_1000 2>/dev/null | sed "s/^/$eng /"
done
MODELS="${SERVE_MODELS:-qwen2.5-7b qwen2.5-1.5b}" bash .bench/gpu2.sh
