"""Probe: the fused int4 matmul for 2..256 rows (triton_packed_wide) against the dequantize + cuBLAS scratch path,
what the committed routing runs ("routed": at 2..16 rows WIDE_DECODE's config, the decode kernel with
--decode-kernel-routed) and bf16 F.linear, Qwen2.5-7B shapes (and others: --shapes), int4 g128 with zero points, bf16 x.

For each shape and M (--ms; by default {24, 32, 48, 64, 96, 128, 192, 256}; 2..16 takes the 16-row tiles): every
``triton_packed_wide.CANDIDATES`` config of the M's row bucket is first checked against ``reference_matmul`` (a
failing or non-compiling one is reported once and skipped), then timed as benchmarks/kernels/bench_gemv.py's
``graph_time_us`` does: 28 calls in one CUDA graph over distinct weight copies (every call reads its weight from HBM),
µs per call. Prints one table (µs) and the best config per (shape, M). Stops starting new timings at ``--deadline``
seconds; the most informative M values go first.

Usage (GPU): PYTHONPATH=$PWD python3 benchmarks/kernels/awq_fused_probe.py --deadline 200
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from bench_gemv import CALLS, graph_time_us  # noqa: E402

from pagedllm.kernels.quant import triton_packed as tp  # noqa: E402
from pagedllm.kernels.quant import triton_packed_wide as tw  # noqa: E402
from pagedllm.kernels.quant.packed import PackedWeight, pack_along_k, reference_matmul  # noqa: E402

DT = torch.bfloat16
GROUP = 128
L2_DEFEAT_BYTES = 256 << 20
SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}
DEFAULT_SHAPES = list(SHAPES)
# Shapes outside triton_packed._TABLE (its UNTABLED_WIDE routing): Llama-3-8B, Qwen2.5-1.5B, Qwen2.5-7B's TP=2 shards.
SHAPES.update({
    "l8_qkv": (6144, 4096), "l8_o": (4096, 4096), "l8_gate_up": (28672, 4096), "l8_down": (4096, 14336),
    "q1.5_qkv": (2048, 1536), "q1.5_o": (1536, 1536), "q1.5_gate_up": (17920, 1536), "q1.5_down": (1536, 8960),
    "tp2_qkv": (2304, 3584), "tp2_o": (3584, 1792), "tp2_gate_up": (18944, 3584), "tp2_down": (3584, 9472)})
MS = [64, 256, 32, 128, 24, 48, 96, 192]          # timing order: the most informative first
_CONFIGS: dict[str, tw.PackedWideConfig] = {}     # a timed config by its column name in the results


def candidates(m: int, untabled_only: bool) -> list[tw.PackedWideConfig]:
    """The configs timed at M rows: every candidate of its row bucket, or (--untabled-only) the config
    triton_packed routes there with UNTABLED_WIDE (17..64 rows) or WIDE_DECODE (2..16) on."""
    if untabled_only:
        return [tp._UNTABLED.get(tw.row_bucket(m), tp._WIDE_DECODE_CFG)]
    return tw.CANDIDATES[tw.row_bucket(m)]


def _warmup(job: tuple) -> bool:
    """Compile one launch of the wide kernel into Triton's on-disk cache (a spawned worker; nothing launched)."""
    m, n, k, cfg, masked = job
    try:
        warnings.filterwarnings("ignore")
        tw.MASK_PARTIAL_ROWS = masked
        from pagedllm.kernels.pdl import pdl_launch_args
        dev = torch.device("cuda")
        plan = tw.make_plan(m, n, k, 4, GROUP, False, torch.cuda.get_device_properties(0).multi_processor_count, cfg)
        one = lambda dt: torch.empty(16, dtype=dt, device=dev)  # noqa: E731 - only the dtypes matter
        args = (one(DT), one(torch.int32), one(DT), one(DT), one(DT), one(DT), one(torch.float32), one(torch.int32),
                m, n, k, plan.k_per_split, k, n)
        tw._packed_wide_kernel.warmup(*args, grid=plan.grid, **plan.constexprs, **pdl_launch_args(dev))
        return True
    except Exception:  # noqa: BLE001 - the timed loop compiles (and reports) it again
        return False


