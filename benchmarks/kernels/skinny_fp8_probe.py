"""Session 11 probe (H200): the skinny GEMM's dot path at 2 <= M <= 16 on the Qwen2.5-7B decode shapes.

Two questions, one run:

1. bf16: does zero-filling the x rows m >= M (``x_masked=True``: masked loads, no memory read) instead of re-reading
   row M - 1 for all of them close the gap session 10 found (x padded to 16 rows by a copy kernel ran faster at
   M = 2 than the kernel itself)? Per shape and M: cuBLAS, the tabled config with rows re-read / masked, padded.
2. FP8 (per-channel e4m3 weights, the FP8 latency run's decode at M = 8): the path the FP8 method takes today at
   M > 1 (per-token quantization kernel + ``torch._scaled_mm``) against the skinny GEMM with the fp8 weight
   converted in registers (weight-only) and with x quantized per token too (W8A8: fp8 x fp8 tensor-core dots),
   each over the candidate configs; the best per shape and M bucket, printed as a table for triton_gemv.py.

Every variant is checked against its fp32 reference before it is timed. Timing as bench_gemv.py (28 calls in a
CUDA graph over weight copies that defeat the L2).

3. (``--part sweep``) the W8A8 configs at M = 1 (against the fp8 weight-only FMA path that batch 1 takes) and
   the other M buckets; (``--part bigm``) M of --big-ms (row tiles of 32..128): fp8 ``_scaled_mm`` and bf16 cuBLAS
   against the same kernel with larger row tiles, over a few configs.

python benchmarks/kernels/skinny_fp8_probe.py [--part masked,fp8|sweep|bigm] [--ms 2,4,8,16] [--sweep-ms 2,8,16]
                                              [--deadline S] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import bench_gemv as bg  # noqa: E402
from pagedllm.kernels import triton_gemv as tg  # noqa: E402
from pagedllm.kernels.quant.fp8 import fp8_scaled_mm, per_channel_quantize, per_token_quant_fp8  # noqa: E402

SHAPES = {name: v for name, v in bg.SHAPES.items() if name.startswith("7B") and "lm_head" not in name}


class Fp8Case(bg.Case):
    """bench_gemv's Case with per-channel fp8 weight copies; ``bs[i]`` is (bias, weight scale)."""

    def __init__(self, n: int, k: int, bias: bool, m: int):
        super().__init__(n, k, bias, m)
        dense = self.ws
        self.copies = min(bg.CALLS, max(2, math.ceil(bg.L2_DEFEAT_BYTES / (n * k))))
        quant = [per_channel_quantize(dense[i % len(dense)]) for i in range(self.copies)]
        self.ws = [q for q, _ in quant]
        self.bs = [(self.bs[i % len(self.bs)], s.reshape(-1).float().contiguous()) for i, (_, s) in enumerate(quant)]
        del dense
        self.bytes = n * k + m * k * 2 + m * n * 2


def check(name, y, ref, tol):
    err = (y.float() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-6)
    if not err <= tol:
        raise AssertionError(f"{name}: relative error {err:.3g} > {tol}")


def scaled_mm_path(x, w, bs):
    qx, sx = per_token_quant_fp8(x)
    return fp8_scaled_mm(qx, sx, w, bs[1], bs[0], x.dtype)


def w_only(cfg, masked):
    return lambda x, w, bs: tg.skinny_linear_with_config(x, w, bs[0], cfg, weight_scale=bs[1], x_masked=masked)


def w8a8(cfg):
    def fn(x, w, bs):
        qx, sx = per_token_quant_fp8(x)
        return tg.skinny_linear_with_config(qx, w, bs[0], cfg, weight_scale=bs[1], x_scale=sx.reshape(-1),
                                            out_dtype=x.dtype)
    return fn


