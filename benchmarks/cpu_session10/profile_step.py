"""torch.profiler over 40 greedy tokens of the bundled SmolLM2: python benchmarks/cpu_session10/profile_step.py DTYPE"""
import sys
from pagedllm import LLM, SamplingParams
llm = LLM("HuggingFaceTB/SmolLM2-135M-Instruct", dtype=sys.argv[1], max_model_len=1024, kv_cache_memory_gb=0.1)
sp = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
llm.generate(["Hello"], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as prof:
    llm.generate(["The capital of France is"], sp, use_tqdm=False)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22))
