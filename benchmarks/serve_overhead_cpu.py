"""Host (Python) cost of the served path per output token: the API-server process and the engine-core process.

    python benchmarks/serve_overhead_cpu.py [--model DIR] [--runs 3] [--concurrency 128] [--num-prompts 512]
        [--input-len 128] [--output-len 128] [--dataset-name random|sharegpt --dataset-path FILE] [-- SERVE ARGS]

Starts ``pagedllm serve`` (one server for all runs), drives it with ``pagedllm bench serve`` (vLLM's client, streamed
completions, greedy), and prints per run: output tok/s, and the CPU time (user + system, from /proc) each server
process spent per 1,000 output tokens -- the API server (HTTP, tokenization, the output processor's detokenization,
SSE chunks) and the engine core (scheduling, the forward, output messages). With no ``--model`` a tiny random Llama
(hidden 64, 2 layers) is saved with the bundled SmolLM2 tokenizer, so the forward is cheap and the detokenization
real: the numbers are then host overhead. On a GPU give the real model (e.g. ``--model Qwen/Qwen2.5-7B-Instruct
--dataset-name sharegpt --dataset-path ShareGPT_V3_unfiltered_cleaned_split.json --num-prompts 1000
--concurrency 256``): the API server's CPU per token is what competes with streaming, the core's (minus the GPU
wait) what delays the next step. With ``--step-trace`` the core writes PAGEDLLM_STEP_TRACE and the script prints
its busy share (benchmarks/serve_step_trace.py reads the file for more).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(path: str) -> str:
    """A tiny random Llama with the bundled SmolLM2 tokenizer (as tests/unit/conftest.py's ``tiny_llama_dir``)."""
    import torch
    import transformers
    from pagedllm.model import gguf_loader
    from pagedllm.model.loader import bundled_model_path
    tok = transformers.AutoTokenizer.from_pretrained(gguf_loader.convert_metadata(bundled_model_path()))
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=4096,
                                   tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pids(api_pid: int) -> tuple[int, int | None]:
    """The API server's pid and its engine-core child's: the child with the most resident memory (it holds the
    model; a spawned core's sibling may be multiprocessing's resource tracker)."""
    kids = []
    for task in os.listdir(f"/proc/{api_pid}/task"):
        try:
            with open(f"/proc/{api_pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
        except OSError:
            pass

    def rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm") as f:
                return int(f.read().split()[1])
        except OSError:
            return -1
    return api_pid, (max(kids, key=rss) if kids else None)


def wait_up(base: str, proc: subprocess.Popen, seconds: float = 900.0) -> None:
    end = time.time() + seconds
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not come up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--port", type=int, default=8237)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--num-prompts", type=int, default=512)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--dataset-name", default="random")
    ap.add_argument("--dataset-path")
    ap.add_argument("--endpoint", default="/v1/completions", help="or /v1/chat/completions (--backend openai-chat)")
    ap.add_argument("--step-trace", action="store_true")
    ap.add_argument("serve_args", nargs="*", help="after --: more `pagedllm serve` arguments")
    args = ap.parse_args()
    model = args.model or tiny_model(tempfile.mkdtemp(prefix="serve_overhead_"))
    trace = tempfile.mktemp(suffix=".jsonl") if args.step_trace else None
    env = dict(os.environ)
    if trace:
        env["PAGEDLLM_STEP_TRACE"] = trace
    on_cpu = not os.path.exists("/dev/nvidiactl")
    if on_cpu:      # one torch thread: the 2-core VM runs the client and both server processes
        env.setdefault("OMP_NUM_THREADS", "1")
    serve = [sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", model, "--port", str(args.port),
             "--served-model-name", "m", "--disable-log-requests", *args.serve_args]
    if on_cpu:
        serve += ["--max-model-len", "2048", "--max-num-seqs", str(max(256, args.concurrency))]
    proc = subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    base = f"http://127.0.0.1:{args.port}"
    chat = args.endpoint.endswith("chat/completions")
    try:
        wait_up(base, proc)
        api, core = server_pids(proc.pid)
        rows = []
        for run in range(args.runs):
            bench = [sys.executable, "-m", "pagedllm.entrypoints.cli", "bench", "serve",
                     "--backend", "openai-chat" if chat else "openai", "--endpoint", args.endpoint,
                     "--base-url", base, "--model", "m", "--tokenizer", model, "--dataset-name", args.dataset_name,
                     "--num-prompts", str(args.num_prompts), "--max-concurrency", str(args.concurrency),
                     "--temperature", "0", "--seed", str(run)]
            if args.dataset_path:
                bench += ["--dataset-path", args.dataset_path]
            if args.dataset_name == "random":
                bench += ["--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len)]
            # The client's own start-up (tokenizer, prompts) is not counted: the CPU counters are read around the
            # timed part only, marked by the client's "Starting main benchmark run" line.
            client = subprocess.Popen(bench, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
            out, before = [], None
            for line in client.stdout:
                out.append(line)
                if before is None and "Starting main benchmark run" in line:
                    before = (cpu_seconds(api), cpu_seconds(core) if core else 0.0, time.time())
            client.wait()
            after = (cpu_seconds(api), cpu_seconds(core) if core else 0.0, time.time())
            text = "".join(out)
            m = re.search(r"Output token throughput \(tok/s\):\s+([\d.]+)", text)
            gen = re.search(r"Total generated tokens:\s+(\d+)", text)
            if not m or not gen or before is None:
                raise SystemExit("the client failed:\n" + text[-3000:])
            toks = int(gen.group(1))
            tpot = re.search(r"Median TPOT \(ms\):\s+([\d.]+)", text)
            row = {"run": run, "output_tok_s": float(m.group(1)), "tokens": toks,
                   "median_tpot_ms": float(tpot.group(1)) if tpot else None,
                   "api_cpu_ms_per_1k_tok": round((after[0] - before[0]) * 1e6 / toks, 1),
                   "core_cpu_ms_per_1k_tok": round((after[1] - before[1]) * 1e6 / toks, 1),
                   "wall_s": round(after[2] - before[2], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        med = {k: statistics.median(r[k] for r in rows)
               for k in ("output_tok_s", "api_cpu_ms_per_1k_tok", "core_cpu_ms_per_1k_tok")}
        print("median", json.dumps(med))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if trace and os.path.exists(trace):
        with open(trace) as f:
            steps = [json.loads(x) for x in f if x.strip()]
        busy = sum(s["msgs"] + s["step"] + s["send"] for s in steps)
        idle = sum(s["gap"] for s in steps if s["gap"] < 1000)
        mean = lambda key: sum(s[key] for s in steps) / len(steps)     # noqa: E731
        # A batch that stays below --concurrency while the core is busy means requests reach the core late (the
        # API server's side); a core that is idle with requests in flight, that outputs leave it late.
        print(f"step trace: {len(steps)} steps, core busy {busy / max(busy + idle, 1e-9):.0%}, mean running "
              f"{mean('running'):.1f} (concurrency {args.concurrency}), steps with prompt tokens "
              f"{sum(s['prompt_tokens'] > 0 for s in steps) / len(steps):.0%}; per step: step {mean('step'):.2f} ms, "
              f"send {mean('send'):.2f} ms, msgs {mean('msgs'):.2f} ms; {trace}")


if __name__ == "__main__":
    main()
