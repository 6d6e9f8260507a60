"""Packed int4 matmul (pagedllm.kernels.quant.triton_packed) against bf16 cuBLAS (F.linear) and the bf16 skinny GEMM.

Shapes: Qwen2.5-7B's projections (qkv 3584 -> 4608, o 3584 -> 3584, gate_up 3584 -> 37888, down 18944 -> 3584),
M in {1, 4, 16, 256, 4096}, int4 with group size 128 (AWQ/GPTQ's usual), bf16 activations, scales and offsets.

Timing as benchmarks/kernels/bench_gemv.py (its ``graph_time_us``): 28 calls in one CUDA graph, cycling over enough
weight copies that every call reads its weight from HBM; µs per call = graph time / 28. "GB/s" is the weight bytes
a call reads (bf16: N K 2; int4: N K / 2 plus the scales and offsets) over its time: at M <= 16 the figure to
compare with the H200's ~4.3 TB/s copy rate; int4 should take about a quarter of bf16's time there.

``--sweep`` first times every candidate config (triton_packed.CANDIDATES) per shape and M bucket and prints the
best as a ``_TABLE`` for triton_packed.py, then uses them in the table.

``--gemv`` (M = 1, 4-bit): every ``triton_packed_gemv.GEMV_CANDIDATES`` config and the old M = 1 kernel per
shape, each checked against ``reference_matmul`` before it is timed (a wrong one prints WRONG and is never chosen);
a table (µs, TB/s of packed bytes, speed-up over the old decode kernel's M = 1 config from ``_TABLE``) and the
best per shape as an ``M1_TABLE`` block for triton_packed.py (``--save-m1-table FILE`` writes it;
``--apply-m1-table FILE``, no GPU needed, puts it there).
Stops starting new timings at ``--deadline`` seconds (compiles included).

Usage (GPU): python benchmarks/quant_kernels.py [--sweep [--sweep-ms 1,16]] [--ms 1,4,16,256,4096] [--bits 4]
[--group 128]
       python benchmarks/quant_kernels.py --gemv [--deadline 200] [--save-m1-table $OUT/m1_table.py]
       python benchmarks/quant_kernels.py --apply-m1-table m1_table.py
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "kernels"))
from bench_gemv import CALLS, graph_time_us  # noqa: E402

from pagedllm.kernels import triton_gemv  # noqa: E402
from pagedllm.kernels.quant import triton_packed as tp  # noqa: E402
from pagedllm.kernels.quant.packed import PackedWeight, pack_along_k  # noqa: E402

DT = torch.bfloat16
L2_DEFEAT_BYTES = 256 << 20
# name -> (N, K): Qwen2.5-7B
SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}


class Case:
    """``copies`` weights of one shape (dense bf16 or packed) and an input; the interface graph_time_us reads."""

    def __init__(self, n: int, k: int, m: int, packed: bool, bits: int, group: int):
        g = torch.Generator(device="cuda").manual_seed(n + k)
        if packed:
            pack = 32 // bits
            groups = k // group
            size = n * k * bits // 8 + 2 * groups * n * 2
        else:
            size = n * k * 2
        self.copies = min(CALLS, max(2, math.ceil(L2_DEFEAT_BYTES / size)))
        self.ws = []
        for _ in range(self.copies):
            if packed:
                q = torch.randint(0, 1 << bits, (k, n), device="cuda", generator=g)
                scales = (torch.rand(groups, n, device="cuda", generator=g) + 0.5) * (2.0 / (1 << bits)) / k ** 0.5
                zeros = torch.randint(0, 1 << bits, (groups, n), device="cuda", generator=g).float()
                self.ws.append(PackedWeight(pack_along_k(q, bits), scales.to(DT), (-zeros * scales).to(DT), bits,
                                            group))
                assert self.ws[-1].qweight.shape == (k // pack, n)
                del q
            else:
                self.ws.append(torch.randn(n, k, device="cuda", dtype=DT, generator=g) * k ** -0.5)
        self.bs = [None] * self.copies
        self.x = torch.randn(m, k, device="cuda", dtype=DT, generator=g)
        self.weight_bytes = size


def time_case(case: Case, fn, target_ms: float = 60) -> float:
    return graph_time_us(case, fn, target_ms=target_ms, reps=3)


def run_sweep(ms: list[int], bits: int, group: int, deadline: float) -> None:
    t_end = time.time() + deadline
    buckets = sorted({tp._m_bucket(m) for m in ms})
    table: dict = {}
    for name, (n, k) in SHAPES.items():
        for bucket in buckets:
            m = {1: 1, 16: 16, 64: 64, 256: 256, 4096: 4096}[bucket]
            if time.time() > t_end:
                print(f"sweep: deadline reached before {name} M={m}", flush=True)
                break
            case = Case(n, k, m, True, bits, group)
            best = None
            for cfg in tp.CANDIDATES[bucket]:
                try:
                    t = time_case(case, lambda x, w, b, cfg=cfg: tp.packed_matmul_with_config(x, w, b, cfg),
                                  target_ms=25)
                except Exception as e:  # noqa: BLE001 - e.g. out of shared memory: skip the config
                    print(f"  {name} M={m} {tuple(cfg)} failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
                    continue
                print(f"  {name:<8} M={m:<5} {tuple(cfg)}: {t:8.2f} us", flush=True)
                if best is None or t < best[1]:
                    best = (cfg, t)
            if best is not None:
                table.setdefault((n, k, bits), {})[bucket] = best[0]
            del case
            torch.cuda.empty_cache()
    print("\n# _TABLE for pagedllm/kernels/quant/triton_packed.py (best per shape and M bucket):")
    for key, per_m in table.items():
        print(f"    {key}: {{" + ", ".join(f"{b}: {c!r}" for b, c in per_m.items()) + "},")
    tp._TABLE.update(table)
    tp._PLANS.clear()


def run_table(ms: list[int], bits: int, group: int) -> None:
    hdr = (f"{'shape':<8}{'N':>7}{'K':>7}{'M':>6} | {'bf16 F.linear us':>16}{'GB/s':>7} | {'bf16 skinny us':>14}"
           f"{'GB/s':>7} | {f'int{bits} g{group} us':>13}{'GB/s':>7} | {'vs F.linear':>11}  config")
    print(hdr)
    print("-" * len(hdr))
    for name, (n, k) in SHAPES.items():
        for m in ms:
            dense = Case(n, k, m, False, bits, group)
            t_lin = time_case(dense, lambda x, w, b: F.linear(x, w, b))
            t_sk = None
            if m <= triton_gemv.MAX_M:
                t_sk = time_case(dense, lambda x, w, b: triton_gemv.skinny_linear(x, w, b))
            dense_bytes = dense.weight_bytes
            del dense
            torch.cuda.empty_cache()
            packed = Case(n, k, m, True, bits, group)
            t_q = time_case(packed, lambda x, w, b: tp.packed_matmul(x, w, b))
            cfg = tp.get_config(m, n, k, bits)
            sk = f"{t_sk:>14.2f}{dense_bytes / t_sk / 1e3:>7.0f}" if t_sk else f"{'-':>14}{'-':>7}"
            print(f"{name:<8}{n:>7}{k:>7}{m:>6} | {t_lin:>16.2f}{dense_bytes / t_lin / 1e3:>7.0f} | {sk} | "
                  f"{t_q:>13.2f}{packed.weight_bytes / t_q / 1e3:>7.0f} | {t_lin / t_q:>10.2f}x  {tuple(cfg)}",
                  flush=True)
            del packed
            torch.cuda.empty_cache()


_M1_BEGIN, _M1_END = "# BEGIN M1_TABLE\n", "# END M1_TABLE\n"


def _m1_block(chosen: dict) -> str:
    lines = [_M1_BEGIN, "M1_TABLE: dict[tuple[int, int, int], PackedGemvConfig | PackedConfig] = {\n",
             "    # Qwen2.5-7B: qkv, o, gate_up, down (benchmarks/quant_kernels.py --gemv, "
             f"{torch.cuda.get_device_name()})\n"]
    for key, (cfg, us) in chosen.items():
        positional = f"{type(cfg).__name__}({', '.join(repr(v) for v in cfg)})"
        lines.append(f"    {key}: {positional},  # {us:.2f} us\n")
    lines += ["}\n", _M1_END]
    return "".join(lines)


def apply_m1_table(path: str) -> None:
    """Replace the M1_TABLE block of triton_packed.py with the one in ``path`` (written by --save-m1-table)."""
    block = open(path).read()
    if not (block.startswith(_M1_BEGIN) and block.endswith(_M1_END)):
        sys.exit(f"{path} is not an M1_TABLE block (written by --save-m1-table)")
    target = os.path.join(os.path.dirname(__file__), "..", "pagedllm", "kernels", "quant", "triton_packed.py")
    src = open(target).read()
    start, end = src.index(_M1_BEGIN), src.index(_M1_END) + len(_M1_END)
    open(target, "w").write(src[:start] + block + src[end:])
    print(f"M1_TABLE in {os.path.normpath(target)} replaced from {path}")


def run_gemv_sweep(group: int, deadline: float, save: str | None, shapes: list[str] | None = None,
                   candidates: str | None = None) -> None:
    """M = 1, 4-bit: the batch-1 kernel's candidates (``GEMV_CANDIDATES``, or the Python list expression
    ``candidates`` over ``PackedGemvConfig``) against the current path, checked, then timed."""
    from pagedllm.kernels.quant import triton_packed_gemv as gemv
    configs = (eval(candidates, {"PackedGemvConfig": gemv.PackedGemvConfig}) if candidates  # noqa: S307 - a CLI list
               else gemv.GEMV_CANDIDATES)
    from pagedllm.kernels.quant.packed import reference_matmul
    t_end = time.time() + deadline
    bits = 4
    chosen: dict = {}
    rows = []
    print(f"fields: PackedGemvConfig{gemv.PackedGemvConfig._fields}, PackedConfig{tp.PackedConfig._fields}",
          flush=True)
    print(f"{'shape':<8}{'N':>7}{'K':>7} | {'variant':<64} | {'us':>8}{'TB/s':>7} | {'vs old':>10}", flush=True)
    # Biggest first: gate_up and down are 86% of a layer's M = 1 matmul time, so a deadline cuts the small ones.
    for name, (n, k) in sorted(SHAPES.items(), key=lambda item: -item[1][0] * item[1][1]):
        if shapes and name not in shapes:
            continue
        if time.time() > t_end:
            print(f"gemv: deadline reached before {name}", flush=True)
            break
        case = Case(n, k, 1, True, bits, group)
        w0 = case.ws[0]
        ref = reference_matmul(case.x.float(), w0)
        # "old": the decode kernel's measured M = 1 choice (what ran before the batch-1 kernel)
        old = tp._TABLE.get((n, k, bits), {}).get(1, tp._DEFAULTS[(1, bits)])
        cands = [("old", old)] + [("gemv", c) for c in configs]
        t_cur = None
        best = None
        for label, cfg in cands:
            if time.time() > t_end:
                print(f"  gemv: deadline reached in {name}; {cfg!r} not timed", flush=True)
                continue
            desc = f"{label}: {type(cfg).__name__}({', '.join(repr(v) for v in cfg)})"
            try:
                y = tp.packed_matmul_with_config(case.x, w0, None, cfg)
                err = ((y.double() - ref.double()).norm() / ref.double().norm()).item()
                if not err < 4e-3:
                    print(f"{name:<8}{n:>7}{k:>7} | {desc:<64} | WRONG (relative error {err:.2e})", flush=True)
                    continue
                t = time_case(case, lambda x, w, b, cfg=cfg: tp.packed_matmul_with_config(x, w, b, cfg),
                              target_ms=25)
            except Exception as e:  # noqa: BLE001 - a config that fails to compile or launch is reported, not chosen
                print(f"{name:<8}{n:>7}{k:>7} | {desc:<64} | FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
                continue
            if label == "old":
                t_cur = t
            vs = f"{t_cur / t:>9.2f}x" if t_cur else f"{'-':>10}"
            print(f"{name:<8}{n:>7}{k:>7} | {desc:<64} | {t:>8.2f}{case.weight_bytes / t / 1e6:>7.2f} | {vs}",
                  flush=True)
            rows.append((name, desc, t))
            if best is None or t < best[1]:
                best = (cfg, t)
        if best is not None:
            chosen[(n, k, bits)] = best
            print(f"BEST {name}: {best[0]!r} {best[1]:.2f} us ({case.weight_bytes / best[1] / 1e6:.2f} TB/s)"
                  + (f", {t_cur / best[1]:.2f}x the old kernel ({t_cur:.2f} us)" if t_cur else ""), flush=True)
        del case, ref
        torch.cuda.empty_cache()
    block = _m1_block(chosen)
    print("\n# Paste into pagedllm/kernels/quant/triton_packed.py (or --save-m1-table FILE, then --apply-m1-table "
          "FILE):\n" + block, flush=True)
    total = sum(t for _, t in chosen.values())
    print(f"sum of the best M = 1 times over the four 7B matmuls of a layer: {total:.1f} us", flush=True)
    if save:
        with open(save, "w") as f:
            f.write(block)
        print(f"saved to {save}", flush=True)


def check_correct(bits: int, group: int) -> None:
    """One quick check per kernel path on the benchmark's own weights before timing anything."""
    from pagedllm.kernels.quant.packed import reference_matmul
    n, k = SHAPES["o"]
    for m in (1, 4, 300):
        case = Case(n, k, m, True, bits, group)
        w = case.ws[0]
        ref = reference_matmul(case.x.float(), w)
        try:
            y = tp.packed_matmul(case.x, w)
        except Exception as e:  # noqa: BLE001 - the fused unpack failed to compile: measure the two-op one
            if not tp._FUSED:
                raise
            print(f"fused unpack failed ({type(e).__name__}: {str(e)[:300]}); _FUSED = False", flush=True)
            tp._FUSED = False
            tp._PLANS.clear()
            y = tp.packed_matmul(case.x, w)
        err = ((y.double() - ref.double()).norm() / ref.double().norm()).item()
        assert err < 2e-2, f"packed_matmul M={m}: relative error {err:.2e}"
        del case


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", default="1,4,16,256,4096")
    ap.add_argument("--bits", type=int, default=4, choices=(4, 8))
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sweep-ms", default=None, help="the M values to sweep (default: --ms)")
    ap.add_argument("--deadline", type=float, default=420.0, help="seconds the sweep may take")
    ap.add_argument("--gemv", action="store_true", help="M = 1 4-bit: sweep triton_packed_gemv's configs only")
    ap.add_argument("--save-m1-table", default=None, help="with --gemv: write the chosen M1_TABLE block here")
    ap.add_argument("--apply-m1-table", default=None, help="put a saved M1_TABLE block into triton_packed.py")
    ap.add_argument("--shapes", default=None, help="with --gemv: the 7B shapes to sweep (e.g. gate_up,down)")
    ap.add_argument("--candidates", default=None,
                    help="with --gemv: a Python list of PackedGemvConfig(...) to sweep instead of GEMV_CANDIDATES")
    args = ap.parse_args()
    if args.apply_m1_table:
        apply_m1_table(args.apply_m1_table)
        return
    if not torch.cuda.is_available():
        sys.exit("quant_kernels.py needs a CUDA GPU")
    ms = [int(v) for v in args.ms.split(",")]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    if args.gemv:
        run_gemv_sweep(args.group, args.deadline, args.save_m1_table,
                       args.shapes.split(",") if args.shapes else None, args.candidates)
        return
    check_correct(args.bits, args.group)
    if args.sweep:
        sweep_ms = [int(v) for v in args.sweep_ms.split(",")] if args.sweep_ms else ms
        run_sweep(sweep_ms, args.bits, args.group, args.deadline)
    run_table(ms, args.bits, args.group)


if __name__ == "__main__":
    main()
