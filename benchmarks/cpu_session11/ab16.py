"""Interleaved A/B of one lever at cpu_vs_hf.py's "16 concurrent" (16 prompts x 128 greedy tokens, the bundled
SmolLM2), one engine, the lever switched at run time between the calls; optionally HF transformers' static batch
of 16 in the same rounds. Prints `uptime`'s load with every round.

python benchmarks/cpu_session11/ab16.py LEVER DTYPE [rounds=4] [hf]      (docs/perf.md, issue 19, session 11)
LEVER: int4rows (A: every int4 GEMM through the int4 op; B: above INT4_MAX_ROWS rows the dense bf16 copy; only on
                 the trees f3ceaa9..8d37e44: the dense copy was measured, then removed for its memory)
       gemm1t (A: oneDNN GEMMs on all threads; B: those of <= 16 rows on one thread)
       bf16bmm (A: the bf16 padded decode attention through SDPA; B: baddbmm + softmax + bmm)
"""
import os
import statistics
import sys
import time

from pagedllm import LLM, SamplingParams   # first: it sets the OpenMP wait policy before torch loads its runtime
from pagedllm.model.loader import BUNDLED_FILE, bundled_model_path

import torch  # noqa: E402

PROMPTS = ["The capital of France is", "Hello, my name is", "Once upon a time, in a small village,",
           "def fibonacci(n):", "The best way to learn a new language is", "Water boils at",
           "In 1969, the first", "A recipe for pancakes:"]
B, N = 16, 128


def levers():
    from pagedllm.kernels import torch_attention
    from pagedllm.kernels.quant import cpu as quant_cpu
    rows, bmm_min = getattr(quant_cpu, "INT4_MAX_ROWS", None), torch_attention.BMM_MIN_REQUESTS
    from pagedllm.kernels.cpu_threads import on_one_thread
    from pagedllm.model.layers import embedding, linear
    dense = linear.onednn_linear

    def one_thread_gemms(on: bool) -> None:
        fn = (lambda x, *a: on_one_thread(dense, x, *a) if x.shape[0] <= 16 else dense(x, *a)) if on else dense
        linear.onednn_linear = embedding.onednn_linear = fn
        if rows is not None:
            quant_cpu.onednn_linear = fn
    found = {
        "gemm1t": (lambda: one_thread_gemms(False), lambda: one_thread_gemms(True)),
        "bf16bmm": (lambda: setattr(torch_attention, "BMM_MIN_REQUESTS", 10 ** 9),
                    lambda: setattr(torch_attention, "BMM_MIN_REQUESTS", bmm_min)),
    }
    if rows is not None:
        found["int4rows"] = (lambda: setattr(quant_cpu, "INT4_MAX_ROWS", 10 ** 9),
                             lambda: setattr(quant_cpu, "INT4_MAX_ROWS", rows))
    return found


def main() -> None:
    lever, dtype = sys.argv[1], sys.argv[2]
    rounds = int(next((a.split("=")[1] for a in sys.argv[3:] if a.startswith("rounds=")), 4))
    use_hf = "hf" in sys.argv[3:]
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder = os.path.dirname(bundled_model_path())
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=BUNDLED_FILE)
    tok.padding_side = "left"
    prompts = [tok(PROMPTS[i % len(PROMPTS)] + f" ({i})" * (i % 3)).input_ids for i in range(B)]
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=BUNDLED_FILE, dtype=torch.float32).eval() \
        if use_hf else None
    llm = LLM(max_model_len=2048, kv_cache_memory_gb=1, dtype=dtype, max_num_seqs=B)
    set_a, set_b = levers()[lever]
    sp = SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True)

    def ours() -> tuple[float, list]:
        llm.reset_prefix_cache()
        t = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        return B * N / (time.perf_counter() - t), [o.outputs[0].token_ids for o in outs]

    def hf_run() -> float:
        enc = tok.pad({"input_ids": prompts}, return_tensors="pt")
        t = time.perf_counter()
        with torch.inference_mode():
            hf.generate(**enc, max_new_tokens=N, min_new_tokens=N, do_sample=False, pad_token_id=tok.pad_token_id)
        return B * N / (time.perf_counter() - t)

    llm.generate([{"prompt_token_ids": p} for p in prompts[:2]], SamplingParams(temperature=0.0, max_tokens=4),
                 use_tqdm=False)
    res = {"A": [], "B": [], "HF": []}
    same = True
    for r in range(rounds):
        load = os.getloadavg()[0]
        line = f"round {r} load {load:.2f}:"
        if hf is not None:
            res["HF"].append(hf_run())
            line += f" HF {res['HF'][-1]:.1f}"
        for name, setter in (("A", set_a), ("B", set_b)) if r % 2 == 0 else (("B", set_b), ("A", set_a)):
            setter()
            tps, toks = ours()
            res[name].append(tps)
            if name == "A":
                ref = toks
            line += f" {name} {tps:.1f}"
        print(line, flush=True)
    set_b()
    _, toks_b = ours()
    same = toks_b == ref
    for k, v in res.items():
        if v:
            print(f"{lever} {dtype} {k}: median {statistics.median(v):.1f} [{min(v):.1f}, {max(v):.1f}] tok/s"
                  + (f", {statistics.median(v) / statistics.median(res['HF']):.2f}x HF" if res["HF"] and k != "HF"
                     else ""))
    print(f"tokens A == B: {same}")


if __name__ == "__main__":
    main()
