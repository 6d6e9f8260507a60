"""A DeepSeek-V2-Lite-shaped model (its attention: 16 heads, kv_lora_rank 512, rope 64, nope 128, v 128, no
q_lora; 2 layers: one dense, one MoE of 64 experts, vocab cut to 1024), dummy fp32 weights, on the CPU with one torch
thread: the prefill time of ``batch`` prompts of ``prompt`` tokens and the time per decode step of 16 steps after
them. Whatever MLA cache the imported pagedllm runs: put the tree to measure first on PYTHONPATH (a copy of an older
tree runs the A side of an A/B with the same command).

Usage: PYTHONPATH=TREE python benchmarks/cpu_session35/mla_latent_ab.py [--batch 1] [--prompt 1024]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import pagedllm  # noqa: F401  (before torch: pagedllm sets the OpenMP wait policy)
from pagedllm import LLM, SamplingParams


def v2_lite_shaped(path: str) -> str:
    import transformers
    cfg = transformers.DeepseekV2Config(
        vocab_size=1024, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=2,
        num_attention_heads=16, num_key_value_heads=16, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6,
        first_k_dense_replace=1, kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64, qk_nope_head_dim=128,
        v_head_dim=128, topk_method="greedy", max_position_embeddings=8192)
    cfg.architectures = ["DeepseekV2ForCausalLM"]
    cfg.save_pretrained(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=1024)
    args = ap.parse_args()
    path = v2_lite_shaped(tempfile.mkdtemp())
    llm = LLM(path, skip_tokenizer_init=True, load_format="dummy", dtype="float32", kv_cache_memory_gb=1.0,
              max_model_len=4096, seed=0, enable_prefix_caching=False, cpu_threads=1)

    def run(new: int, n: int = args.batch, plen: int = args.prompt) -> float:
        prompts = [{"prompt_token_ids": [(7 * i + j) % 1000 + 3 for j in range(plen)]} for i in range(n)]
        t = time.perf_counter()
        llm.generate(prompts, SamplingParams(max_tokens=new, temperature=0, ignore_eos=True), use_tqdm=False)
        return time.perf_counter() - t

    run(2, 1, 16)
    prefill = min(run(1) for _ in range(2))
    full = min(run(17) for _ in range(2))
    print(f"{os.path.dirname(pagedllm.__file__)}: batch {args.batch} x prompt {args.prompt}: prefill {prefill:.2f} s, "
          f"decode {(full - prefill) / 16 * 1000:.0f} ms/step", flush=True)


if __name__ == "__main__":
    main()
