"""Session 11 probe (H200): int4 g128 (AWQ/GPTQ) matmuls at 32..256 rows on the Qwen2.5-7B shapes.

Today these rows take the dequantize-into-scratch + cuBLAS path (or the fused tiled GEMM on gate_up at <= 64 rows):
the scratch path writes and re-reads a dense bf16 W (0.5 + 2 + 2 bytes per weight), the fused GEMM unpacks each
weight once per row tile and has no split-K for the narrow layers. The decode kernel with one row tile for all rows
(``PackedConfig(wide=True)``) unpacks each weight once and splits K: does it win there? Per shape and M: bf16
cuBLAS, the table's path, and wide configs; each checked against ``reference_matmul`` before it is timed. (First
run, 04a9e49: x gathered with a stride of one word per value; second: x permuted to [M, PACK, KP] per call.)

python benchmarks/kernels/awq_wide_probe.py [--ms 32,64,128,256] [--deadline S]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import quant_kernels as qk  # noqa: E402
from pagedllm.kernels.quant import triton_packed as tp  # noqa: E402
from pagedllm.kernels.quant.packed import reference_matmul  # noqa: E402

WIDE = [(64, 128, 4, 3), (64, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (64, 64, 4, 4), (32, 128, 4, 3)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="32,64,128,256")
    ap.add_argument("--deadline", type=float, default=200.0)
    args = ap.parse_args()
    t_end = time.time() + args.deadline
    for m in (int(v) for v in args.ms.split(",")):
        for name, (n, k) in qk.SHAPES.items():
            if time.time() > t_end:
                return
            case = qk.Case(n, k, m, True, 4, 128)
            w0 = case.ws[0]
            ref = reference_matmul(case.x.float(), w0)
            bucket = tp._m_bucket(m)
            old = tp._TABLE.get((n, k, 4), {}).get(bucket) or tp._DEFAULTS[(bucket, 4)]
            row = dict(shape=name, m=m, old_cfg=list(old),
                       old=qk.time_case(case, lambda x, w, b: tp.packed_matmul_with_config(x, w, b, old)))
            res = []
            block_m = max(32, 1 << (m - 1).bit_length())
            for bn, bk, nw, st in WIDE:
                if time.time() > t_end:
                    break
                cfg = tp.PackedConfig(block_m, bn, bk, nw, st, wide=True)
                fn = (lambda x, w, b, cfg=cfg: tp.packed_matmul_with_config(x, w, b, cfg))
                try:
                    y = fn(case.x, w0, None)
                    err = ((y.double() - ref.double()).norm() / ref.double().norm()).item()
                    if not err < 1.2e-2:
                        raise AssertionError(f"{name} M={m} {tuple(cfg)}: relative error {err:.3g}")
                    res.append((qk.time_case(case, fn), [block_m, bn, bk, nw, st]))
                except AssertionError:
                    raise
                except Exception as e:  # noqa: BLE001 - a config over the shared memory / registers
                    print(f"  {name} M={m} {(bn, bk, nw, st)} failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
            res.sort()
            row["wide_best"] = res[:3]
            del case
            dense = qk.Case(n, k, m, False, 4, 128)
            row["bf16_cublas"] = qk.time_case(dense, lambda x, w, b: F.linear(x, w, b))
            del dense
            torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
