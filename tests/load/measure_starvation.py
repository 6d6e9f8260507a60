"""Starvation check (issue 17): how long a 2-token request takes while an 8k-token prompt is being prefilled and an
n=256 request is decoding, against ``pagedllm serve`` of the bundled SmolLM2 at its defaults (plus --max-n 256,
since the default --max-n is 128).

    python tests/load/measure_starvation.py              # starts its own server; prints one line per probe
    python tests/load/measure_starvation.py --url http://127.0.0.1:8000   # against a running server
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx

LONG_PROMPT_TOKENS = 8000
BIG_N = 256


async def _post(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    r = await client.post(url + "/v1/completions", json=body, timeout=3600)
    r.raise_for_status()
    return r.json()


async def measure(url: str, model: str, probes: int = 3, settle_s: float = 3.0) -> list[float]:
    """Seconds each 2-token probe took (one after another) while the long prompt and the n=256 request run."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=16)) as client:
        long_prompt = [100 + (i * 7) % 20000 for i in range(LONG_PROMPT_TOKENS)]
        hogs = [asyncio.ensure_future(_post(client, url, {
                    "model": model, "prompt": long_prompt, "max_tokens": 64, "ignore_eos": True,
                    "temperature": 0})),
                asyncio.ensure_future(_post(client, url, {
                    "model": model, "prompt": "Write a long story about a dragon.", "n": BIG_N, "max_tokens": 128,
                    "ignore_eos": True, "temperature": 1.0, "seed": 1}))]
        await asyncio.sleep(settle_s)          # both are admitted and running
        seconds = []
        for i in range(probes):
            t0 = time.perf_counter()
            out = await _post(client, url, {"model": model, "prompt": f"Say hi {i}.", "max_tokens": 2,
                                            "temperature": 0})
            seconds.append(time.perf_counter() - t0)
            assert out["usage"]["completion_tokens"] == 2, out
            assert not any(h.done() for h in hogs), "the long requests ended before the probe: raise their lengths"
            await asyncio.sleep(0.5)
        for h in hogs:
            h.cancel()
        await asyncio.gather(*hogs, return_exceptions=True)
    return seconds


def main() -> None:
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from load_utils import MODEL, RemoteServer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="A running server (else one is started with the defaults).")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--probes", type=int, default=3)
    p.add_argument("--server-args", default="", help="Extra flags for the started server.")
    args = p.parse_args()
    server = None
    url = args.url
    if url is None:
        server = RemoteServer(["serve", args.model, "--max-n", str(BIG_N), "--disable-uvicorn-access-log"]
                              + args.server_args.split()).wait_ready()
        url = server.url
    try:
        seconds = asyncio.run(measure(url, args.model, args.probes))
    finally:
        if server is not None:
            server.stop()
    print(f"starvation: 2-token request while an {LONG_PROMPT_TOKENS}-token prompt and an n={BIG_N} request run: "
          + ", ".join(f"{s:.2f}" for s in seconds) + f" s (median {statistics.median(seconds):.2f} s)")


if __name__ == "__main__":
    main()
