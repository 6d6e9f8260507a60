"""kv_offloading_size on a GPU (session 25, prepared on the CPU): the time to first token of a long prompt whose KV
blocks a small device cache evicted, recomputed (no CPU tier) against copied back from the CPU tier.

python3 benchmarks/gpu_session25/offload_ab.py [qwen2.5-7b|qwen2.5-1.5b|<model folder>] [prompt tokens]

Each engine: the prompt once (max_tokens=1), then other prompts that fill the device cache (the prompt's blocks are
evicted; with the tier they are copied to CPU), then the prompt again, timed. Prints the second run's seconds, the
prefix-cache hit tokens and the tier's counters. Prediction (H100/H200, 7B dummy bf16, 8,192 tokens): recompute
~0.2-0.4 s (a 7B prefill of 8k tokens), the copy back of 511 blocks (~470 MB of KV) ~10-40 ms."""
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, ".bench/sb")
from pagedllm import LLM, SamplingParams  # noqa: E402


def model_dir(name: str) -> tuple[str, dict]:
    if os.path.isdir(name):
        return name, {}
    from workloads import qwen2_config
    d = tempfile.mkdtemp()
    with open(f"{d}/config.json", "w") as f:
        json.dump(qwen2_config(name), f)
    return d, {"load_format": "dummy", "dtype": "bfloat16"}


def run(path: str, extra: dict, n: int, offload: float | None) -> None:
    blocks = n // 16 + 8                     # the prompt fits, then the others push it out
    llm = LLM(path, skip_tokenizer_init=True, max_model_len=n + 16, num_gpu_blocks_override=blocks, max_num_seqs=4,
              kv_offloading_size=offload, enforce_eager=False, **extra)
    sp = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    prompt = [(7 * i) % 5000 + 100 for i in range(n)]
    llm.generate([{"prompt_token_ids": prompt}], sp, use_tqdm=False)
    for k in range(3):
        llm.generate([{"prompt_token_ids": [(11 * i + k) % 5000 + 100 for i in range(n)]}], sp, use_tqdm=False)
    t = time.perf_counter()
    llm.generate([{"prompt_token_ids": prompt}], sp, use_tqdm=False)
    took = time.perf_counter() - t
    kv = llm.llm_engine.kv_cache
    print(json.dumps({"kv_offloading_size": offload, "prompt_tokens": n, "second_run_s": round(took, 4),
                      "hit_tokens": kv.pool.hit_tokens, "offloaded_blocks": kv.num_blocks_offloaded,
                      "offload_hit_blocks": kv.num_offload_hit_blocks}), flush=True)
    llm.llm_engine.core.shutdown()


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "qwen2.5-7b"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
    path, extra = model_dir(name)
    for offload in (None, 8.0, None, 8.0):      # alternating, twice
        run(path, extra, n, offload)
