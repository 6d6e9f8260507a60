"""MoE decode and throughput on the GPU: Qwen3-30B-A3B's shapes (48 layers, 128 experts, top 8), dummy weights,
bf16, the workloads of ../shared/bench/workloads.py (copied to .bench/sb on the GPU runs).

    python benchmarks/moe_gpu.py VARIANT WORKLOAD [WORKLOAD ...] [--layers N]

VARIANT ``fused``: the engine as shipped (kernels/triton_moe.py, CUDA graphs); ``fp8``: the same with
``quantization="fp8"`` (e4m3 experts, per-row scales); ``loop``: the eager per-expert loop
of model/layers/moe.py that the engine ran before on the GPU (host-side routing, ``enforce_eager=True``), for the
A/B. Prints one JSON line per workload in offline_workload.py's form. ``--layers`` trims the model (a quicker A/B;
the per-layer cost is what changes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".bench", "sb"))
from workloads import WORKLOADS  # noqa: E402

QWEN3_30B_A3B = dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", hidden_size=2048,
                     intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48, num_attention_heads=32,
                     num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
                     norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], vocab_size=151936,
                     max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu",
                     tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=151643, eos_token_id=151645)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variant", choices=["fused", "fp8", "loop"])
    ap.add_argument("workloads", nargs="+")
    ap.add_argument("--layers", type=int, default=48)
    args = ap.parse_args()
    from pagedllm import LLM, SamplingParams
    extra = {"quantization": "fp8"} if args.variant == "fp8" else {}
    if args.variant == "loop":
        from pagedllm.model.layers.moe import MoEExperts
        MoEExperts.forward = MoEExperts.expert_loop       # host-side routing: no CUDA graphs
        extra["enforce_eager"] = True
    d = tempfile.mkdtemp()
    json.dump(dict(QWEN3_30B_A3B, num_hidden_layers=args.layers), open(os.path.join(d, "config.json"), "w"))
    t0 = time.perf_counter()
    llm = LLM(model=d, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", max_model_len=4096,
              gpu_memory_utilization=0.90, seed=0, **extra)
    startup = time.perf_counter() - t0
    for wl in args.workloads:
        reqs = WORKLOADS[wl]()
        prompts = [{"prompt_token_ids": ids} for ids, _ in reqs]
        sps = [SamplingParams(max_tokens=o, ignore_eos=True, temperature=0.0, detokenize=False) for _, o in reqs]
        llm.generate(prompts[:4], sps[:4], use_tqdm=False)
        t = time.perf_counter()
        outs = llm.generate(prompts, sps, use_tqdm=False)
        dt = time.perf_counter() - t
        n_out = sum(len(o.outputs[0].token_ids) for o in outs)
        print(json.dumps(dict(engine=f"pagedllm-{args.variant}", model=f"qwen3-30b-a3b-{args.layers}l", workload=wl,
                              requests=len(reqs), seconds=round(dt, 3), output_tokens=n_out,
                              output_tok_s=round(n_out / dt, 1), startup_s=round(startup, 1))), flush=True)


if __name__ == "__main__":
    main()
