"""60 greedy tokens of the bundled SmolLM2 at batch 1: wall time of each of REPS (3) generate calls after a warm-up.

python benchmarks/cpu_greedy_60.py [dtype]      (issue 19's thread / wait-policy matrix, docs/perf.md)
G_IMPORT_TORCH_FIRST=1 imports torch before pagedllm (OpenMP keeps its spin-wait default); PAGEDLLM_CPU_THREADS,
OMP_WAIT_POLICY, GOMP_SPINCOUNT as usual. A load: two `python3 -c "while True: pass"` beside it.
"""
import sys, time, os
if os.environ.get("G_IMPORT_TORCH_FIRST"):
    import torch  # torch before pagedllm: OpenMP keeps its spin-wait default
from pagedllm import LLM, SamplingParams
import torch
kw = dict(max_model_len=1024, kv_cache_memory_gb=0.1)
if len(sys.argv) > 1 and sys.argv[1] != "-":
    kw["dtype"] = sys.argv[1]
llm = LLM("HuggingFaceTB/SmolLM2-135M-Instruct", **kw)
sp = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)
llm.generate(["Hello"], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
times = []
for _ in range(int(os.environ.get("REPS", "3"))):
    t = time.perf_counter()
    llm.generate(["The capital of France is"], sp, use_tqdm=False)
    times.append(time.perf_counter() - t)
print(f"threads={torch.get_num_threads()} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} "
      f"60 tokens: " + " ".join(f"{x:.2f}s" for x in times) + f"  ({60/min(times):.1f} tok/s best)", flush=True)
