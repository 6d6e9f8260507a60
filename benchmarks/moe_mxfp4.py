"""gpt-oss's experts on the GPU, MXFP4 kept vs bf16: the fused MoE kernels alone, and the engine's decode.

    python benchmarks/moe_mxfp4.py kernels [--tokens 1 16 256] [--model 20b|120b] [--tiles M,N,K,WARPS]
    python benchmarks/moe_mxfp4.py engine [--model 20b] [--layers N] [--batch 1]

``kernels``: one MoE layer of gpt-oss-20b (32 experts, top 4, H = I = 2880; 120b: 128 experts) through
``fused_moe`` with random weights (MXFP4: random bytes, scales around 2 ** -6; bf16: those values dequantized), the
experts' biases and the clamped SwiGLU, random routing, bf16 activations; timed as CUDA graphs (the engine captures
them; the routing's alignment ops are inside). Prints one JSON line per token count and format with the time, the
bytes of the chosen experts' weights (every expert a token routes to is read once a launch) and that over the time.
``--tiles`` replaces ``triton_moe._tiles``' pick for the MXFP4 runs (e.g. ``16,32,128,4``: twice the decode
programs, for the unpack's latency), to try other tiles in one GPU call.

``engine``: the published config (``load_format="dummy"``), its experts MXFP4 (the checkpoint's ``quant_method``) or
bf16 (the same config without it; 120b's do not fit one GPU), greedy decode of 128 tokens at ``--batch`` requests;
one JSON line each.

Prediction (session 34, written without a GPU; H100 at ~3 TB/s): at batch 1 a gpt-oss-20b MoE layer reads 4
experts, 99.5 M values: 199 MB in bf16 (>= 66 us), 52.9 MB in MXFP4 (>= 18 us); the unpack (7.8 / 8.4 SASS
instructions a weight, kernels/triton_moe.py ``_mxfp4_tile``) bounds MXFP4 at >= 26 us at full issue rate, and
with ~1.4 programs an SM at decode it will not get that: ~30-50 us vs ~70 us.
A decode step (24 layers + attention 1.27 GB + LM head 1.16 GB, the same in both): 7.2 GB in bf16, 3.7 GB in MXFP4,
so ~1.5-1.9x the decode tokens/s. M = 16 (64 slots over 32 experts: nearly all read) and 256: the same byte ratio,
the unpack amortized over more rows a tile, so MXFP4 should stay ahead.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

SHAPES = {"20b": dict(experts=32, layers=24), "120b": dict(experts=128, layers=36)}
HIDDEN = INTER = 2880
TOP_K = 4


def _kernels(args) -> None:
    import triton

    from pagedllm.kernels import triton_moe
    from pagedllm.kernels.triton_moe import fused_moe
    from pagedllm.model.quantization.mxfp4 import dequantize_mxfp4
    num = SHAPES[args.model]["experts"]
    gen = torch.Generator(device="cuda").manual_seed(0)

    def mxfp4(rows, cols):
        blocks = torch.randint(0, 256, (num, rows, cols // 32, 16), generator=gen, dtype=torch.uint8, device="cuda")
        scales = torch.randint(119, 123, (num, rows, cols // 32), generator=gen, dtype=torch.uint8, device="cuda")
        return blocks.flatten(-2), scales, dequantize_mxfp4(blocks, scales, torch.bfloat16)

    q13, s13, d13 = mxfp4(2 * INTER, HIDDEN)
    q2, s2, d2 = mxfp4(HIDDEN, INTER)
    b13 = torch.randn(num, 2 * INTER, device="cuda", dtype=torch.bfloat16) * 0.1
    b2 = torch.randn(num, HIDDEN, device="cuda", dtype=torch.bfloat16) * 0.1
    common = dict(w13_bias=b13, w2_bias=b2, swiglu_limits=(1.702, 7.0))
    formats = {"mxfp4": dict(w13=q13, w2=q2, w13_scale=s13, w2_scale=s2, mxfp4=True), "bf16": dict(w13=d13, w2=d2)}
    picks = triton_moe._tiles
    tiles = tuple(int(v) for v in args.tiles.split(",")) if args.tiles else None
    for tokens in args.tokens:
        x = torch.randn(tokens, HIDDEN, device="cuda", dtype=torch.bfloat16)
        ids = torch.rand(tokens, num, device="cuda", generator=gen).topk(TOP_K, dim=-1).indices
        weights = torch.softmax(torch.randn(tokens, TOP_K, device="cuda"), -1).to(torch.bfloat16)
        chosen = ids.unique().numel()
        outs = {}
        for name, w in formats.items():
            triton_moe._tiles = (lambda slots, experts, mxfp4=False: tiles) if tiles and name == "mxfp4" else picks
            outs[name] = fused_moe(x, top_ids=ids, top_weights=weights, **w, **common)
            ms = triton.testing.do_bench_cudagraph(lambda: fused_moe(x, top_ids=ids, top_weights=weights, **w,
                                                                     **common))
            per_value = 17 / 32 if name == "mxfp4" else 2
            read = chosen * 3 * HIDDEN * INTER * per_value
            print(json.dumps(dict(bench="fused_moe", model=f"gpt-oss-{args.model}", format=name, tokens=tokens,
                                  tiles=triton_moe._tiles(tokens * TOP_K, num, name == "mxfp4"),
                                  experts_read=chosen, us=round(ms * 1e3, 1), weight_mb=round(read / 1e6, 1),
                                  gb_s=round(read / ms / 1e6, 1),
                                  per_step_ms=round(ms * SHAPES[args.model]["layers"], 3))), flush=True)
        err = ((outs["mxfp4"].float() - outs["bf16"].float()).norm() / outs["bf16"].float().norm()).item()
        assert err < 2e-2, f"MXFP4 and bf16 outputs differ: {err}"


def _published_config(model: str, layers: int | None, mxfp4: bool) -> dict:
    shape = SHAPES[model]
    n = layers or shape["layers"]
    config = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": HIDDEN,
              "intermediate_size": INTER, "head_dim": 64, "num_attention_heads": 64, "num_key_value_heads": 8,
              "num_hidden_layers": n, "layer_types": ["sliding_attention", "full_attention"] * (n // 2) +
              ["sliding_attention"] * (n % 2), "sliding_window": 128, "num_local_experts": shape["experts"],
              "num_experts_per_tok": TOP_K, "vocab_size": 201088, "max_position_embeddings": 131072,
              "rms_norm_eps": 1e-5, "attention_bias": True, "tie_word_embeddings": False, "swiglu_limit": 7.0,
              "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "rope_type": "yarn",
                               "original_max_position_embeddings": 4096, "truncate": False},
              "rope_theta": 150000, "hidden_act": "silu", "torch_dtype": "bfloat16", "eos_token_id": 200002,
              "pad_token_id": 199999}
    if mxfp4:
        config["quantization_config"] = {"quant_method": "mxfp4"}
    return config


def _engine(args) -> None:
    from pagedllm import LLM, SamplingParams
    fmt = args.format
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(_published_config(args.model, args.layers, fmt == "mxfp4"), f)
    llm = LLM(model=d, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", max_model_len=2048,
              gpu_memory_utilization=0.90, seed=0)
    prompts = [{"prompt_token_ids": list(range(100 + i, 164 + i))} for i in range(args.batch)]
    sp = SamplingParams(max_tokens=128, ignore_eos=True, temperature=0.0, detokenize=False)
    llm.generate(prompts, sp, use_tqdm=False)
    t = time.perf_counter()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    dt = time.perf_counter() - t
    n_out = sum(len(o.outputs[0].token_ids) for o in outs)
    runner = llm.llm_engine.runner
    print(json.dumps(dict(bench="decode", model=f"gpt-oss-{args.model}", format=fmt, batch=args.batch,
                          layers=args.layers or SHAPES[args.model]["layers"], seconds=round(dt, 3),
                          output_tok_s=round(n_out / dt, 1), ms_per_step=round(dt / 128 * 1e3, 3),
                          weights_gib=round(runner.weights_bytes / 2**30, 2))), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["kernels", "engine"])
    ap.add_argument("--model", choices=list(SHAPES), default="20b")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--format", choices=["mxfp4", "bf16"], default="mxfp4", help="engine: the experts' form")
    ap.add_argument("--layers", type=int, default=None, help="engine: fewer layers (a quicker A/B)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tiles", default=None, help="kernels: BLOCK_M,BLOCK_N,BLOCK_K,warps for the MXFP4 runs")
    args = ap.parse_args()
    (_kernels if args.what == "kernels" else _engine)(args)


if __name__ == "__main__":
    main()
