"""pagedllm vs HF transformers (and llama.cpp) on the CPU, side by side in one process, on the bundled SmolLM2-135M
GGUF (greedy).

python benchmarks/cpu_vs_hf.py [--modes equal,mixed] [--reps 3] [--dtypes float32,bfloat16]
                               [--new-tokens 64] [--batch 16] [--mixed-requests 64] [--mixed-min 16] [--mixed-max 256]
                               [--llama-cpp auto|off]

HF runs ``generate`` in fp32 (its default on CPU); pagedllm runs in each of --dtypes (``float16`` on the CPU: fp16
weights through fbgemm, fp32 compute). llama.cpp (llama-cpp-python,
installed for the benchmark only, e.g. into its own venv put on PYTHONPATH; its AVX2 build:
``CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF" pip install llama-cpp-python``) runs the same GGUF
file, as it is (Q4_1 blocks, its own kernels), with one thread per core this process may use; only "1 request"
(its Python binding decodes one sequence at a time). ``--llama-cpp auto``: its column when ``llama_cpp`` imports.
All models are loaded once,
then every measurement is repeated --reps times, interleaved (HF, pagedllm dtype 1, dtype 2, HF, ...) so that a
change of load on the machine hits every side alike. Each line reports the median and [min, max] output tok/s,
and the ratio of the medians to HF's. The prefix cache is reset before every pagedllm run (HF has none).
Warm-up: one short generate per model before the first measurement.

Mode ``equal`` (equal work, the engine's raw speed):
  * "1 request": one prompt, exactly --new-tokens tokens (pagedllm ``ignore_eos``, HF ``min_new_tokens``).
  * "B concurrent": --batch prompts of slightly different lengths, each exactly --new-tokens tokens. HF: one
    static, left-padded batch through ``generate``; pagedllm: all submitted at once (continuous batching has
    nothing to gain here: every request starts and ends together).
  tok/s = generated tokens / wall time of the call (prefill included).

Mode ``mixed`` (the realistic case, where continuous batching shows):
  --mixed-requests requests with seeded random prompt lengths (16..192 tokens, cut from a seeded text) and seeded
  random output lengths uniform in [--mixed-min, --mixed-max] tokens, every request generating exactly its own
  length (``ignore_eos``). pagedllm gets all of them at once with ``max_num_seqs=--batch``: at most --batch run
  concurrently, a finished one is replaced by the next waiting one at the next step. HF processes them in order
  in static batches of --batch (left-padded); each batch runs until its longest requested length (HF cannot
  retire a row early), the tokens generated past a row's own length are thrown away. Both sides count only the
  tokens the requests asked for: tok/s = sum of requested lengths / wall time of all of them.
"""
import argparse
import os
import random
import statistics
import time

from pagedllm import LLM, SamplingParams   # first: it sets the OpenMP wait policy before torch loads its runtime
from pagedllm.model.loader import BUNDLED_FILE, bundled_model_path

import torch  # noqa: E402

PROMPTS = ["The capital of France is", "Hello, my name is", "Once upon a time, in a small village,",
           "def fibonacci(n):", "The best way to learn a new language is", "Water boils at",
           "In 1969, the first", "A recipe for pancakes:"]
SENTENCES = ["The river ran quietly past the old mill at the edge of town.", "She opened the letter and laughed.",
             "Prices rose sharply in the third quarter, driven by energy costs.", "def add(a, b):\n    return a + b",
             "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
             "The committee will meet again on Tuesday to discuss the budget.", "Why is the sky blue?",
             "He had never seen so many stars.", "Mix the flour and the eggs, then add milk slowly.",
             "In 1815 the congress redrew the map of Europe.", "The server returned an error: connection refused."]


