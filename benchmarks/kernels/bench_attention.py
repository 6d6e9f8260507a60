"""Micro-benchmark of the Triton paged-attention kernels (pagedllm.kernels.triton_attention).

Shapes: Qwen2.5-7B attention (28 q heads, 4 kv heads, head_dim 128), block_size 16, bf16.

* decode: batch 1 / 32 / 256 x context 512 / 2048. Timed two ways:
  - ``graph``: N calls captured in one CUDA graph, cycling over ``COPIES`` disjoint sets of KV blocks so that the
    working set is well above the 50 MB L2 (this is how the engine runs decode: no launch overhead);
  - ``eager``: ``triton.testing.do_bench`` (median, L2 flushed between calls, Python launch overhead included).
  Achieved bandwidth = (K + V bytes of all contexts) / graph time; the H100 copy ceiling measured in the same run
  is printed for comparison. Yardstick: ``F.scaled_dot_product_attention`` (enable_gqa) on contiguous
  ``[B, Hkv, ctx, D]`` K/V, same timing method.
* extend: a prefill of 8 x 1024 tokens; a ShareGPT-like mix of prompt lengths (first step of a serving run); a
  mixed chunked-prefill batch (prefix hits + decodes). Yardstick: SDPA (causal, enable_gqa) on the contiguous
  equivalent (batched for the uniform case, a per-request loop for the varlen ones).

``--sweep`` also times alternative tile configs (decode: BLOCK_N, MIN_CHUNK, CTAs/SM, warps, stages; extend:
BLOCK_M, BLOCK_N, warps, stages). Results go to ``--out`` (JSON + a text table).

Usage: python benchmarks/kernels/bench_attention.py [--sweep] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from pagedllm.kernels import triton_attention as tri  # noqa: E402

HQ, HKV, D, BS = 28, 4, 128, 16
DT = torch.bfloat16
COPIES = 4          # disjoint KV sets cycled through in graph timing (defeats L2 reuse)
CALLS_PER_GRAPH = 20


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (the practical HBM ceiling)."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a), warmup=50, rep=200, return_mode="median")
    del a, b
    return 2 * n / (ms * 1e-3)


def time_graph(calls: list, reps: int = 15) -> float:
    """Median microseconds per call of ``calls`` (cycled) captured in one CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(CALLS_PER_GRAPH):
            calls[i % len(calls)]()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        g.replay()
        en.record()
        en.synchronize()
        times.append(st.elapsed_time(en) * 1e3 / CALLS_PER_GRAPH)
    del g
    return statistics.median(times)


