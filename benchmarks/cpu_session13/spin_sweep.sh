#!/bin/bash
# OpenMP spin count vs PASSIVE, unloaded or beside two busy processes (docs/perf.md, issue 19, session 13).
# bash benchmarks/cpu_session13/spin_sweep.sh LOAD(0|1) ROUNDS DTYPES SPIN...   (SPIN: P = pagedllm's PASSIVE, or a
# GOMP_SPINCOUNT; 300000 is GNU OpenMP's own default), e.g. spin_sweep.sh 0 2 bfloat16,float32 P 3000 10000 300000
cd "$(dirname "$0")/../.." || exit 1
load=$1; rounds=$2; dtypes=$3; shift 3
PY=${PY:-.venv/bin/python}
pids=""
if [ "$load" = 1 ]; then for _ in 1 2; do python3 -c "while True: pass" & pids="$pids $!"; done; fi
for r in $(seq "$rounds"); do for s in "$@"; do
  if [ "$s" = P ]; then e=""; else e="GOMP_SPINCOUNT=$s"; fi
  echo -n "load=$load round=$r spin=$s loadavg=$(cut -d' ' -f1 /proc/loadavg) "
  env $e "$PY" benchmarks/cpu_session13/spin_rates.py "$dtypes" 2>&1 | tail -1
done; done
[ -n "$pids" ] && kill $pids
