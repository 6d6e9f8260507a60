"""Where a 16-request decode step of the bundled SmolLM2 goes on the CPU (issue 19, session 11).

python benchmarks/cpu_session11/profile16.py float32|float16|bfloat16|bfloat16-dense [prof] [n=127] [kv=1 (GiB)]

Times generate() of 16 prompts (cpu_vs_hf.py's "16 concurrent") x (1 + N) tokens minus x 1 token = N decode steps,
split by wrapping the model's forward, compute_logits and the sampler (the rest = scheduler, input preparation,
output processing). ``prof``: also torch.profiler over N steps, the ops by self time and the GEMMs' share.
"""
import collections
import statistics
import sys
import time

from pagedllm import LLM, SamplingParams   # first: it sets the OpenMP wait policy before torch loads its runtime

import torch  # noqa: E402

PROMPTS = ["The capital of France is", "Hello, my name is", "Once upon a time, in a small village,",
           "def fibonacci(n):", "The best way to learn a new language is", "Water boils at",
           "In 1969, the first", "A recipe for pancakes:"]
B = 16
N = int(next((a[2:] for a in sys.argv if a.startswith("n=")), 127))    # decode steps timed
GEMM_OPS = ("mkldnn::_linear_pointwise", "aten::_weight_int4pack_mm_for_cpu", "quantized::linear_dynamic_fp16",
            "aten::addmm", "aten::mm", "aten::linear")


def main() -> None:
    dtype = sys.argv[1]
    if dtype == "bfloat16-dense":     # the GGUF dequantized to dense bf16 (oneDNN) instead of kept in 4 bits
        import pagedllm.model.quantization.gguf as gguf
        gguf.int4pack_supported = lambda: False
    kv_gb = float(next((a[3:] for a in sys.argv if a.startswith("kv=")), 1))
    llm = LLM(max_model_len=2048, kv_cache_memory_gb=kv_gb, dtype=dtype.split("-")[0], max_num_seqs=B)
    prompts = [PROMPTS[i % len(PROMPTS)] + f" ({i})" * (i % 3) for i in range(B)]
    model, sampler = _find(llm)
    spent = collections.Counter()

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapper
    model.forward = timed("forward", model.forward)
    model.compute_logits = timed("logits", model.compute_logits)
    sampler.sample = timed("sampler", sampler.sample)

    def gen(n):
        return llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True), use_tqdm=False)
    gen(N + 1)     # warm-up: the KV cache's pages touched
    rows = []
    for _ in range(3):
        spent.clear()
        t = time.perf_counter()
        gen(1)
        t1, s1 = time.perf_counter() - t, dict(spent)
        spent.clear()
        t = time.perf_counter()
        gen(N + 1)
        tn, sn = time.perf_counter() - t, dict(spent)
        step = (tn - t1) / N * 1e3
        parts = {k: (sn.get(k, 0) - s1.get(k, 0)) / N * 1e3 for k in ("forward", "logits", "sampler")}
        rows.append((step, parts))
        print(f"{dtype}: step {step:.1f} ms = forward {parts['forward']:.1f} + head {parts['logits']:.1f} + "
              f"sampler {parts['sampler']:.1f} + host {step - sum(parts.values()):.1f}   "
              f"({B * N / (tn - t1):.0f} tok/s of decode)", flush=True)
    print(f"{dtype}: median step {statistics.median(r[0] for r in rows):.1f} ms")
    if "prof" in sys.argv[2:]:
        from torch.profiler import ProfilerActivity, profile
        gen(1)
        with profile(activities=[ProfilerActivity.CPU]) as p1:
            gen(1)
        with profile(activities=[ProfilerActivity.CPU]) as pn:
            gen(N + 1)
        a1 = {e.key: (e.self_cpu_time_total, e.count) for e in p1.key_averages()}
        diff = []
        for e in pn.key_averages():
            t0, c0 = a1.get(e.key, (0, 0))
            diff.append((e.key, (e.self_cpu_time_total - t0) / N / 1e3, (e.count - c0) / N))
        diff.sort(key=lambda r: -r[1])
        total = sum(r[1] for r in diff)
        gemm = sum(r[1] for r in diff if r[0] in GEMM_OPS)
        print(f"profiled: ops' self time {total:.1f} ms/step, GEMMs {gemm:.1f} ms ({gemm / total:.0%})")
        for k, ms, c in diff[:28]:
            print(f"op {ms:7.2f} ms  {c:6.0f} calls  {ms / max(c, 1) * 1e3:8.1f} us/call  {k}")


def _find(llm):
    """The model and the sampler of the in-process engine (walks the attribute tree once)."""
    seen, todo = set(), [llm]
    model = sampler = None
    while todo and (model is None or sampler is None):
        o = todo.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if hasattr(o, "compute_logits") and isinstance(o, torch.nn.Module) and model is None:
            model = o
        if type(o).__name__ == "Sampler":
            sampler = o
        d = getattr(o, "__dict__", None)
        if d and not isinstance(o, torch.nn.Module):
            todo.extend(v for v in d.values() if hasattr(v, "__dict__"))
            todo.extend(x for v in d.values() if isinstance(v, (list, tuple)) for x in v if hasattr(x, "__dict__"))
    assert model is not None and sampler is not None
    return model, sampler


if __name__ == "__main__":
    main()
