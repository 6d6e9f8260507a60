# Sourced by the session-9 device scripts (run from the repo root, carry [".whl", ".bench"]): the server wheels in
# /tmp/site, a `pagedllm` command for this tree in /tmp/bin_new, and $SUMM, a filter printing "TAG c=N tok/s ttft
# tpot itl-p99 start" from serve_sweep.py / serve_workload.py JSON lines prefixed with "TAG ".
[ -d /tmp/site/opentelemetry ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
# pydantic (a core dependency: LLM imports the tool-call checks since session 16) and the other wheels importable
# from every command, also those that set PYTHONPATH=$R alone: a .pth file appends /tmp/site to sys.path.
echo /tmp/site > "$(python3 -c 'import site; print(site.getsitepackages()[0])')/pagedllm_tmp_site.pth"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
R=$PWD
# ANCHORS.md's AWQ row: the quantization_config a dummy-weight 7B is given (ANCHOR_CFG="$AWQ").
AWQ='{"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}}'
mkdir -p /tmp/bin_new
printf '#!/bin/bash\nPYTHONPATH=%s:/tmp/site exec python3 -m pagedllm.entrypoints.cli "$@"\n' "$R" > /tmp/bin_new/pagedllm
chmod +x /tmp/bin_new/pagedllm
SUMM='
import sys, json
for l in sys.stdin:
    tag, j = l.split(" ", 1); d = json.loads(j)
    print(tag, "c=%d" % d["concurrency"], d["output_tok_s"], "ttft", d["ttft_ms"]["median"], "tpot", d["tpot_ms"]["median"], "itl p99", d["itl_ms"]["p99"], "start", d.get("startup_s"))'
# `... offline_workload.py ... | offline_summary TAG`: "TAG workload seconds tok/s" from its JSON lines.
offline_summary() {
  python3 -c "
import sys, json
for l in sys.stdin:
    if l.startswith('{'):
        d = json.loads(l); print(sys.argv[1], d['workload'], d['seconds'], d['output_tok_s'])" "$1"
}
# `m1_table_ab TABLE TAG ROUNDS`: AWQ 7B bs1 with the M1_TABLE block in TABLE (quant_kernels.py --save-m1-table)
# against the committed triton_packed.py, alternating, ROUNDS rounds (session 19).
m1_table_ab() {
  cp pagedllm/kernels/quant/triton_packed.py /tmp/triton_packed_committed.py
  for round in $(seq 1 "${3:-2}"); do
    python3 benchmarks/quant_kernels.py --apply-m1-table "$1"
    ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 60 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 2>&1 | offline_summary "awq $2 r$round"
    cp /tmp/triton_packed_committed.py pagedllm/kernels/quant/triton_packed.py
    ANCHOR_CFG="$AWQ" PYTHONPATH=$R timeout 60 python3 .bench/sb/offline_workload.py pagedllm qwen2.5-7b bs1_128_256 2>&1 | offline_summary "awq committed r$round"
  done
}
