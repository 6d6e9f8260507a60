"""Prefill time of one prompt (64 / 512 / 1536 tokens, 1 output token) of the bundled SmolLM2 with dtype="bfloat16":
the GGUF's 4-bit layers kept (kept) or dequantized at load (dense). python benchmarks/cpu_session10/prefill_ab.py kept|dense"""
import sys, time
from pagedllm import LLM, SamplingParams
if sys.argv[1] == "dense":
    from pagedllm.model.quantization import gguf as g
    g.GGUFConfig.read_checkpoint = lambda self, *a: False
llm = LLM("HuggingFaceTB/SmolLM2-135M-Instruct", dtype="bfloat16", max_model_len=2048, kv_cache_memory_gb=0.2, enable_prefix_caching=False)
sp = SamplingParams(temperature=0.0, max_tokens=1)
for n in (64, 512, 1536):
    p = {"prompt_token_ids": [1] + [(i * 37) % 40000 + 100 for i in range(n - 1)]}
    llm.generate([p], sp, use_tqdm=False)
    ts = []
    for _ in range(3):
        t = time.perf_counter(); llm.generate([p], sp, use_tqdm=False); ts.append(time.perf_counter() - t)
    print(sys.argv[1], n, "prefill s", " ".join(f"{x:.3f}" for x in ts), flush=True)
