"""Micro-benchmark of the skinny-GEMM Triton kernel (pagedllm.kernels.triton_gemv) against cuBLAS (F.linear).

Shapes: the decode linear layers of Qwen2.5-1.5B and -7B (qkv with bias, o, gate_up, down, LM head), bf16,
M (decode batch) in {1, 4, 16}.

Timing as the engine runs decode: ``CALLS`` calls (28 = one per layer) captured in one CUDA graph, each on its own
copy of the weight (cycling over enough copies that the weights in flight are several times the L2, so every call
reads its weight from HBM), graph replayed and timed with CUDA events; µs per call = graph time / CALLS (launch
gaps between kernels count, as they do in the engine). Achieved bandwidth = (W + x + y + bias bytes) / time, as a %
of 4.27 TB/s (the device-to-device copy rate measured on an H200).

``--sweep`` first times every candidate config of the kernel (triton_gemv.CANDIDATES_*) on each shape at M = 1 and
16, prints the best as a ``_TABLE`` for triton_gemv.py and uses them for the table. Results go to ``--out`` (JSON +
text).

Usage: python benchmarks/kernels/bench_gemv.py [--sweep] [--deadline S] [--out DIR] [--ms 1,2,4,8] [--shapes 7B]
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

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from pagedllm.kernels import triton_gemv as tg  # noqa: E402

DT = torch.bfloat16
PEAK = 4.27e12
CALLS = 28
L2_DEFEAT_BYTES = 256 << 20

# name -> (N, K, bias)
SHAPES = {
    "1.5B qkv": (2048, 1536, True),
    "1.5B o": (1536, 1536, False),
    "1.5B gate_up": (17920, 1536, False),
    "1.5B down": (1536, 8960, False),
    "1.5B lm_head": (151936, 1536, False),
    "7B qkv": (4608, 3584, True),
    "7B o": (3584, 3584, False),
    "7B gate_up": (37888, 3584, False),
    "7B down": (3584, 18944, False),
    "7B lm_head": (152064, 3584, False),
}


def sweep_configs(m: int, n: int) -> list[tg.GemvConfig]:
    cfgs = tg.CANDIDATES_M1 if m == 1 else tg.CANDIDATES_M16
    if n > 8192:        # enough row tiles to fill the GPU: no split-K
        cfgs = [c for c in cfgs if c.split_k == 1]
    return cfgs


class Case:
    """Weights (several copies), bias, input of one shape and M."""

    def __init__(self, n: int, k: int, bias: bool, m: int):
        size = n * k * 2
        self.copies = min(CALLS, max(2, math.ceil(L2_DEFEAT_BYTES / size)))
        g = torch.Generator(device="cuda").manual_seed(n + k)
        self.ws = [torch.randn(n, k, device="cuda", dtype=DT, generator=g) * k ** -0.5 for _ in range(self.copies)]
        self.bs = ([torch.randn(n, device="cuda", dtype=DT, generator=g) for _ in range(self.copies)]
                   if bias else [None] * self.copies)
        self.x = torch.randn(m, k, device="cuda", dtype=DT, generator=g)
        self.bytes = size + (n * 2 if bias else 0) + m * k * 2 + m * n * 2
        self.m, self.n, self.k = m, n, k


def graph_time_us(case: Case, fn, target_ms: float = 20.0, reps: int = 1) -> float:
    """µs per call of ``fn(x, w, b)`` inside a CUDA graph of CALLS calls cycling over the weight copies."""
    x = case.x
    for i in range(case.copies):       # warm-up outside capture: compiles Triton, loads modules, cuBLAS handles
        fn(x, case.ws[i], case.bs[i])
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(x, case.ws[0], case.bs[0])
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = [fn(x, case.ws[i % case.copies], case.bs[i % case.copies]) for i in range(CALLS)]
    del outs
    g.replay()
    g.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    g.replay()
    torch.cuda.synchronize()
    one = (time.perf_counter() - t0) * 1e3
    n = int(max(3, min(200, target_ms / max(one, 1e-3))))
    results = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            g.replay()
        end.record()
        end.synchronize()
        results.append(start.elapsed_time(end) * 1e3 / (n * CALLS))
    del g
    return sorted(results)[len(results) // 2]


def cublas(x, w, b):
    return F.linear(x, w, b)


def ours(x, w, b):
    y = tg.skinny_linear(x, w, b)
    assert y is not None
    return y


def with_cfg(cfg):
    return lambda x, w, b: tg.skinny_linear_with_config(x, w, b, cfg)


def copy_bandwidth() -> float:
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        b.copy_(a)
    end.record()
    end.synchronize()
    bw = 2 * n * 20 / (start.elapsed_time(end) * 1e-3)
    del a, b
    return bw


def pct(case: Case, us: float) -> float:
    return 100.0 * case.bytes / (us * 1e-6) / PEAK


def run_table(out_dir: str | None, ms=(1, 4, 16)) -> list[dict]:
    rows = []
    hdr = f"{'shape':<14}{'N':>7}{'K':>7}{'M':>4} | {'cuBLAS us':>10}{'%BW':>6} | {'triton us':>10}{'%BW':>6} | " \
          f"{'speedup':>7}  config"
    print(hdr)
    print("-" * len(hdr))
    lines = [hdr]
    for name, (n, k, bias) in SHAPES.items():
        for m in ms:
            case = Case(n, k, bias, m)
            t_cb = graph_time_us(case, cublas, target_ms=60, reps=3)
            t_tr = graph_time_us(case, ours, target_ms=60, reps=3)
            cfg = tg.get_config(m, n, k)
            row = dict(shape=name, n=n, k=k, m=m, bias=bias, cublas_us=t_cb, triton_us=t_tr,
                       cublas_pct=pct(case, t_cb), triton_pct=pct(case, t_tr), config=list(cfg))
            rows.append(row)
            line = (f"{name:<14}{n:>7}{k:>7}{m:>4} | {t_cb:>10.2f}{row['cublas_pct']:>6.1f} | {t_tr:>10.2f}"
                    f"{row['triton_pct']:>6.1f} | {t_cb / t_tr:>7.2f}x  {tuple(cfg)}")
            print(line, flush=True)
            lines.append(line)
            del case
            torch.cuda.empty_cache()
    if out_dir:
        with open(os.path.join(out_dir, "table.json"), "w") as f:
            json.dump(rows, f, indent=1)
        with open(os.path.join(out_dir, "table.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return rows


def run_sweep(out_dir: str | None, deadline: float, ms=(1, 16)) -> dict:
    """Times every candidate config per shape and M; returns {(n, k): {bucket: (config, us)}} of the best."""
    t_end = time.time() + deadline
    res: dict = {}
    best: dict = {}
    path = os.path.join(out_dir, "sweep.json") if out_dir else None
    for name, (n, k, bias) in SHAPES.items():
        for m in ms:
            if time.time() > t_end:
                print(f"sweep: deadline reached before {name} M={m}", flush=True)
                return best
            case = Case(n, k, bias, m)
            t_cb = graph_time_us(case, cublas)
            entry = {"cublas": t_cb, "configs": {}}
            for cfg in sweep_configs(m, n):
                try:
                    t = graph_time_us(case, with_cfg(cfg))
                except Exception as e:  # noqa: BLE001 - e.g. out of shared memory: skip the config
                    print(f"  {name} M={m} {tuple(cfg)} failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
                    continue
                entry["configs"][str(tuple(cfg))] = t
                best_cfg = best.setdefault((n, k), {}).get(tg._m_bucket(m))
                if best_cfg is None or t < best_cfg[1]:
                    best[(n, k)][tg._m_bucket(m)] = (cfg, t)
            if entry["configs"]:
                top = sorted(entry["configs"].items(), key=lambda kv: kv[1])[:5]
                b_t = top[0][1]
                print(f"{name:<14} M={m:<2} cuBLAS {t_cb:8.2f} us ({pct(case, t_cb):5.1f}%) | best {b_t:8.2f} us "
                      f"({pct(case, b_t):5.1f}%) " + "  ".join(f"{c.replace(' ', '')}={t:.2f}" for c, t in top),
                      flush=True)
            res[f"{name}|{m}"] = entry
            if path:
                with open(path, "w") as f:
                    json.dump(res, f, indent=1)
            del case
            torch.cuda.empty_cache()
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--no-table", action="store_true")
    ap.add_argument("--deadline", type=float, default=150.0, help="seconds for the sweep")
    ap.add_argument("--out", default=None)
    ap.add_argument("--ms", default="1,4,16", help="decode batch sizes of the table, comma-separated")
    ap.add_argument("--shapes", default="", help="only the shapes whose name starts with this (e.g. '7B')")
    args = ap.parse_args()
    if args.shapes:
        for name in [n for n in SHAPES if not n.startswith(args.shapes)]:
            del SHAPES[name]
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    print(f"device: {torch.cuda.get_device_name()}, copy bandwidth {copy_bandwidth() / 1e12:.2f} TB/s "
          f"(reporting % of {PEAK / 1e12:.2f})", flush=True)
    if args.sweep:
        best = run_sweep(args.out, args.deadline)
        # Table with the best measured configs (what goes into triton_gemv._TABLE).
        for key, per_m in best.items():
            for bucket, (cfg, _) in per_m.items():
                tg._TABLE.setdefault(key, {})[bucket] = cfg
        lines = ["_TABLE = {"] + [f"    {key}: {{" + ", ".join(f"{bk}: {cfg}" for bk, cfg in sorted(per.items()))
                                  + "}," for key, per in tg._TABLE.items()] + ["}"]
        print("\n".join(lines), flush=True)
        if args.out:
            with open(os.path.join(args.out, "table_py.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
    if not args.no_table:
        run_table(args.out, ms=tuple(int(m) for m in args.ms.split(",")))


if __name__ == "__main__":
    main()
