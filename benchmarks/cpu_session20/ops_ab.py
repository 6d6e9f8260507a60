"""Interleaved A/B of session 20's op-count cut on the CPU (issue 19): A = HEAD~ (BASE)'s RMSNorm._norm for bf16/fp16
(8 eager ops), cpu_packed_matmul (reshapes and casts always dispatched) and the torch backend's kv_cache[0] /
kv_cache[1] selects; B = the working tree's (fused fp32 normalisation, no-op reshapes / casts skipped, one unbind).
One engine; the three functions are swapped between calls, order alternating per round; tokens compared.

python benchmarks/cpu_session20/ops_ab.py DTYPE BATCH [rounds=4] [base=be3f090] [tokens=128]
"""
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

from pagedllm import LLM, SamplingParams   # first: it sets the OpenMP wait policy before torch loads its runtime
from pagedllm.attention.backends import torch_backend
from pagedllm.kernels.quant import cpu as quant_cpu
from pagedllm.model.layers import norm
from pagedllm.model.quantization import int_weight

PROMPTS = ["The capital of France is", "Hello, my name is", "Once upon a time, in a small village,",
           "def fibonacci(n):", "The best way to learn a new language is", "Water boils at",
           "In 1969, the first", "A recipe for pancakes:"]


def module_at(rev: str, path: str, name: str):
    src = subprocess.check_output(["git", "show", f"{rev}:{path}"], text=True)
    f = os.path.join(tempfile.mkdtemp(), name + ".py")
    with open(f, "w") as out:
        out.write(src)
    spec = importlib.util.spec_from_file_location(name, f)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod          # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    dtype, batch = sys.argv[1], int(sys.argv[2])
    opts = dict(a.split("=", 1) for a in sys.argv[3:] if "=" in a)
    rounds, n, base = int(opts.get("rounds", 4)), int(opts.get("tokens", 128)), opts.get("base", "be3f090")
    old_norm = module_at(base, "pagedllm/model/layers/norm.py", "norm_base")
    old_cpu = module_at(base, "pagedllm/kernels/quant/cpu.py", "quant_cpu_base")
    old_tb = module_at(base, "pagedllm/attention/backends/torch_backend.py", "torch_backend_base")
    impl = {
        "A": (old_norm.RMSNorm._norm, old_cpu.cpu_packed_matmul, old_tb.TorchAttentionBackend.write_kv,
              old_tb.TorchAttentionBackend.attend),
        "B": (norm.RMSNorm._norm, quant_cpu.cpu_packed_matmul, torch_backend.TorchAttentionBackend.write_kv,
              torch_backend.TorchAttentionBackend.attend),
    }
    llm = LLM("HuggingFaceTB/SmolLM2-135M-Instruct", max_model_len=2048, kv_cache_memory_gb=1, dtype=dtype,
              max_num_seqs=max(batch, 1))
    tok = llm.get_tokenizer()
    prompts = [tok(PROMPTS[i % len(PROMPTS)] + f" ({i})" * (i % 3)).input_ids for i in range(batch)]
    sp = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)

    def run(name: str):
        n_, m_, w_, a_ = impl[name]
        norm.RMSNorm._norm = n_
        int_weight.cpu_packed_matmul = m_
        torch_backend.TorchAttentionBackend.write_kv = w_
        torch_backend.TorchAttentionBackend.attend = a_
        t0 = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        dt = time.perf_counter() - t0
        return batch * n / dt, [o.outputs[0].token_ids for o in outs]

    run("B")     # warm-up (first touch of the KV cache, oneDNN primitives)
    res = {"A": [], "B": []}
    same = True
    for r in range(rounds):
        order = ("A", "B") if r % 2 == 0 else ("B", "A")
        toks = {}
        for name in order:
            tps, toks[name] = run(name)
            res[name].append(tps)
        same &= toks["A"] == toks["B"]
        print(f"round {r}: A {res['A'][-1]:.1f}  B {res['B'][-1]:.1f} tok/s  load {os.getloadavg()[0]:.2f}", flush=True)
    a, b = statistics.median(res["A"]), statistics.median(res["B"])
    wins = sum(y > x for x, y in zip(res["A"], res["B"]))
    print(f"{dtype} x {batch}: A {a:.1f} [{min(res['A']):.1f}, {max(res['A']):.1f}]  B {b:.1f} [{min(res['B']):.1f}, "
          f"{max(res['B']):.1f}]  B/A {b / a:.3f}  B ahead in {wins} of {rounds}  same tokens: {same}")


if __name__ == "__main__":
    main()
