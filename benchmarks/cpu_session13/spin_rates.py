"""Output tok/s of the bundled SmolLM2 at 16 concurrent (16 prompts x 128 greedy tokens, as benchmarks/cpu_vs_hf.py)
and at batch 1 (64 tokens), for each dtype given, REPS (3) runs each after a warm-up; one line per process.

python benchmarks/cpu_session13/spin_rates.py bfloat16,float32      (docs/perf.md, issue 19, session 13)
The OpenMP wait policy is this process's environment (GOMP_SPINCOUNT / OMP_WAIT_POLICY; unset: pagedllm's PASSIVE);
benchmarks/cpu_session13/spin_sweep.sh runs it for several spin counts, with or without a background load.
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
    reps = int(os.environ.get("REPS", "3"))
    prompts = [PROMPTS[i % 8] + f" ({i})" * (i % 3) for i in range(16)]
    out = []
    for dtype in sys.argv[1].split(","):
        llm = LLM(max_model_len=2048, kv_cache_memory_gb=1, dtype=dtype, max_num_seqs=16)
        llm.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
        for batch, new in ((16, 128), (1, 64)):
            sp = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
            rates = []
            for _ in range(reps):
                llm.reset_prefix_cache()
                t = time.perf_counter()
                llm.generate(prompts[:batch], sp, use_tqdm=False)
                rates.append(batch * new / (time.perf_counter() - t))
            out.append(f"{dtype} B={batch}: {statistics.median(rates):.1f} [{min(rates):.1f},{max(rates):.1f}]")
        del llm
    print(" | ".join(out), flush=True)


if __name__ == "__main__":
    main()
