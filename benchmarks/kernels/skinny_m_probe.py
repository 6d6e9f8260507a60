"""Why the skinny GEMM's tensor-core path is slower at M = 2..8 than at M = 16 on the 7B decode shapes (H200,
session 10: gate_up 73.2 / 67.7 / 64.5 µs at M = 2 / 8 / 16), and which config wins at each M.

Per shape and M: cuBLAS; the tabled config; the same config with x zero-padded to 16 rows (the kernel then sees
M = 16: if that is faster, the cost is in how the kernel treats M < 16, not in the work); the tabled config without PDL
(launch_pdl: the next call's programs start and wait while this one runs); every CANDIDATES_M16 config without PDL. Timing as bench_gemv.py (28 calls in a CUDA graph over weight copies that defeat the L2).

python benchmarks/kernels/skinny_m_probe.py [--ms 2,4,8,16]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import bench_gemv as bg  # noqa: E402
from pagedllm.kernels import settings  # noqa: E402
from pagedllm.kernels import triton_gemv as tg  # noqa: E402


def no_pdl(fn):
    """``fn`` launched without programmatic dependent launch (each call waits for the previous one to finish)."""
    def call(x, w, b):
        settings.configure(settings.KernelSettings(pdl=False))
        try:
            return fn(x, w, b)
        finally:
            settings.configure(settings.KernelSettings())
    return call


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="2,4,8,16")
    args = ap.parse_args()
    for name, (n, k, bias) in bg.SHAPES.items():
        if not name.startswith("7B") or "lm_head" in name:
            continue
        for m in (int(v) for v in args.ms.split(",")):
            case = bg.Case(n, k, bias, m)
            cfg = tg.get_config(m, n, k)
            t_cb = bg.graph_time_us(case, bg.cublas, reps=3)
            t_tab = bg.graph_time_us(case, bg.with_cfg(cfg), reps=3)
            pad = torch.zeros(16, k, dtype=case.x.dtype, device="cuda")

            def padded(x, w, b, cfg=cfg):
                pad[:m].copy_(x)
                return tg.skinny_linear_with_config(pad, w, b, cfg)
            t_pad = bg.graph_time_us(case, padded, reps=3)
            t_nopdl = bg.graph_time_us(case, no_pdl(bg.with_cfg(cfg)), reps=3)
            best = []
            for c in bg.sweep_configs(16, n):
                try:
                    best.append((bg.graph_time_us(case, no_pdl(bg.with_cfg(c))), tuple(c)))
                except Exception as e:  # noqa: BLE001 - a config over the shared memory
                    print(f"  {tuple(c)} failed: {type(e).__name__}", flush=True)
            best.sort()
            print(f"{name:<12} M={m:<2} cuBLAS {t_cb:7.2f} | table {t_tab:7.2f} {tuple(cfg)} | x padded to 16 "
                  f"{t_pad:7.2f} (incl. copy) | no PDL {t_nopdl:7.2f} | best " + "  ".join(f"{c}={t:.2f}" for t, c in best[:3]), flush=True)
            del case
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
