"""DeepSeek-V3's attention shape (hidden 7168, 128 heads, q_lora_rank 1536, kv_lora_rank 512, rope 64, nope 128, v 128;
2 layers, their MLPs cut to 256 wide and 8 experts, vocab 1024), dummy weights, on the CPU: the KV block count and
tokens the engine gives a fixed ``kv_cache_memory_gb``, read from the engine (what the start-up log prints), and the
same for the real 61 layers by the engine's own bytes-per-block rule. Whatever MLA cache the imported pagedllm runs:
put the tree to measure first on PYTHONPATH (a copy of an older tree runs the A side).

Usage: PYTHONPATH=TREE python benchmarks/cpu_session36/mla_cache_blocks.py [--kv-gib 1.0] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import os
import tempfile

import pagedllm  # noqa: F401  (before torch: pagedllm sets the OpenMP wait policy)
from pagedllm import LLM


def v3_attention_shaped(path: str) -> str:
    import transformers
    cfg = transformers.DeepseekV3Config(
        vocab_size=1024, hidden_size=7168, intermediate_size=256, moe_intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=128, num_key_value_heads=128, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        n_group=1, topk_group=1, first_k_dense_replace=1, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
        qk_nope_head_dim=128, v_head_dim=128, max_position_embeddings=8192)
    cfg.architectures = ["DeepseekV3ForCausalLM"]
    cfg.save_pretrained(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kv-gib", type=float, default=1.0)
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()
    llm = LLM(v3_attention_shaped(tempfile.mkdtemp()), skip_tokenizer_init=True, load_format="dummy",
              dtype=args.dtype, kv_cache_memory_gb=args.kv_gib, max_model_len=4096, seed=0, cpu_threads=1)
    engine = llm.llm_engine
    runner = engine.runner
    blocks, per_block = engine.vllm_config.cache_config.num_gpu_blocks, runner.bytes_per_block
    per_layer = per_block // runner.num_layers
    full = int(args.kv_gib * (1 << 30)) // (per_layer * 61)
    out = llm.generate([{"prompt_token_ids": list(range(3, 40))}], use_tqdm=False)[0].outputs[0].token_ids
    print(f"{os.path.dirname(pagedllm.__file__)}: {args.dtype}, {args.kv_gib} GiB: {per_layer} bytes per block and "
          f"layer; 2 layers: {blocks} blocks x {runner.block_size} = {blocks * runner.block_size} tokens; 61 layers: "
          f"{full} blocks = {full * runner.block_size} tokens (a generate ran: {len(out)} tokens)", flush=True)


if __name__ == "__main__":
    main()
