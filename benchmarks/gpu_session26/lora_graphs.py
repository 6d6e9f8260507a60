"""enable_lora with and without CUDA graphs (session 26 made the graphs capture the adapters' deltas).

A Qwen2.5 config with dummy weights, a random rank-16 PEFT adapter on all seven projections, greedy decoding with
ignore_eos: one request alone (the per-token latency a chat user sees) and 64 concurrent requests, half of them with
the adapter. Engines in turn (ENGINES, comma-separated, default all): "lora eager" (before this session every LoRA
engine ran this way), "lora graphs torch" (graphs, the deltas in the masked torch form at every step size), "lora
graphs" (graphs, decode-sized deltas by kernels/triton_lora.py), "lora graphs one variant" (the same with
compilation_config cudagraph_specialize_lora false: steps without adapters replay the graphs with the deltas), "no
lora graphs" (the adapters' cost). LoRA engines also run "bs1 base": one request without the adapter. Prints one
JSON line per engine and workload. "64 prefill": 64 other prompts of the same length with max_tokens=1 (the
prompts' steps alone).
TRITON_MAX=N: the largest step (tokens) whose deltas take the Triton kernels (default: lora/layers.py's).

    PYTHONPATH=.:.bench/sb python3 benchmarks/gpu_session26/lora_graphs.py qwen2.5-1.5b
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from workloads import qwen2_config

from pagedllm import LLM, SamplingParams
from pagedllm.lora import layers as lora_layers
from pagedllm.lora.request import LoRARequest

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_adapter(path: Path, cfg: dict, rank: int) -> None:
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}     # (in, out)
    torch.manual_seed(0)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for name, (fan_in, fan_out) in shapes.items():
            part = "self_attn" if name in TARGETS[:4] else "mlp"
            key = f"base_model.model.model.layers.{layer}.{part}.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, dtype=torch.bfloat16) * 0.01
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, dtype=torch.bfloat16) * 0.01
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(TARGETS), "bias": "none"}))


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "qwen2.5-1.5b"
    n, new_tokens = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (64, 128)   # small: a CPU check
    d = Path(tempfile.mkdtemp())
    cfg = qwen2_config(name)
    (d / "model").mkdir()
    (d / "model" / "config.json").write_text(json.dumps(cfg))
    write_adapter(d / "lora", cfg, 16)
    lora = LoRARequest("lora", 1, str(d / "lora"))
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    g = torch.Generator().manual_seed(0)
    prompts = [{"prompt_token_ids": torch.randint(100, 30000, (128,), generator=g).tolist()} for _ in range(n)]
    # Other prompts for the prefill-only run: the prefix cache must not hold them.
    others = [{"prompt_token_ids": torch.randint(100, 30000, (128,), generator=g).tolist()} for _ in range(n)]
    triton_max = int(os.environ.get("TRITON_MAX", lora_layers._TRITON_MAX_TOKENS))
    engines = (("lora eager", dict(enable_lora=True, enforce_eager=True)),
               ("lora graphs torch", dict(enable_lora=True)), ("lora graphs", dict(enable_lora=True)),
               ("lora graphs one variant", dict(enable_lora=True,
                                                compilation_config={"cudagraph_specialize_lora": False})),
               ("no lora graphs", {}))
    chosen = os.environ.get("ENGINES", ",".join(label for label, _ in engines)).split(",")
    for label, kwargs in engines:
        if label not in chosen:
            continue
        # Read when the graphs are captured (and at every eager step): 0 sends every step to the torch form.
        lora_layers._TRITON_MAX_TOKENS = 0 if label == "lora graphs torch" else triton_max
        if kwargs.get("enable_lora"):
            kwargs.update(max_loras=2, max_lora_rank=16)
        if torch.cuda.is_available():
            kwargs.update(gpu_memory_utilization=0.8)
        llm = LLM(str(d / "model"), load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
                  max_model_len=1024, **kwargs)
        with_lora = ((lambda k: [lora if i % 2 == 0 else None for i in range(k)]) if "enable_lora" in kwargs
                     else (lambda k: None))
        llm.generate(prompts[:2], SamplingParams(max_tokens=4), use_tqdm=False, lora_request=with_lora(2))  # warm
        alone = "bs1 adapter" if "enable_lora" in kwargs else "bs1"
        first = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
        runs = [(alone, prompts[:1], params), (f"{n} prefill", others, first), (f"{n} concurrent", prompts, params)]
        if "enable_lora" in kwargs:
            runs.insert(1, ("bs1 base", prompts[1:2], params))
        for workload, batch, sp in runs:
            reqs = (with_lora(len(batch)) if len(batch) > 1 else [lora] if workload == "bs1 adapter" else None)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            outs = llm.generate(batch, sp, use_tqdm=False, lora_request=reqs)
            took = time.perf_counter() - t
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            print(json.dumps({"model": name, "engine": label, "triton_max": lora_layers._TRITON_MAX_TOKENS,
                              "workload": workload, "s": round(took, 3),
                              "output_tok_s": round(tokens / took, 1)}), flush=True)
        del llm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
