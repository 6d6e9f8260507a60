"""Probe: triton_packed's dequantize + cuBLAS path with the dense W a column slab at a time (SCRATCH_SLAB_BYTES)
against the whole W at once and bf16 F.linear, Qwen2.5-7B shapes, int4 g128 with zero points, bf16 x.

Why: the whole-W path writes the dense bf16 W (7B gate_up: 271 MB) to HBM and cuBLAS reads it back, ~4.6x the int4
read. A slab of a few MB dequantized into the same buffer each time should stay in L2 (overwritten there, not
written back), so HBM sees the int4 words, x and y; each slab's GEMM is narrower (fewer tiles) and re-reads x.
Timed as awq_fused_probe.py does (bench_gemv.graph_time_us: 28 calls in one CUDA graph over weight copies, µs a
call); each slab size is first checked against the whole-W result.

Usage (GPU): PYTHONPATH=$PWD python3 benchmarks/kernels/slab_probe.py --deadline 120
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from awq_fused_probe import DT, SHAPES, Case, Weights  # noqa: E402
from bench_gemv import graph_time_us  # noqa: E402

from pagedllm.kernels.quant import triton_packed as tp  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deadline", type=float, default=120.0, help="seconds; no new timing starts after it")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--ms", default="512,256,1024,2048")
    ap.add_argument("--slab-mb", default="8,16,32", help="slab sizes to time, MB")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    t_end = time.time() + args.deadline
    slabs = [int(float(s) * (1 << 20)) for s in args.slab_mb.split(",")]
    cols = ["bf16", "whole"] + [f"slab{s >> 20}MB" for s in slabs]
    print(f"{'shape':8} {'M':>5} " + " ".join(f"{c:>10}" for c in cols) + "   best slab vs whole, vs bf16")
    weights = {name: Weights(*SHAPES[name]) for name in args.shapes.split(",")}
    for m in [int(v) for v in args.ms.split(",")]:
        for name, wts in weights.items():
            if time.time() > t_end:
                print("deadline reached")
                return
            n, k = SHAPES[name]
            x = torch.randn(m, k, device="cuda", dtype=DT, generator=torch.Generator(device="cuda").manual_seed(m))
            packed, dense = Case(wts.packed, x), Case(wts.dense, x)
            row = {"bf16": graph_time_us(dense, lambda x, w, b: F.linear(x, w, b), target_ms=10)}
            tp.SCRATCH_SLAB_BYTES = 0
            ref = tp.packed_matmul_with_config(x, wts.packed[0], None, tp._DQ)
            row["whole"] = graph_time_us(packed, lambda x, w, b: tp.packed_matmul_with_config(x, w, b, tp._DQ),
                                         target_ms=10)
            for size in slabs:
                tp.SCRATCH_SLAB_BYTES = size
                got = tp.packed_matmul_with_config(x, wts.packed[0], None, tp._DQ)
                err = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
                key = f"slab{size >> 20}MB"
                if err > 1e-2:
                    print(f"{name} M={m} {key}: relative error {err:.2e} against the whole-W path; not timed")
                    row[key] = float("nan")
                    continue
                row[key] = graph_time_us(packed, lambda x, w, b: tp.packed_matmul_with_config(x, w, b, tp._DQ),
                                         target_ms=10)
            tp.SCRATCH_SLAB_BYTES = 0
            best = min(row[c] for c in cols[2:])
            print(f"{name:8} {m:5d} " + " ".join(f"{row[c]:10.1f}" for c in cols)
                  + f"   {row['whole'] / best:.2f}x {row['bf16'] / best:.2f}x", flush=True)


if __name__ == "__main__":
    main()
