"""The split-KV decode kernel at the latency run's shape (B = 8 requests, 1-2k keys): 15.8 µs a layer in the
session-10 profile of latency_8x1024x1024 on the H200, ~1.6 TB/s of K+V. Times tile / split configs at B = 4, 8,
16 and contexts 1024 / 2048 (graph timing of bench_attention.py; config = BLOCK_N, MIN_CHUNK, CTAs per SM, warps,
stages).

python benchmarks/kernels/decode_small_batch_probe.py
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import bench_attention as ba  # noqa: E402

CONFIGS = {
    "default": None,
    "ctas1": (64, 64, 1, 4, 2), "ctas4": (64, 64, 4, 4, 2), "ctas8": (64, 64, 8, 4, 2),
    "bn32_ctas4": (32, 32, 4, 4, 2), "bn32_ctas8": (32, 32, 8, 4, 2), "bn128_ctas2": (128, 128, 2, 4, 2),
    "w8_ctas4": (64, 64, 4, 8, 2), "st3": (64, 64, 2, 4, 3), "st3_ctas4": (64, 64, 4, 4, 3),
    "min128_ctas4": (64, 128, 4, 4, 2), "w2_ctas4": (64, 64, 4, 2, 2),
}

for batch in (4, 8, 16):
    for ctx in (1024, 2048):
        r = ba.bench_decode(batch, ctx, CONFIGS, with_sdpa=False)
        row = sorted(((c["graph_us"], name, c["splits_grid"]) for name, c in r["configs"].items()))
        base = r["configs"]["default"]["graph_us"]
        print(f"B={batch:<3} ctx={ctx:<5} KV {r['kv_MB']:.1f} MB default {base:.2f} us | "
              + "  ".join(f"{n}(S{s})={t:.2f}" for t, n, s in row[:6]), flush=True)
