"""Issues 21 / 22's parity check on a machine with 2+ GPUs: greedy tokens of a Qwen2.5-1.5B-shaped model with real
random weights (a checkpoint saved here) at tensor_parallel_size=2 and pipeline_parallel_size=2 (``--settings``:
others) against one GPU, in fp32
(must be identical) and bf16 (equal until the first near-tie: the script prints where each prompt first differs and
the one-GPU run's top-2 log-probability margin there).

    python3 benchmarks/gpu_multi/tp_parity.py [--tokens 64] [--workloads DIR] [--dir /tmp/tp_parity]
                                              [--model qwen2.5-1.5b] [--device cuda] [--settings dtype:tp:pp,...]

Each engine runs in its own process (`run` below), so that the GPUs are empty for the next one. `--device cpu` with
a small `--model` from a workloads.py of your own runs the same comparison on the CPU (gloo), as a smoke test.
"""
import argparse
import json
import os
import subprocess
import sys

PROMPT_SEEDS = range(8)
# dtype:tp:pp, compared with dtype:1:1 (which runs whether listed or not).
SETTINGS = "float32:2:1,float32:1:2,bfloat16:2:1"


def make_checkpoint(path: str, workloads: str, name: str, device: str, override: str = "{}") -> None:
    """Random weights (std 0.02, HF's initializer_range) in fp32, the LM head (tied to the embedding) x 8 so that
    greedy margins are not all near-ties; built on the GPU, saved as safetensors."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    sys.path.insert(0, workloads)
    from workloads import qwen2_config
    cfg = dict(qwen2_config(name), **json.loads(override))
    cfg.pop("architectures", None)
    cfg["torch_dtype"] = "float32"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(Qwen2Config(**cfg)).float().eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(path, safe_serialization=True)


def run(path: str, dtype: str, tp: int, pp: int, tokens: int, out: str, device: str) -> None:
    import numpy as np
    from pagedllm import LLM, SamplingParams
    rng = [np.random.default_rng(s) for s in PROMPT_SEEDS]
    prompts = [{"prompt_token_ids": r.integers(100, 50000, 16 + 24 * i).tolist()} for i, r in enumerate(rng)]
    memory = dict(gpu_memory_utilization=0.6) if device == "cuda" else dict(kv_cache_memory_gb=0.05)
    llm = LLM(model=path, skip_tokenizer_init=True, dtype=dtype, tensor_parallel_size=tp, pipeline_parallel_size=pp,
              max_model_len=1024, seed=0, **memory)
    sp = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True, detokenize=False, logprobs=2)
    outs = llm.generate(prompts, sp, use_tqdm=False)
    result = []
    for o in outs:
        c = o.outputs[0]
        margins = []
        for lp in c.logprobs:
            top = sorted((v.logprob for v in lp.values()), reverse=True)
            margins.append(top[0] - top[1] if len(top) > 1 else float("inf"))
        result.append({"tokens": list(c.token_ids), "margins": margins})
    with open(out, "w") as f:
        json.dump(result, f)


def main() -> None:
    if sys.argv[1:2] == ["make"]:
        make_checkpoint(*sys.argv[2:7])
        return
    if sys.argv[1:2] == ["run"]:
        path, dtype, tp, pp, tokens, out, device = sys.argv[2:9]
        run(path, dtype, int(tp), int(pp), int(tokens), out, device)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--workloads", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "bench"))
    ap.add_argument("--dir", default="/tmp/tp_parity")
    ap.add_argument("--model", default="qwen2.5-1.5b", help="a name of workloads.py's qwen2_config")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--override", default="{}", help='config keys, e.g. \'{"num_attention_heads": 16}\' for TP=8')
    ap.add_argument("--settings", default=SETTINGS, help="dtype:tp:pp,... (4 GPUs: float32:4:1,float32:2:2,...)")
    args = ap.parse_args()
    settings = [(d, int(t), int(p)) for d, t, p in (x.split(":") for x in args.settings.split(","))]
    settings = [(d, 1, 1) for d in dict.fromkeys(d for d, _, _ in settings)] + settings
    ckpt = os.path.join(args.dir, "ckpt")
    if not os.path.exists(os.path.join(ckpt, "config.json")):
        subprocess.run([sys.executable, __file__, "make", ckpt, args.workloads, args.model, args.device, args.override],
                       check=True)
    results = {}
    for dtype, tp, pp in settings:
        out = os.path.join(args.dir, f"{dtype}_tp{tp}_pp{pp}.json")
        proc = subprocess.run([sys.executable, __file__, "run", ckpt, dtype, str(tp), str(pp), str(args.tokens), out,
                               args.device], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{dtype} tp={tp} pp={pp}: FAILED\n{proc.stderr[-3000:]}", flush=True)
            continue
        with open(out) as f:
            results[(dtype, tp, pp)] = json.load(f)
    for dtype, tp, pp in settings:
        if (tp, pp) == (1, 1) or (dtype, tp, pp) not in results or (dtype, 1, 1) not in results:
            continue
        ref, got = results[(dtype, 1, 1)], results[(dtype, tp, pp)]
        same = sum(a["tokens"] == b["tokens"] for a, b in zip(ref, got))
        line = f"{dtype} tp={tp} pp={pp} vs one GPU: {same} of {len(ref)} prompts identical ({args.tokens} tokens)"
        for i, (a, b) in enumerate(zip(ref, got)):
            if a["tokens"] != b["tokens"]:
                k = next(j for j, (x, y) in enumerate(zip(a["tokens"], b["tokens"])) if x != y)
                line += f"; prompt {i} first differs at token {k} (one-GPU top-2 margin there {a['margins'][k]:.2e})"
        print(line, flush=True)


if __name__ == "__main__":
    main()
