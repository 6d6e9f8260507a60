"""Interleaved A/B of the split decode step (PAGEDLLM_CPU_SPLIT_DECODE, worker/cpu_split.py) at cpu_vs_hf.py's "16
concurrent" (16 prompts x 128 greedy tokens, the bundled SmolLM2), one engine, switched at run time between calls.

python benchmarks/cpu_session13/split_ab.py DTYPE [rounds=4] [split=8]      (docs/perf.md, issue 19, session 13)
A: not split; B: decode steps of >= `split` requests split over the torch threads. Prints the load with each round,
the medians, and whether A and B generated the same tokens.
"""
import os
import statistics
import sys
import time

from pagedllm import LLM, SamplingParams   # first: it sets the OpenMP wait policy before torch loads its runtime

PROMPTS = ["The capital of France is", "Hello, my name is", "Once upon a time, in a small village,",
           "def fibonacci(n):", "The best way to learn a new language is", "Water boils at",
           "In 1969, the first", "A recipe for pancakes:"]


def main() -> None:
    dtype = sys.argv[1]
    opts = dict(a.split("=") for a in sys.argv[2:])
    rounds, split = int(opts.get("rounds", 4)), opts.get("split", "8")
    batch, new = int(opts.get("batch", 16)), int(opts.get("new", 128))
    llm = LLM(max_model_len=2048, kv_cache_memory_gb=1, dtype=dtype, max_num_seqs=batch)
    prompts = [PROMPTS[i % 8] + f" ({i})" * (i % 3) for i in range(batch)]
    sp = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
    res, toks = {"A": [], "B": []}, {}
    for r in range(rounds):
        line = f"round {r} load {os.getloadavg()[0]:.2f}:"
        for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
            os.environ["PAGEDLLM_CPU_SPLIT_DECODE"] = "0" if name == "A" else split
            llm.reset_prefix_cache()
            t = time.perf_counter()
            outs = llm.generate(prompts, sp, use_tqdm=False)
            res[name].append(batch * new / (time.perf_counter() - t))
            toks[name] = [o.outputs[0].token_ids for o in outs]
            line += f" {name} {res[name][-1]:.1f}"
        print(line, flush=True)
    for k, v in res.items():
        print(f"{dtype} {k}: median {statistics.median(v):.1f} [{min(v):.1f}, {max(v):.1f}] tok/s")
    same = sum(a == b for a, b in zip(toks["A"], toks["B"]))
    print(f"requests with the same tokens in A and B: {same} of {batch}")


if __name__ == "__main__":
    main()
