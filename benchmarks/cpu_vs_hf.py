"""pagedllm vs HF transformers on the CPU, side by side in one run, on the bundled SmolLM2 GGUF (fp32, greedy).

python benchmarks/cpu_vs_hf.py [--new-tokens 128] [--batch 16]
Prints output tok/s for: one request (HF generate vs pagedllm), and BATCH concurrent requests (HF static padded
batch vs pagedllm continuous batching), for pagedllm in each of --dtypes. Every request generates exactly
--new-tokens tokens (ignore_eos / min_new_tokens), so both sides do the same work.
"""
import argparse
import time

import torch

from pagedllm import LLM, SamplingParams
from pagedllm.model.loader import BUNDLED_FILE, bundled_model_path

PROMPTS = ["The capital of France is", "Hello, my name is", "Once upon a time, in a small village,",
           "def fibonacci(n):", "The best way to learn a new language is", "Water boils at",
           "In 1969, the first", "A recipe for pancakes:"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dtypes", default="float32,bfloat16", help="pagedllm dtypes to run (HF runs fp32)")
    args = ap.parse_args()
    n = args.new_tokens
    prompts = [PROMPTS[i % len(PROMPTS)] + f" ({i})" * (i % 3) for i in range(args.batch)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    from transformers import AutoModelForCausalLM, AutoTokenizer
    import os
    folder = os.path.dirname(bundled_model_path())
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=BUNDLED_FILE)
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=BUNDLED_FILE, dtype=torch.float32).eval()
    tok.padding_side = "left"

    def hf_run(batch):
        enc = tok(batch, return_tensors="pt", padding=True)
        with torch.inference_mode():
            t = time.perf_counter()
            out = hf.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              pad_token_id=tok.pad_token_id)
            dt = time.perf_counter() - t
        return (out.shape[1] - enc.input_ids.shape[1]) * len(batch) / dt

    hf_run(prompts[:1])  # warm-up
    hf_single = hf_run(prompts[:1])
    hf_batch = hf_run(prompts)
    del hf

    print(f"HF transformers generate (fp32): single {hf_single:7.1f} tok/s   static batch of {args.batch} "
          f"{hf_batch:7.1f} tok/s")
    for dtype in args.dtypes.split(","):
        llm = LLM(max_model_len=2048, kv_cache_memory_gb=1, dtype=dtype)
        sp = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)

        def ours(batch):
            t = time.perf_counter()
            outs = llm.generate(batch, sp, use_tqdm=False)
            return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t)

        ours(prompts[:1])  # warm-up
        single = ours(prompts[:1])
        llm.reset_prefix_cache()
        batch = ours(prompts)
        print(f"pagedllm {dtype:9s}: single {single:7.1f} tok/s ({single / hf_single:.2f}x HF)   {args.batch} concurrent "
              f"{batch:7.1f} tok/s ({batch / hf_batch:.2f}x HF)")
        del llm


if __name__ == "__main__":
    main()
