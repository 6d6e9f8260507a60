"""Served concurrency sweep: one server, several concurrencies, measured as `shared/bench/serve_workload.py` measures.

    python benchmarks/serve_sweep.py ENGINE MODEL [--concs 1,16,64,100,256] [--workloads DIR] [--log-dir DIR]
                                     [--server-args '--tensor-parallel-size 2']

ENGINE is `pagedllm` or `vllm`, MODEL a name from the shared `workloads.py` (qwen2.5-7b, qwen2.5-1.5b; dummy weights,
token-id prompts, streaming completions). The server is started once, with serve_workload.py's flags, because a cold
vLLM start costs ~200 s of device time a point; every point then runs a warm-up request and its own ShareGPT-like
requests (`sharegpt_like(n, seed)`, a different seed per point so that no point finds an earlier point's prompts in
the prefix cache; c = 100 uses seed 0 and 1000 requests, i.e. exactly serve_workload.py's requests). Low
concurrencies get fewer requests so that a point takes about a minute (c = 1 runs sequentially at ~8 ms a token).
Prints one JSON line per point, with the fields of serve_workload.py's line.
"""
import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

import aiohttp
import numpy as np

# (requests, seed) per concurrency: c * ~16 requests keeps each point at ~15-60 s on a 7B model.
POINTS = {1: (24, 1), 16: (256, 16), 64: (640, 64), 100: (1000, 0), 256: (1000, 256)}
PORT = 8123


async def _wait_up(base: str, proc: subprocess.Popen, seconds: float = 600.0) -> bool:
    async with aiohttp.ClientSession() as s:
        end = time.time() + seconds
        while time.time() < end:
            try:
                async with s.get(base + "/health") as r:
                    if r.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            if proc.poll() is not None:
                return False
            await asyncio.sleep(0.5)
    return False


async def _one(s, base, ids, out_len, rec):
    body = {"model": "m", "prompt": ids, "max_tokens": out_len, "ignore_eos": True, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    stamps, ntok = [], None
    async with s.post(base + "/v1/completions", json=body) as r:
        if r.status != 200:
            rec.append(dict(ok=False, err=(await r.text())[:200]))
            return
        buf = b""
        async for chunk in r.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                ev = ev.strip()
                if not ev.startswith(b"data: ") or ev == b"data: [DONE]":
                    continue
                j = json.loads(ev[6:])
                if j.get("choices"):
                    stamps.append(time.perf_counter())
                if j.get("usage"):
                    ntok = j["usage"]["completion_tokens"]
    rec.append(dict(ok=True, start=start, stamps=stamps, out=ntok or len(stamps), inp=len(ids)))


async def _point(base, reqs, conc):
    sem = asyncio.Semaphore(conc)
    rec = []
    conn = aiohttp.TCPConnector(limit=conc + 8)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=3600)) as s:
        await _one(s, base, reqs[0][0], 8, [])  # warm-up, as serve_workload.py

        async def limited(ids, o):
            async with sem:
                await _one(s, base, ids, o, rec)
        t = time.perf_counter()
        await asyncio.gather(*[limited(ids, o) for ids, o in reqs])
        return rec, time.perf_counter() - t


def _summary(rec, dur):
    ok = [r for r in rec if r["ok"]]
    ttft = np.array([(r["stamps"][0] - r["start"]) * 1e3 for r in ok if r["stamps"]])
    tpot = np.array([(r["stamps"][-1] - r["stamps"][0]) * 1e3 / (r["out"] - 1)
                     for r in ok if r["out"] > 1 and r["stamps"]])
    itl = np.concatenate([np.diff(r["stamps"]) * 1e3 for r in ok if len(r["stamps"]) > 1])
    out_tok = sum(r["out"] for r in ok)
    in_tok = sum(r["inp"] for r in ok)

    def stats(a):
        return dict(mean=round(float(a.mean()), 2), median=round(float(np.percentile(a, 50)), 2),
                    p99=round(float(np.percentile(a, 99)), 2))
    return dict(ok=len(ok), failed=len(rec) - len(ok), duration_s=round(dur, 2), req_s=round(len(ok) / dur, 2),
                output_tok_s=round(out_tok / dur, 1), total_tok_s=round((in_tok + out_tok) / dur, 1),
                ttft_ms=stats(ttft), tpot_ms=stats(tpot), itl_ms=stats(itl))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engine", choices=["pagedllm", "vllm"])
    ap.add_argument("model")
    ap.add_argument("--concs", default="1,16,64,100,256")
    ap.add_argument("--workloads", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench"),
                    help="folder holding the shared workloads.py")
    ap.add_argument("--log-dir", default=tempfile.gettempdir())
    ap.add_argument("--server-args", default="", help="more server arguments, e.g. '--tensor-parallel-size 2'")
    args = ap.parse_args()
    sys.path.insert(0, args.workloads)
    from workloads import qwen2_config, sharegpt_like

    concs = [int(c) for c in args.concs.split(",")]
    unknown = [c for c in concs if c not in POINTS]
    if unknown:
        ap.error(f"no request count set for concurrency {unknown}; known: {sorted(POINTS)}")
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(qwen2_config(args.model), f)
    common = ["--load-format", "dummy", "--skip-tokenizer-init", "--max-model-len", "4096", "--port", str(PORT),
              "--served-model-name", "m", "--dtype", "bfloat16"] + shlex.split(args.server_args)
    cmd = {"vllm": [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", d] + common,
           "pagedllm": ["pagedllm", "serve", d] + common}[args.engine]
    log = open(os.path.join(args.log_dir, f"sweep_server_{args.engine}_{args.model}.log"), "w")
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{PORT}"
    try:
        if not asyncio.run(_wait_up(base, proc)):
            print(json.dumps(dict(engine=args.engine, error="server did not come up")), flush=True)
            sys.exit(1)
        startup = round(time.time() - t0, 1)
        for c in concs:
            n, seed = POINTS[c]
            rec, dur = asyncio.run(_point(base, sharegpt_like(n, seed), c))
            print(json.dumps(dict(engine=args.engine, model=args.model, workload=f"sharegpt_like_{n}_seed{seed}",
                                  concurrency=c, **_summary(rec, dur), startup_s=startup)), flush=True)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


if __name__ == "__main__":
    main()
