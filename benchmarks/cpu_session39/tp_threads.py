"""Tensor parallel on the CPU: decode speed by torch threads per rank (session 39, docs/perf.md).

    python benchmarks/cpu_session39/tp_threads.py THREADS [MODEL_DIR]

THREADS: a count given to every rank (cpu_threads), or "default" (the engine's choice: the cores over the ranks).
A random fp32 Llama (hidden 512, MLP 1536, 4 layers, 8 heads / 4 KV heads, vocab 4096) is saved to MODEL_DIR (default
/tmp/tp_threads_llama) on first use; TP=2 over gloo; 4 prompts of 32 tokens, 64 greedy tokens each, best of 3.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "unit"))

from pagedllm import LLM, SamplingParams  # noqa: E402


def main() -> None:
    model = sys.argv[2] if len(sys.argv) > 2 else "/tmp/tp_threads_llama"
    if not os.path.exists(os.path.join(model, "config.json")):
        from tiny_models import save_tiny_llama
        save_tiny_llama(model, 4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                        num_attention_heads=8, num_key_value_heads=4)
    threads = None if sys.argv[1] == "default" else int(sys.argv[1])
    llm = LLM(model=model, skip_tokenizer_init=True, dtype="float32", tensor_parallel_size=2, max_model_len=256,
              kv_cache_memory_gb=0.05, cpu_threads=threads)
    per_rank = llm.collective_rpc(lambda worker: __import__("torch").get_num_threads())
    prompts = [{"prompt_token_ids": [(7 * i + j) % 4000 + 1 for j in range(32)]} for i in range(4)]
    llm.generate(prompts, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)  # warm-up
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        runs.append(time.perf_counter() - t0)
    print(f"threads per rank {per_rank}: runs {[round(r, 2) for r in runs]} s, best {min(runs):.2f} s = "
          f"{4 * 64 / min(runs):.1f} tok/s")


if __name__ == "__main__":
    main()