def time_eager(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def paged_pool(total_tokens_per_copy: int, copies: int):
    blocks_per_copy = -(-total_tokens_per_copy // BS) + 64
    nb = blocks_per_copy * copies
    k = torch.randn(nb, BS, HKV, D, device="cuda", dtype=DT)
    v = torch.randn_like(k)
    perm = torch.randperm(nb, device="cuda").to(torch.int32)
    return k, v, perm, blocks_per_copy


def block_tables_for(lens, perm, offset):
    maxb = max(-(-s // BS) for s in lens)
    t = torch.zeros(len(lens), maxb, dtype=torch.int32, device="cuda")
    used = offset
    for i, s in enumerate(lens):
        n = -(-s // BS)
        t[i, :n] = perm[used:used + n]
        used += n
    return t


# ---------------------------------------------------------------------------------------------------- decode
def bench_decode(batch: int, ctx: int, configs: dict, with_sdpa: bool = True, lens: list[int] | None = None) -> dict:
    """Uniform contexts of ``ctx`` keys, or the given ``lens`` (then ``ctx`` is only their mean, for the table)."""
    lens = lens or [ctx] * batch
    if len(set(lens)) > 1:
        with_sdpa = False          # the contiguous SDPA yardstick needs one length
    k, v, perm, bpc = paged_pool(sum(lens) + BS * batch, COPIES)     # + a partial last block per request
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    tables = [block_tables_for(lens, perm, c * bpc) for c in range(COPIES)]
    qs = [torch.randn(batch, HQ, D, device="cuda", dtype=DT) for _ in range(COPIES)]
    out = torch.empty_like(qs[0])
    scale = D ** -0.5
    kv_bytes = sum(lens) * HKV * D * 2 * 2
    res = {"batch": batch, "ctx": ctx, "kv_MB": kv_bytes / 1e6, "configs": {}}
    for name, cfg in configs.items():
        ws = tri.DecodeWorkspace.allocate(batch, HQ, HKV, D, ctas_per_sm=cfg[2] if cfg else tri.DECODE_CTAS_PER_SM,
                                          tail_splits=cfg[5] if cfg and len(cfg) > 5 else tri.DECODE_TAIL_SPLITS)
        calls = [lambda c=c, cfg=cfg: tri.decode_attention(qs[c], k, v, seq_lens, tables[c], scale, ws, out=out,
                                                           _config=cfg) for c in range(COPIES)]
        us = time_graph(calls)
        eager = time_eager(calls[0])
        splits = tri.decode_plan(batch, HKV, ws.sm_count, ws.max_splits, cfg[2] if cfg else tri.DECODE_CTAS_PER_SM,
                                 tail_splits=ws.tail_splits)[0]
        res["configs"][name] = {"graph_us": us, "eager_us": eager, "GBps": kv_bytes / (us * 1e-6) / 1e9,
                                "splits_grid": splits}
    if with_sdpa:
        kc = [torch.randn(batch, HKV, ctx, D, device="cuda", dtype=DT) for _ in range(COPIES)]
        vc = [torch.randn_like(x) for x in kc]
        q4 = [q.view(batch, HQ, 1, D) for q in qs]
        calls = [lambda c=c: F.scaled_dot_product_attention(q4[c], kc[c], vc[c], enable_gqa=True)
                 for c in range(COPIES)]
        try:
            us = time_graph(calls)
            res["sdpa"] = {"graph_us": us, "eager_us": time_eager(calls[0]), "GBps": kv_bytes / (us * 1e-6) / 1e9}
        except Exception as e:  # noqa: BLE001
            res["sdpa"] = {"error": repr(e)[:200]}
        del kc, vc
    del k, v
    torch.cuda.empty_cache()
    return res


# ---------------------------------------------------------------------------------------------------- extend
def sharegpt_like(rng: random.Random, n: int) -> list[int]:
    """Prompt lengths with a ShareGPT-like long tail (log-normal, median ~250, clipped to 16..2048)."""
    return [int(min(2048, max(16, rng.lognormvariate(5.5, 0.9)))) for _ in range(n)]


def bench_extend(name: str, specs: list[tuple[int, int]], configs: dict, sdpa: str | None) -> dict:
    """specs: (seq_len, q_len) per request. sdpa: None, 'batched' (uniform prefill) or 'loop'."""
    total = sum(s for s, _ in specs)
    k, v, perm, _ = paged_pool(total, 1)
    lens = [s for s, _ in specs]
    tables = block_tables_for(lens, perm, 0)
    q_lens = [q for _, q in specs]
    qsl = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    query = torch.randn(sum(q_lens), HQ, D, device="cuda", dtype=DT)
    out = torch.empty_like(query)
    scale = D ** -0.5
    max_q = max(q_lens)
    # causal FLOPs actually needed: 2 dots x 2 flop x D per (query, visible key) pair, per q head
    pairs = sum(q * (s - q) + q * (q + 1) // 2 for s, q in specs)
    flops = 4 * D * HQ * pairs
    res = {"name": name, "num_reqs": len(specs), "num_tokens": sum(q_lens), "ctx_tokens": total, "configs": {}}
    for cname, cfg in configs.items():
        two = False if cname == "default_onepass" else None
        fn = lambda cfg=cfg, two=two: tri.extend_attention(query, k, v, qsl, seq_lens, tables, scale, max_q,  # noqa
                                                           out=out, _config=cfg, _two_pass=two)
        us = time_eager(fn)
        res["configs"][cname] = {"us": us, "TFLOPs": flops / (us * 1e-6) / 1e12}
    if sdpa == "batched":
        b, L = len(specs), specs[0][0]
        qc = torch.randn(b, HQ, L, D, device="cuda", dtype=DT)
        kc = torch.randn(b, HKV, L, D, device="cuda", dtype=DT)
        vc = torch.randn_like(kc)
        us = time_eager(lambda: F.scaled_dot_product_attention(qc, kc, vc, is_causal=True, enable_gqa=True))
        res["sdpa"] = {"us": us, "TFLOPs": flops / (us * 1e-6) / 1e12}
    elif sdpa == "loop":
        tensors = []
        for s, q in specs:
            assert s == q, "loop yardstick is for plain prefill"
            tensors.append((torch.randn(1, HQ, s, D, device="cuda", dtype=DT),
                            torch.randn(1, HKV, s, D, device="cuda", dtype=DT),
                            torch.randn(1, HKV, s, D, device="cuda", dtype=DT)))

        def loop():
            for qc, kc, vc in tensors:
                F.scaled_dot_product_attention(qc, kc, vc, is_causal=True, enable_gqa=True)
        us = time_eager(loop)
        res["sdpa"] = {"us": us, "TFLOPs": flops / (us * 1e-6) / 1e12}
    del k, v
    torch.cuda.empty_cache()
    return res


DECODE_SWEEP = {
    # (BLOCK_N, MIN_CHUNK, CTAS_PER_SM, num_warps, num_stages); first run's sweep is in the module comments
    "bn64_mc64_c1_w4_s2": (64, 64, 1, 4, 2),
    "bn64_mc64_c3_w4_s2": (64, 64, 3, 4, 2),
    "bn64_mc64_c2_w4_s3": (64, 64, 2, 4, 3),
    "bn32_mc64_c2_w4_s3": (32, 64, 2, 4, 3),
    "bn64_mc32_c2_w4_s2": (64, 32, 2, 4, 2),
    "bn64_mc64_c2_w2_s2": (64, 64, 2, 2, 2),
}
# Mixed context lengths (ShareGPT-like decode batches): the tail split of long contexts when the batch alone fills
# the GPU: (..., TAIL_SPLITS, TAIL_CHUNK); TAIL_SPLITS 1 = off.
DECODE_MIX_SWEEP = {
    "tail_off": (64, 64, 2, 4, 2, 1, 256),
    "tail4x256": (64, 64, 2, 4, 2, 4, 256),
    "tail4x512": (64, 64, 2, 4, 2, 4, 512),
    "tail8x128": (64, 64, 2, 4, 2, 8, 128),
    "tail2x512": (64, 64, 2, 4, 2, 2, 512),
}
EXTEND_SWEEP = {
    # (BLOCK_M, BLOCK_N, num_warps, num_stages); all with the short-request second pass when it applies
    "default_onepass": None,
    "m128_n64_w8_s2": (128, 64, 8, 2),
    "m128_n32_w4_s3": (128, 32, 4, 3),
    "m128_n32_w8_s2": (128, 32, 8, 2),
    "m64_n64_w4_s2": (64, 64, 4, 2),
    "m64_n32_w4_s2": (64, 32, 4, 2),
    "m128_n16_w4_s2": (128, 16, 4, 2),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--decode-mix", action="store_true",
                    help="only decode batches with ShareGPT-like mixed context lengths, tail-split variants")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.cuda.get_device_properties(0)
    info = {"gpu": dev.name, "sms": dev.multi_processor_count, "torch": torch.__version__,
            "triton": triton.__version__}
    t0 = time.time()
    info["copy_GBps"] = copy_bandwidth() / 1e9
    print(info, flush=True)

    dec_cfgs = {"default": None}
    ext_cfgs = {"default": None}
    if args.sweep:
        dec_cfgs.update(DECODE_SWEEP)
        ext_cfgs.update(EXTEND_SWEEP)
    decode = []
    if args.decode_mix:
        rng = random.Random(0)
        for batch in (64, 150, 256, 512, 1000):
            lens = [s + rng.randint(0, 300) for s in sharegpt_like(rng, batch)]
            r = bench_decode(batch, sum(lens) // batch, {"default": None, **DECODE_MIX_SWEEP}, lens=lens)
            r["max_ctx"] = max(lens)
            print(json.dumps(r), flush=True)
        return
    for batch in (1, 32, 256):
        for ctx in (512, 2048):
            r = bench_decode(batch, ctx, dec_cfgs)
            decode.append(r)
            print(json.dumps(r), flush=True)
    rng = random.Random(0)
    share = sharegpt_like(rng, 32)
    mixed = [(s, s) for s in sharegpt_like(rng, 4)] + [(rng.randint(256, 3000), rng.randint(16, 512))
                                                        for _ in range(4)] + \
            [(rng.randint(100, 4000), 1) for _ in range(64)]
    extend = [bench_extend("prefill_8x1024", [(1024, 1024)] * 8, ext_cfgs, "batched"),
              bench_extend(f"sharegpt_{len(share)}req_{sum(share)}tok", [(s, s) for s in share], ext_cfgs, "loop"),
              bench_extend(f"mixed_prefix_decode_{len(mixed)}req", mixed, ext_cfgs, None)]
    for r in extend:
        print(json.dumps(r), flush=True)

    lines = [f"# {info['gpu']} ({info['sms']} SMs), torch {info['torch']}, triton {info['triton']}, "
             f"copy ceiling {info['copy_GBps']:.0f} GB/s; Qwen2.5-7B heads {HQ}/{HKV}, hd {D}, block {BS}, bf16",
             "", "## decode (graph = per call inside a CUDA graph, eager = do_bench median incl. launch)",
             f"{'B':>4} {'ctx':>5} {'KV MB':>7} | {'config':<22} {'split':>5} {'graph us':>9} {'GB/s':>6} "
             f"{'eager us':>9} | {'sdpa graph us':>13} {'sdpa GB/s':>9}"]
    for r in decode:
        sd = r.get("sdpa", {})
        for name, c in r["configs"].items():
            lines.append(f"{r['batch']:>4} {r['ctx']:>5} {r['kv_MB']:>7.1f} | {name:<22} {c['splits_grid']:>5} "
                         f"{c['graph_us']:>9.1f} {c['GBps']:>6.0f} {c['eager_us']:>9.1f} | "
                         f"{sd.get('graph_us', float('nan')):>13.1f} {sd.get('GBps', float('nan')):>9.0f}")
    lines += ["", "## extend (do_bench median, us; TFLOP/s of the causal work)"]
    for r in extend:
        sd = r.get("sdpa", {})
        for name, c in r["configs"].items():
            lines.append(f"{r['name']:<34} tok {r['num_tokens']:>6} | {name:<18} {c['us']:>9.1f} us "
                         f"{c['TFLOPs']:>6.1f} TF | sdpa {sd.get('us', float('nan')):>9.1f} us "
                         f"{sd.get('TFLOPs', float('nan')):>6.1f} TF")
    lines.append(f"\n(total bench time {time.time() - t0:.0f} s)")
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_attention.json"), "w") as f:
        json.dump({"info": info, "decode": decode, "extend": extend}, f, indent=1)
    with open(os.path.join(args.out, "bench_attention.txt"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
