"""How many decode steps of each row count an offline workload makes, from the workload alone (no engine, no GPU).

Offline, the GPU engine admits every prompt of ``.bench/sb/workloads.py``'s workloads at once (max_num_seqs 1024 is
above their request counts, and their KV never forces a preemption on an H100 / H200), and every request decodes its
fixed output length. So after the prefill steps, the step that makes each request's t-th output token has as many
rows as there are requests with more than t output tokens (the first token comes from the prefill step, and early
decode steps share a step with prefill chunks: counts within a step or so of the engine's). Row bands as
triton_packed routes int4 matmuls.

    python benchmarks/step_mix.py sharegpt_like_1000 [--bench-dir .bench/sb]
"""
from __future__ import annotations

import argparse
import os
import sys

BANDS = [(1, 1), (2, 16), (17, 32), (33, 64), (65, 128), (129, 256), (257, 512), (513, 1024)]


def step_rows(out_lens: list[int]) -> list[int]:
    """Rows of each decode step: step t has the requests whose output is longer than t tokens."""
    return [sum(1 for o in out_lens if o > t) for t in range(max(out_lens))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload")
    ap.add_argument("--bench-dir", default=".bench/sb", help="where workloads.py is (../shared/bench copied)")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.bench_dir))
    from workloads import WORKLOADS
    reqs = WORKLOADS[args.workload]()
    rows = step_rows([out for _, out in reqs])
    print(f"{args.workload}: {len(reqs)} requests, {sum(len(p) for p, _ in reqs)} prompt tokens, "
          f"{sum(out for _, out in reqs)} output tokens, {len(rows)} decode steps")
    print("| decode rows | steps | rows in all |\n|---|---|---|")
    for lo, hi in BANDS:
        band = [r for r in rows if lo <= r <= hi]
        if band:
            print(f"| {lo}..{hi} | {len(band)} | {sum(band)} |")


if __name__ == "__main__":
    main()
