"""CPU cost of the serving front end per streamed chunk (no GPU needed).

python benchmarks/serve_frontend_cost.py CONCURRENCY REQUESTS MAX_TOKENS

Starts `pagedllm serve` on a tiny random Llama (dummy weights, token-id prompts, CPU), streams REQUESTS completions
CONCURRENCY at a time, and prints the API-server process's CPU seconds per streamed chunk next to the engine
process's: how many chunks per second one front-end core could carry, whatever the engine's speed.
"""
import asyncio
import json
import subprocess
import sys
import tempfile
import time

import httpx
import psutil
import transformers

d = tempfile.mkdtemp()
cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, vocab_size=1000, max_position_embeddings=1024)
cfg.architectures = ["LlamaForCausalLM"]
cfg.save_pretrained(d)
port = 8131
cmd = [sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", d, "--load-format", "dummy", "--skip-tokenizer-init",
       "--max-model-len", "512", "--port", str(port), "--served-model-name", "m", "--dtype", "float32",
       "--disable-log-stats"]
proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
base = f"http://127.0.0.1:{port}"
CONC, N, OUT = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])


async def main():
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=CONC + 5)) as c:
        for _ in range(240):
            try:
                if (await c.get(base + "/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
        p = psutil.Process(proc.pid)
        kids = p.children(recursive=True)

        def cpu(pr):
            t = pr.cpu_times()
            return t.user + t.system
        sem = asyncio.Semaphore(CONC)
        chunks = [0]

        async def one(i):
            async with sem:
                body = {"model": "m", "prompt": list(range(10, 26)), "max_tokens": OUT, "ignore_eos": True,
                        "temperature": 0.0, "stream": True}
                async with c.stream("POST", base + "/v1/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            chunks[0] += 1
        await one(-1)   # warm-up
        f0, e0 = cpu(p), [cpu(k) for k in kids]
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(N)))
        wall = time.perf_counter() - t0
        f1, e1 = cpu(p), [cpu(k) for k in kids]
        n = chunks[0]
        print(json.dumps(dict(conc=CONC, requests=N, chunks=n, wall_s=round(wall, 2), chunks_per_s=round(n / wall),
                              frontend_cpu_s=round(f1 - f0, 2), frontend_us_per_chunk=round(1e6 * (f1 - f0) / n, 1),
                              engine_cpu_s=[round(b - a, 2) for a, b in zip(e0, e1)],
                              engine_us_per_chunk=[round(1e6 * (b - a) / n, 1) for a, b in zip(e0, e1)])))


try:
    asyncio.run(main())
finally:
    proc.terminate(); proc.wait(timeout=30)
