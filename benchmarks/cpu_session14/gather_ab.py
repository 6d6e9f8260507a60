"""Interleaved A/B of the CPU decode gather planned once per step (issue 19, session 14): A = the tree's
``kernels/torch_attention.py`` as it was at BASE (every layer builds its block ids, scratch views and key/value views),
B = the working tree's (the step's first layer builds them, the others only run the two ``index_select``). One
engine; the module the torch attention backend calls is swapped between the calls, order alternating per round.

python benchmarks/cpu_session14/gather_ab.py DTYPE BATCH [rounds=4] [base=1a63926] [tokens=128]

BATCH 1: one prompt; BATCH 16: cpu_vs_hf.py's "16 concurrent" (16 prompts, greedy, ignore_eos). Prints the load
average with each round and whether A and B gave the same tokens.
"""
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

from pagedllm import LLM, SamplingParams   # first: it sets the OpenMP wait policy before torch loads its runtime
from pagedllm.attention.backends import torch_backend

PROMPTS = ["The capital of France is", "Hello, my name is", "Once upon a time, in a small village,",
           "def fibonacci(n):", "The best way to learn a new language is", "Water boils at",
           "In 1969, the first", "A recipe for pancakes:"]


def module_at(rev: str):
    src = subprocess.check_output(["git", "show", f"{rev}:pagedllm/kernels/torch_attention.py"], text=True)
    path = os.path.join(tempfile.mkdtemp(), "torch_attention_base.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("torch_attention_base", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    dtype, batch = sys.argv[1], int(sys.argv[2])
    opts = dict(a.split("=", 1) for a in sys.argv[3:] if "=" in a)
    rounds, n = int(opts.get("rounds", 4)), int(opts.get("tokens", 128))
    mods = {"A": module_at(opts.get("base", "1a63926")), "B": torch_backend.torch_attention}
    llm = LLM("HuggingFaceTB/SmolLM2-135M-Instruct", max_model_len=2048, kv_cache_memory_gb=1, dtype=dtype,
              max_num_seqs=max(batch, 1))
    tok = llm.get_tokenizer()
    prompts = [tok(PROMPTS[i % len(PROMPTS)] + f" ({i})" * (i % 3)).input_ids for i in range(batch)]
    sp = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)

    def run(name: str) -> tuple[float, list]:
        torch_backend.torch_attention = mods[name]
        llm.reset_prefix_cache()
        t = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        return batch * n / (time.perf_counter() - t), [o.outputs[0].token_ids for o in outs]

    run("A")
    res: dict[str, list[float]] = {"A": [], "B": []}
    toks = {}
    for r in range(rounds):
        line = f"round {r} load {os.getloadavg()[0]:.2f}:"
        for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
            tps, toks[name] = run(name)
            res[name].append(tps)
            line += f" {name} {tps:.1f}"
        print(line, flush=True)
    for name, v in res.items():
        print(f"{dtype} x {batch} {name}: median {statistics.median(v):.1f} [{min(v):.1f}, {max(v):.1f}] tok/s")
    print(f"B / A (medians) {statistics.median(res['B']) / statistics.median(res['A']):.3f}; "
          f"tokens A == B: {toks['A'] == toks['B']}")


if __name__ == "__main__":
    main()