def mixed_workload(tok, n: int, lo: int, hi: int, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """n prompts (token ids, 16..192 tokens) and n output lengths in [lo, hi], from a fixed seed."""
    rng = random.Random(seed)
    text = " ".join(rng.choice(SENTENCES) for _ in range(4000))
    ids = tok(text).input_ids
    prompts, lens = [], []
    for _ in range(n):
        plen = rng.randint(16, 192)
        start = rng.randrange(0, len(ids) - plen)
        prompts.append(ids[start:start + plen])
        lens.append(rng.randint(lo, hi))
    return prompts, lens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="equal,mixed")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--mixed-requests", type=int, default=64)
    ap.add_argument("--mixed-min", type=int, default=16)
    ap.add_argument("--mixed-max", type=int, default=256)
    ap.add_argument("--dtypes", default="float32,bfloat16",
                    help="pagedllm dtypes to run, e.g. float32,float16 (HF runs fp32)")
    ap.add_argument("--llama-cpp", default="auto", choices=["auto", "off"],
                    help="auto: a llama.cpp column (1 request) when llama_cpp imports")
    args = ap.parse_args()
    n, B = args.new_tokens, args.batch
    modes = args.modes.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")

    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder = os.path.dirname(bundled_model_path())
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=BUNDLED_FILE)
    tok.padding_side = "left"
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=BUNDLED_FILE, dtype=torch.float32).eval()
    llms = {d: LLM(max_model_len=2048, kv_cache_memory_gb=1, dtype=d, max_num_seqs=B)
            for d in args.dtypes.split(",")}
    llama_cpp_model = None
    if args.llama_cpp == "auto":
        try:
            import llama_cpp
        except ImportError:
            print("llama.cpp: llama_cpp does not import here, no column (see the docstring)")
        else:
            threads = len(os.sched_getaffinity(0))
            llama_cpp_model = llama_cpp.Llama(model_path=bundled_model_path(), n_ctx=2048, n_threads=threads,
                                              n_threads_batch=threads, verbose=False)
            print(f"llama.cpp: llama-cpp-python {llama_cpp.__version__}, {threads} threads")

    def hf_generate(batch_ids: list[list[int]], new: int) -> None:
        enc = tok.pad({"input_ids": batch_ids}, return_tensors="pt")
        with torch.inference_mode():
            hf.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                        pad_token_id=tok.pad_token_id)

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    # Workloads as token ids, the same for both sides.
    equal_prompts = [tok(PROMPTS[i % len(PROMPTS)] + f" ({i})" * (i % 3)).input_ids for i in range(B)]
    mixed_prompts, mixed_lens = mixed_workload(tok, args.mixed_requests, args.mixed_min, args.mixed_max)

    def hf_case(case: str) -> float:
        if case == "single":
            return n / timed(lambda: hf_generate(equal_prompts[:1], n))
        if case == "batch":
            return n * B / timed(lambda: hf_generate(equal_prompts, n))

        def run_all():
            for s in range(0, len(mixed_prompts), B):
                hf_generate(mixed_prompts[s:s + B], max(mixed_lens[s:s + B]))
        return sum(mixed_lens) / timed(run_all)

    def ours_case(llm: LLM, case: str) -> float:
        llm.reset_prefix_cache()
        if case in ("single", "batch"):
            prompts = equal_prompts[:1] if case == "single" else equal_prompts
            sp = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
            outs = []
            dt = timed(lambda: outs.extend(llm.generate([{"prompt_token_ids": p} for p in prompts], sp,
                                                        use_tqdm=False)))
            assert all(len(o.outputs[0].token_ids) == n for o in outs)
            return n * len(prompts) / dt
        sps = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for m in mixed_lens]
        outs = []
        dt = timed(lambda: outs.extend(llm.generate([{"prompt_token_ids": p} for p in mixed_prompts], sps,
                                                    use_tqdm=False)))
        assert [len(o.outputs[0].token_ids) for o in outs] == mixed_lens
        return sum(mixed_lens) / dt

    def llama_cpp_case(case: str) -> float | None:
        if case != "single":
            return None

        def run():
            # Llama.generate yields greedy (temp 0) tokens until the caller stops: exactly n, EOS or not.
            for i, _ in enumerate(llama_cpp_model.generate(equal_prompts[0], temp=0.0, reset=True)):
                if i + 1 == n:
                    break
        return n / timed(run)

    # Warm-up.
    if llama_cpp_model is not None:
        for i, _ in enumerate(llama_cpp_model.generate(equal_prompts[1], temp=0.0, reset=True)):
            if i == 3:
                break
    hf_generate(equal_prompts[:2], 4)
    for llm in llms.values():
        llm.generate([{"prompt_token_ids": p} for p in equal_prompts[:2]],
                     SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), use_tqdm=False)

    cases = []
    if "equal" in modes:
        cases += [("single", f"equal work, 1 request x {n} tokens"),
                  ("batch", f"equal work, {B} requests x {n} tokens (HF: static batch of {B}; pagedllm: "
                            f"{B} concurrent)")]
    if "mixed" in modes:
        cases.append(("mixed", f"mixed, {len(mixed_lens)} requests, prompts 16..192, outputs "
                               f"{args.mixed_min}..{args.mixed_max} tokens (sum {sum(mixed_lens)}) (HF: static "
                               f"batches of {B}; pagedllm: max_num_seqs={B})"))
    for case, title in cases:
        runs: dict[str, list[float]] = {"HF fp32": []} | {f"pagedllm {d}": [] for d in llms}
        if llama_cpp_model is not None and case == "single":
            runs["llama.cpp (Q4_1)"] = []
        for _ in range(args.reps):
            runs["HF fp32"].append(hf_case(case))
            for d, llm in llms.items():
                runs[f"pagedllm {d}"].append(ours_case(llm, case))
            if "llama.cpp (Q4_1)" in runs:
                runs["llama.cpp (Q4_1)"].append(llama_cpp_case(case))
        print(f"\n{title}: output tok/s, median [min, max] of {args.reps}")
        base = statistics.median(runs["HF fp32"])
        for name, vals in runs.items():
            med = statistics.median(vals)
            ratio = "" if name == "HF fp32" else f"  {med / base:.2f}x HF"
            if name.startswith("pagedllm") and "llama.cpp (Q4_1)" in runs:
                ratio += f", {med / statistics.median(runs['llama.cpp (Q4_1)']):.2f}x llama.cpp"
            print(f"  {name:18s} {med:7.1f} [{min(vals):6.1f}, {max(vals):6.1f}]{ratio}", flush=True)


if __name__ == "__main__":
    main()