def best_of(case, cands, make, ref, label, t_end):
    res = []
    for c in cands:
        if time.time() > t_end:
            break
        fn = make(c)
        try:
            check(f"{label} {tuple(c)}", fn(case.x, case.ws[0], case.bs[0]), ref, 2e-2)
            res.append((bg.graph_time_us(case, fn), list(c)))
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - a config over the shared memory
            print(f"  {label} {tuple(c)} failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
    res.sort()
    return res[:3]


def fp8_refs(case):
    b0, s0 = case.bs[0]
    wdq = case.ws[0].float() * s0[:, None]
    bf = None if b0 is None else b0.float()
    qx, sx = per_token_quant_fp8(case.x)
    return F.linear(case.x.float(), wdq, bf), F.linear(qx.float() * sx, wdq, bf)


def sweep(args, emit, t_end):
    """W8A8 over every candidate at each M of --ms; at M = 1 also the weight-only FMA path of batch 1."""
    for m in (int(v) for v in args.ms.split(",")):
        for name, (n, k, bias) in SHAPES.items():
            case = Fp8Case(n, k, bias, m)
            ref_w, ref_w8a8 = fp8_refs(case)
            row = dict(kind="w8a8_sweep", shape=name, m=m)
            if m == 1:
                cfg1 = tg.get_config(1, n, k)
                check(f"w_only M=1 {name}", w_only(cfg1, False)(case.x, case.ws[0], case.bs[0]), ref_w, 2e-2)
                row["w_only_m1_table"] = bg.graph_time_us(case, w_only(cfg1, False), reps=3)
            row["w8a8_best"] = best_of(case, bg.sweep_configs(16, n), w8a8, ref_w8a8, f"w8a8 {name} M={m}", t_end)
            emit(**row)
            del case
            torch.cuda.empty_cache()


BIG_CANDIDATES = [tg.GemvConfig(64, 128, 4, 3), tg.GemvConfig(64, 128, 4, 4), tg.GemvConfig(128, 128, 8, 3),
                  tg.GemvConfig(64, 256, 4, 3), tg.GemvConfig(64, 256, 4, 5, True, 2), tg.GemvConfig(64, 256, 4, 4, True, 2)]


def bigm(args, emit, t_end):
    """M = 32, 64, 128: fp8 (quantization + _scaled_mm vs W8A8 with row tiles of M) and bf16 (cuBLAS vs the dot
    path)."""
    for m in (int(v) for v in args.big_ms.split(",")):
        for name, (n, k, bias) in SHAPES.items():
            if time.time() > t_end:
                return
            case = Fp8Case(n, k, bias, m)
            _, ref_w8a8 = fp8_refs(case)
            row = dict(kind="bigm_fp8", shape=name, m=m, scaled_mm=bg.graph_time_us(case, scaled_mm_path, reps=3))
            row["w8a8_best"] = best_of(case, BIG_CANDIDATES, w8a8, ref_w8a8, f"w8a8 {name} M={m}", t_end)
            emit(**row)
            del case
            if args.no_bf16:
                continue
            case = bg.Case(n, k, bias, m)
            ref = F.linear(case.x.float(), case.ws[0].float(), None if case.bs[0] is None else case.bs[0].float())
            row = dict(kind="bigm_bf16", shape=name, m=m, cublas=bg.graph_time_us(case, bg.cublas, reps=3))
            row["dot_best"] = best_of(case, BIG_CANDIDATES, bg.with_cfg, ref, f"bf16 {name} M={m}", t_end)
            emit(**row)
            del case
            torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="2,4,8,16")
    ap.add_argument("--sweep-ms", default="2,8,16")
    ap.add_argument("--deadline", type=float, default=400.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--part", default="masked,fp8")
    ap.add_argument("--big-ms", default="32,64")
    ap.add_argument("--no-bf16", action="store_true", help="bigm: the fp8 rows only")
    args = ap.parse_args()
    parts = set(args.part.split(","))
    t_end = time.time() + args.deadline
    rows = []

    def emit(**row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    # 1. bf16: rows re-read vs masked.
    for name, (n, k, bias) in (SHAPES.items() if "masked" in parts else ()):
        for m in (int(v) for v in args.ms.split(",")):
            case = bg.Case(n, k, bias, m)
            cfg = tg.get_config(m, n, k)
            ref = F.linear(case.x.float(), case.ws[0].float(), None if case.bs[0] is None else case.bs[0].float())
            for masked in (False, True):
                check(f"bf16 {name} M={m} masked={masked}",
                      tg.skinny_linear_with_config(case.x, case.ws[0], case.bs[0], cfg, x_masked=masked), ref, 2e-2)
            pad = torch.zeros(16, k, dtype=case.x.dtype, device="cuda")

            def padded(x, w, b, cfg=cfg, m=m, pad=pad):
                pad[:m].copy_(x)
                return tg.skinny_linear_with_config(pad, w, b, cfg, x_masked=False)
            emit(kind="bf16", shape=name, m=m, cfg=list(cfg), cublas=bg.graph_time_us(case, bg.cublas, reps=3),
                 reread=bg.graph_time_us(case, lambda x, w, b: tg.skinny_linear_with_config(x, w, b, cfg,
                                                                                            x_masked=False), reps=3),
                 masked=bg.graph_time_us(case, lambda x, w, b: tg.skinny_linear_with_config(x, w, b, cfg,
                                                                                            x_masked=True), reps=3),
                 padded=bg.graph_time_us(case, padded, reps=3))
            del case
            torch.cuda.empty_cache()

    # 2. FP8 weights.
    sweep_ms = {int(v) for v in args.sweep_ms.split(",")}
    for name, (n, k, bias) in (SHAPES.items() if "fp8" in parts else ()):
        for m in (int(v) for v in args.ms.split(",")):
            case = Fp8Case(n, k, bias, m)
            b0, s0 = case.bs[0]
            wdq = case.ws[0].float() * s0[:, None]
            bf = None if b0 is None else b0.float()
            ref_w = F.linear(case.x.float(), wdq, bf)
            qx, sx = per_token_quant_fp8(case.x)
            ref_w8a8 = F.linear(qx.float() * sx, wdq, bf)
            check(f"scaled_mm {name} M={m}", scaled_mm_path(case.x, case.ws[0], case.bs[0]), ref_w8a8, 2e-2)
            row = dict(kind="fp8", shape=name, m=m, scaled_mm=bg.graph_time_us(case, scaled_mm_path, reps=3))
            cfg = tg.get_config(m, n, k)
            cands = [cfg] + ([c for c in bg.sweep_configs(16, n) if c != cfg] if m in sweep_ms else [])
            results = {"w_only": [], "w8a8": []}
            for c in cands:
                if time.time() > t_end:
                    break
                for label, fn, ref in (("w_only", w_only(c, True), ref_w), ("w8a8", w8a8(c), ref_w8a8)):
                    try:
                        check(f"{label} {name} M={m} {tuple(c)}", fn(case.x, case.ws[0], case.bs[0]), ref, 2e-2)
                        results[label].append((bg.graph_time_us(case, fn), list(c)))
                    except AssertionError:
                        raise
                    except Exception as e:  # noqa: BLE001 - a config over the shared memory
                        print(f"  {label} {tuple(c)} failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
            row["w_only_reread_table"] = bg.graph_time_us(case, w_only(cfg, False), reps=3)
            for label, res in results.items():
                res.sort()
                row[label + "_table"] = next((t for t, c in res if c == list(cfg)), None)
                row[label + "_best"] = res[:3]
            emit(**row)
            del case
            torch.cuda.empty_cache()
    if "bigm" in parts:
        bigm(args, emit, t_end)
    if "sweep" in parts:
        sweep(args, emit, t_end)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