def precompile(shapes: list[str], ms: list[int], t_end: float, untabled_only: bool) -> None:
    """Every launch the probe will time, compiled on all cores first (serial compiles would eat the deadline)."""
    jobs = [(m, *SHAPES[name], cfg, tw.MASK_PARTIAL_ROWS) for m in ms for name in shapes
            for cfg in candidates(m, untabled_only)]
    workers = max(1, min(len(jobs), (os.cpu_count() or 2) - 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = [ex.submit(_warmup, j) for j in jobs]
        for f in futures:
            try:
                f.result(timeout=max(1.0, t_end - time.time()))
            except Exception:  # noqa: BLE001 - out of time or a dead worker: compile in the loop instead
                break
        ex.shutdown(wait=False, cancel_futures=True)


class Weights:
    """Packed and dense copies of one shape (enough that the weights in flight defeat the L2)."""

    def __init__(self, n: int, k: int):
        g = torch.Generator(device="cuda").manual_seed(n + k)
        groups = k // GROUP
        self.copies = min(CALLS, max(2, math.ceil(L2_DEFEAT_BYTES / (n * k // 2))))
        self.packed = []
        for _ in range(self.copies):
            q = torch.randint(0, 16, (k, n), device="cuda", generator=g)
            scales = (torch.rand(groups, n, device="cuda", generator=g) + 0.5) * (2.0 / 16) / k ** 0.5
            zeros = torch.randint(0, 16, (groups, n), device="cuda", generator=g).float()
            self.packed.append(PackedWeight(pack_along_k(q, 4), scales.to(DT), (-zeros * scales).to(DT), 4, GROUP))
            del q
        dense_copies = min(CALLS, max(2, math.ceil(L2_DEFEAT_BYTES / (n * k * 2))))
        self.dense = [torch.randn(n, k, device="cuda", dtype=DT, generator=g) * k ** -0.5
                      for _ in range(dense_copies)]


class Case:
    """The interface graph_time_us reads: ``x``, ``ws``, ``bs``, ``copies``."""

    def __init__(self, ws: list, x: torch.Tensor):
        self.ws, self.x, self.copies, self.bs = ws, x, len(ws), [None] * len(ws)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deadline", type=float, default=200.0, help="seconds; no new timing starts after it")
    ap.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help=f"among {', '.join(SHAPES)}")
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--save-table", metavar="FILE",
                    help="write, per shape and row bucket, the fastest of scratch and the wide configs timed at "
                         "every M of the bucket (least total µs) as JSON for route_ab.py's awq-table variant")
    ap.add_argument("--untabled-only", action="store_true",
                    help="time only triton_packed's UNTABLED_WIDE config of each row bucket (against scratch and "
                         "bf16), not every candidate")
    ap.add_argument("--mask-partial-rows", action="store_true",
                    help="triton_packed_wide.MASK_PARTIAL_ROWS: x rows past M masked in partial row tiles")
    ap.add_argument("--decode-kernel-routed", action="store_true",
                    help="triton_packed.WIDE_DECODE off: the 'routed' column at 2..16 rows is the decode kernel, "
                         "so the 16-row candidates are timed against it (a per-shape WIDE_DECODE exception)")
    args = ap.parse_args()
    tw.MASK_PARTIAL_ROWS = args.mask_partial_rows
    if args.decode_kernel_routed:
        tp.WIDE_DECODE = False
    warnings.filterwarnings("ignore")
    t_end = time.time() + args.deadline
    shapes = args.shapes.split(",")
    ms = [int(m) for m in args.ms.split(",")]
    results: dict[tuple[str, int], dict[str, float]] = {}
    best: dict[tuple[str, int], tuple[tw.PackedWideConfig, float]] = {}
    failures: list[str] = []
    bad: set = set()
    out_of_time = False
    t0 = time.time()
    precompile(shapes, ms, t0 + 0.4 * args.deadline, args.untabled_only)
    t_compiled = time.time() - t0
    weights = {name: Weights(*SHAPES[name]) for name in shapes}
    for m in ms:
        for name in shapes:
            n, k = SHAPES[name]
            wts = weights[name]
            dense_ref = wts.packed[0]
            if time.time() > t_end:
                out_of_time = True
                break
            g = torch.Generator(device="cuda").manual_seed(m)
            x = torch.randn(m, k, device="cuda", dtype=DT, generator=g)
            row = results.setdefault((name, m), {})
            packed_case, dense_case = Case(wts.packed, x), Case(wts.dense, x)
            row["bf16"] = graph_time_us(dense_case, lambda x, w, b: F.linear(x, w, b), target_ms=10)
            row["scratch"] = graph_time_us(
                packed_case, lambda x, w, b: tp.packed_matmul_with_config(x, w, b, tp._DQ), target_ms=10)
            # what the committed routing runs at M (at 2..16 rows: WIDE_DECODE's config, else the decode kernel)
            row["routed"] = graph_time_us(packed_case, lambda x, w, b: tp.packed_matmul(x, w, b), target_ms=10)
            ref = reference_matmul(x.float(), dense_ref).float()
            for cfg in candidates(m, args.untabled_only):
                if time.time() > t_end:
                    out_of_time = True
                    break
                try:
                    y = tp.packed_matmul_with_config(x, dense_ref, None, cfg).float()
                    err = ((y - ref).norm() / ref.norm()).item()
                    if not err < 1.2e-2:
                        raise AssertionError(f"relative error {err:.2e}")
                    t = graph_time_us(packed_case,
                                      lambda x, w, b, cfg=cfg: tp.packed_matmul_with_config(x, w, b, cfg),
                                      target_ms=10)
                except Exception as e:  # noqa: BLE001 - report and skip the config
                    if (cfg, type(e).__name__) not in bad:
                        bad.add((cfg, type(e).__name__))
                        failures.append(f"{name} M={m} {tuple(cfg)}: {type(e).__name__}: {str(e)[:150]}")
                    continue
                row[str(tuple(cfg))] = t
                _CONFIGS[str(tuple(cfg))] = cfg
                if (name, m) not in best or t < best[(name, m)][1]:
                    best[(name, m)] = (cfg, t)

    print(f"µs per call (CUDA graph of {CALLS} calls, weights from HBM), int4 g{GROUP} zero points, bf16 x; "
          f"configs: {tw.PackedWideConfig._fields}; parallel precompile {t_compiled:.0f} s")
    print(f"{'shape':<8}{'M':>5} {'bf16':>8} {'scratch':>8} {'routed':>8} {'best wide':>10} {'vs scratch':>10} "
          f"{'vs routed':>9} {'vs bf16':>8}  best config")
    for (name, m), row in results.items():
        b = best.get((name, m))
        bt = (f"{b[1]:10.2f} {row['scratch'] / b[1]:9.2f}x {row['routed'] / b[1]:8.2f}x {row['bf16'] / b[1]:7.2f}x  "
              f"{tuple(b[0])}") if b else f"{'-':>10}"
        print(f"{name:<8}{m:>5} {row['bf16']:8.2f} {row['scratch']:8.2f} {row['routed']:8.2f} {bt}")
    print("\nevery candidate (µs):")
    for (name, m), row in results.items():
        cands = sorted((t, c) for c, t in row.items() if c not in ("bf16", "scratch", "routed"))
        print(f"{name:<8}{m:>5}: " + "; ".join(f"{c} {t:.2f}" for t, c in cands))
    if failures:
        print("\nfailed (skipped):")
        for f in failures:
            print("  " + f)
    if out_of_time:
        print(f"\ndeadline ({args.deadline:.0f} s) reached: the rows above are all that was timed")
    if args.save_table:
        save_table(results, args.save_table)


def save_table(results: dict, path: str) -> None:
    """{"N,K": {bucket: config fields or "scratch"}}: per shape and row bucket, the option with the least total µs
    over the bucket's timed M values, among those timed at all of them."""
    import json
    table: dict[str, dict[str, object]] = {}
    for name, (n, k) in SHAPES.items():
        for bucket in (16, 32, 64, 128, 256):
            rows = [row for (shape, m), row in results.items() if shape == name and tw.row_bucket(m) == bucket]
            if not rows:
                continue
            options = set.intersection(*(set(r) - {"bf16", "routed"} for r in rows))
            best = min(options, key=lambda o: sum(r[o] for r in rows))
            cfg = "scratch" if best == "scratch" else list(_CONFIGS[best])
            table.setdefault(f"{n},{k}", {})[str(bucket)] = cfg
            print(f"table {name} bucket {bucket}: {best} ({sum(r[best] for r in rows):.1f} µs over {len(rows)} M; "
                  f"scratch {sum(r['scratch'] for r in rows):.1f})")
    with open(path, "w") as f:
        json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
