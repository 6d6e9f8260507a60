"""DeepSeek MLA prefill under chunked prefill: session 35's V2-Lite-shaped model (benchmarks/cpu_session35), one
prompt of ``prompt`` tokens cut into chunks of ``max_num_batched_tokens``, so every chunk after the first attends over
cached context; the prefill time (one generated token), best of two, for whatever PAGEDLLM_MLA_PREFILL is set
(expanded: its rules decide per step; expanded-always; absorbed), on the CPU with one torch thread; ``--gpu``: on
the GPU in bf16 (the Triton backend, CUDA graphs), best of ``--repeats``.

Usage: PAGEDLLM_MLA_PREFILL=MODE PYTHONPATH=TREE python benchmarks/cpu_session36/mla_prefill_chunked.py \
           [--prompt 3072] [--max-num-batched-tokens 1024] [--gpu --repeats 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import pagedllm  # noqa: F401  (before torch: pagedllm sets the OpenMP wait policy)
from pagedllm import LLM, SamplingParams

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cpu_session35"))
from mla_latent_ab import v2_lite_shaped  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", type=int, default=3072)
    ap.add_argument("--max-num-batched-tokens", type=int, default=1024)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    device = dict(dtype="bfloat16") if args.gpu else dict(dtype="float32", cpu_threads=1)
    llm = LLM(v2_lite_shaped(tempfile.mkdtemp()), skip_tokenizer_init=True, load_format="dummy",
              kv_cache_memory_gb=1.0, max_model_len=4096, seed=0, enable_prefix_caching=False,
              max_num_batched_tokens=args.max_num_batched_tokens, **device)
    prompt = [{"prompt_token_ids": [(7 * j) % 1000 + 3 for j in range(args.prompt)]}]
    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    llm.generate([{"prompt_token_ids": list(range(3, 19))}], params, use_tqdm=False)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        llm.generate(prompt, params, use_tqdm=False)
        times.append(time.perf_counter() - t)
    print(f"{os.path.dirname(pagedllm.__file__)} PAGEDLLM_MLA_PREFILL={os.environ.get('PAGEDLLM_MLA_PREFILL', '')}: "
          f"prompt {args.prompt} in chunks of {args.max_num_batched_tokens}: prefill {min(times):.3f} s", flush=True)


if __name__ == "__main__":
    main()
