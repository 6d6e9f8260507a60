"""Where the time of an offline run goes: host (cProfile, top functions) and device (torch.profiler, top kernels).

python3 benchmarks/profile_offline.py MODEL_NAME WORKLOAD [--torch-profile]   (MODEL_NAME as in shared/bench)
Dummy weights, token-id prompts, greedy, as in shared/bench/offline_workload.py. Prints tables; writes nothing.
"""
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time

sys.path.insert(0, os.environ.get("PAGEDLLM_BENCH_DIR", os.path.join(os.path.dirname(__file__), "..", ".bench")))
from workloads import WORKLOADS, qwen2_config  # noqa: E402

from pagedllm import LLM, SamplingParams  # noqa: E402

name, wl = sys.argv[1], sys.argv[2]
d = tempfile.mkdtemp()
json.dump(qwen2_config(name), open(os.path.join(d, "config.json"), "w"))
llm = LLM(model=d, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", max_model_len=4096,
          gpu_memory_utilization=0.9, seed=0)
reqs = WORKLOADS[wl]()
prompts = [{"prompt_token_ids": ids} for ids, _ in reqs]
sps = [SamplingParams(max_tokens=o, ignore_eos=True, temperature=0.0, detokenize=False) for _, o in reqs]
llm.generate(prompts[:4], sps[:4], use_tqdm=False)
t = time.perf_counter()
llm.generate(prompts, sps, use_tqdm=False)
plain = time.perf_counter() - t
prof = cProfile.Profile()
t = time.perf_counter()
prof.enable()
llm.generate(prompts, sps, use_tqdm=False)
prof.disable()
profiled = time.perf_counter() - t
s = io.StringIO()
pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
print(f"{name} {wl}: {plain:.3f} s plain, {profiled:.3f} s under cProfile")
print(s.getvalue()[-6000:])
if "--torch-profile" in sys.argv:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        llm.generate(prompts, sps, use_tqdm=False)
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
