"""Where the time of an offline run goes: host (cProfile, top functions) and device (torch.profiler, top kernels).

python3 benchmarks/profile_offline.py MODEL_NAME WORKLOAD [--torch-profile] [--steps FIRST:LAST]
(MODEL_NAME as in shared/bench.) Dummy weights, token-id prompts, greedy, as in shared/bench/offline_workload.py.
--torch-profile profiles a whole extra run; --steps profiles only engine steps FIRST..LAST-1 of one (the steady
state of a long run such as ShareGPT) and sorts the GPU time per step into GEMM / attention / other kernels.
Prints tables; writes nothing.
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

def kernel_category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("gemm", "nvjet", "cutlass", "sm90_", "gemv", "splitk", "cublas")):
        return "gemm"
    if any(k in n for k in ("_extend_kernel", "_decode_stage", "_store_kv", "flash", "attention")):
        return "attention"
    if any(k in n for k in ("memcpy", "memset")):
        return "copy"
    return "other"


if "--steps" in sys.argv:
    from torch.profiler import ProfilerActivity, profile
    first, last = (int(x) for x in sys.argv[sys.argv.index("--steps") + 1].split(":"))
    engine = llm.llm_engine
    inner = engine.step_with_stats
    state = {"n": 0, "prof": None, "t0": 0.0, "wall": 0.0, "tokens": 0, "seqs": 0}

    def counted_step():
        if state["n"] == first:
            state["prof"] = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            state["prof"].__enter__()
            state["t0"] = time.perf_counter()
        out = inner()
        state["n"] += 1
        if first < state["n"] <= last:
            state["tokens"] += out[1].num_generation_tokens + out[1].num_prompt_tokens
        if state["n"] == last:
            state["wall"] = time.perf_counter() - state["t0"]
            state["prof"].__exit__(None, None, None)
        return out

    engine.step_with_stats = counted_step
    llm.generate(prompts, sps, use_tqdm=False)
    engine.step_with_stats = inner
    prof = state["prof"]
    if prof is None:
        sys.exit(f"the run had only {state['n']} steps")
    nsteps = last - first
    per_cat: dict[str, float] = {}
    rows = []
    from torch.autograd import DeviceType
    for ev in prof.key_averages():
        if ev.device_type != DeviceType.CUDA:  # CPU ops also carry their kernels' time: count kernels only
            continue
        dev = ev.self_device_time_total
        if dev <= 0:
            continue
        per_cat[kernel_category(ev.key)] = per_cat.get(kernel_category(ev.key), 0.0) + dev
        rows.append((dev, ev.count, ev.key))
    gpu = sum(per_cat.values())
    print(f"steps {first}..{last - 1}: wall {state['wall'] * 1e3 / nsteps:.3f} ms/step, GPU busy "
          f"{gpu / 1e3 / nsteps:.3f} ms/step, {state['tokens'] / nsteps:.1f} tokens (prompt+generated) per step")
    for cat, us in sorted(per_cat.items(), key=lambda kv: -kv[1]):
        print(f"  {cat:10s} {us / 1e3 / nsteps:8.3f} ms/step  {100 * us / max(gpu, 1e-9):5.1f}%")
    for dev, count, key in sorted(rows, reverse=True)[:30]:
        print(f"  {dev / nsteps:9.1f} us/step {count / nsteps:7.1f} calls/step  {key[:110]}")

if "--torch-profile" in sys.argv:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        llm.generate(prompts, sps, use_tqdm=False)
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
