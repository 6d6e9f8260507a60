#!/bin/bash
# A/B harness used for the session-5 boundaries comparison (docs/perf.md). Before a device call: copy the
# baseline package to .bench/base/pagedllm, ../shared/bench/*.py to .bench/sb/, wheels to .whl/ (wheelhouse.sh);
# run from the repo root with carry [".whl", ".bench"] and this script copied to .bench/.
[ -d /tmp/site/fastapi ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
MODELS=qwen2.5-1.5b ENGINES="new base" bash .bench/gpu2.sh 2>&1 | grep -v "^ERROR"
