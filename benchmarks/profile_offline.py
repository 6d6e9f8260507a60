"""Where the time of an offline run goes: host (cProfile, top functions) and device (torch.profiler, top kernels).

python3 benchmarks/profile_offline.py MODEL_NAME WORKLOAD [--torch-profile] [--steps F:L[,F:L...]]
(MODEL_NAME as in shared/bench.) Dummy weights, token-id prompts, greedy, as in shared/bench/offline_workload.py.
--torch-profile profiles a whole extra run; --steps F:L[,F:L...] times every step of one more run (printing where
its time goes by kind of step: decode batch size, with or without prompt tokens) and profiles the given windows of
steps (e.g. the steady state of a long run such as ShareGPT), sorting their GPU time into GEMM / attention / other.
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
# No prefix caching: the same prompts run several times here, and from the second run on they would all hit the
# cache and skip their prefill (the benchmark runs them once).
llm = LLM(model=d, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", max_model_len=4096,
          gpu_memory_utilization=0.9, seed=0, enable_prefix_caching=False)
reqs = WORKLOADS[wl]()
prompts = [{"prompt_token_ids": ids} for ids, _ in reqs]
sps = [SamplingParams(max_tokens=o, ignore_eos=True, temperature=0.0, detokenize=False) for _, o in reqs]
llm.generate(prompts[:4], sps[:4], use_tqdm=False)
t = time.perf_counter()
llm.generate(prompts, sps, use_tqdm=False)
plain = time.perf_counter() - t
print(f"{name} {wl}: {plain:.3f} s plain")
if "--steps" not in sys.argv:
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    llm.generate(prompts, sps, use_tqdm=False)
    prof.disable()
    profiled = time.perf_counter() - t
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
    print(f"{profiled:.3f} s under cProfile")
    print(s.getvalue()[-6000:])


def kernel_category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("gemm", "nvjet", "cutlass", "sm90_", "gemv", "splitk", "cublas")):
        return "gemm"
    if any(k in n for k in ("_extend_kernel", "_decode_", "_store_kv", "_rotary", "flash", "attention")):
        return "attention"
    if any(k in n for k in ("memcpy", "memset")):
        return "copy"
    return "other"


def print_kernel_summary(prof, first: int, last: int, wall_s: float, tokens: int) -> None:
    from torch.autograd import DeviceType
    nsteps = last - first
    per_cat: dict[str, float] = {}
    rows = []
    for ev in prof.key_averages():
        if ev.device_type != DeviceType.CUDA:  # CPU ops also carry their kernels' time: count kernels only
            continue
        dev = ev.self_device_time_total
        if dev <= 0:
            continue
        per_cat[kernel_category(ev.key)] = per_cat.get(kernel_category(ev.key), 0.0) + dev
        rows.append((dev, ev.count, ev.key))
    gpu = sum(per_cat.values())
    print(f"steps {first}..{last - 1}: wall {wall_s * 1e3 / nsteps:.3f} ms/step, GPU busy "
          f"{gpu / 1e3 / nsteps:.3f} ms/step, {tokens / nsteps:.1f} tokens (prompt+generated) per step")
    for cat, us in sorted(per_cat.items(), key=lambda kv: -kv[1]):
        print(f"  {cat:10s} {us / 1e3 / nsteps:8.3f} ms/step  {100 * us / max(gpu, 1e-9):5.1f}%")
    for dev, count, key in sorted(rows, reverse=True)[:20]:
        print(f"  {dev / nsteps:9.1f} us/step {count / nsteps:7.1f} calls/step  {key[:110]}")


if "--steps" in sys.argv:
    # Every step's wall time and token counts for the whole run (where the run's time goes, by kind of step), and
    # torch.profiler kernel tables for the given windows of steps ("0:100,300:400").
    from torch.profiler import ProfilerActivity, profile
    windows = [tuple(int(x) for x in w.split(":")) for w in sys.argv[sys.argv.index("--steps") + 1].split(",")]
    engine = llm.llm_engine
    inner = engine.step_with_stats
    steps: list[tuple[float, int, int]] = []      # (seconds, prompt tokens launched, tokens generated)
    active: dict = {}

    def recorded_step():
        n = len(steps)
        for first, last in windows:
            if n == first:
                active["prof"] = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                active["prof"].__enter__()
                active["start"] = (n, last)
        t = time.perf_counter()
        out = inner()
        steps.append((time.perf_counter() - t, out[1].num_prompt_tokens, out[1].num_generation_tokens))
        if "start" in active and len(steps) == active["start"][1]:
            first, last = active.pop("start")
            prof = active.pop("prof")
            prof.__exit__(None, None, None)
            window = steps[first:last]
            print_kernel_summary(prof, first, last, sum(w[0] for w in window), sum(w[1] + w[2] for w in window))
        return out

    engine.step_with_stats = recorded_step
    t = time.perf_counter()
    llm.generate(prompts, sps, use_tqdm=False)
    total = time.perf_counter() - t
    engine.step_with_stats = inner
    print(f"whole run (profiled windows included): {total:.2f} s, {len(steps)} steps")
    buckets = [(0, 1), (1, 2), (2, 8), (8, 32), (32, 64), (64, 128), (128, 256), (256, 512), (512, 1 << 30)]
    for label, with_prompt in (("decode only", False), ("with prompt tokens", True)):
        for lo, hi in buckets:
            sel = [w for w in steps if (w[1] > 0) == with_prompt and lo <= w[2] < hi]
            if sel:
                secs = sum(w[0] for w in sel)
                print(f"  {label:18s} generated {lo:>4}-{hi - 1 if hi < 1 << 30 else 'max':>4}: {len(sel):5d} steps "
                      f"{secs:7.2f} s ({100 * secs / total:4.1f}%) {1e3 * secs / len(sel):7.2f} ms/step, "
                      f"prompt tok/step {sum(w[1] for w in sel) / len(sel):7.0f}")

if "--torch-profile" in sys.argv:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        llm.generate(prompts, sps, use_tqdm=False)
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
