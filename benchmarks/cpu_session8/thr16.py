"""Experiment (issue 19, session 8; rejected): A = the default threads; B = GEMMs (linears, LM head) on all threads
and the rest of every step on one. python thr16.py A|B float32|float16 NREQ NTOK."""
import gc, os, sys, time
mode, dtype, nreq, ntok = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from pagedllm import LLM, SamplingParams
import torch
llm = LLM(model="HuggingFaceTB/SmolLM2-135M-Instruct", dtype=dtype, max_model_len=512)
if mode == "B":
    from pagedllm.model.layers import linear as L, embedding as E
    from pagedllm.model.quantization import cpu_fp16 as C
    from pagedllm.worker.model_runner import ModelRunner
    N = 2
    def wrap(fn):
        def g(*a, **k):
            torch.set_num_threads(N)
            try:
                return fn(*a, **k)
            finally:
                torch.set_num_threads(1)
        return g
    L.LinearBase.linear = wrap(L.LinearBase.linear)
    E.ParallelLMHead._shard_logits = wrap(E.ParallelLMHead._shard_logits) if hasattr(E, "ParallelLMHead") else None
    C.CpuFp16WeightMethod.apply = wrap(C.CpuFp16WeightMethod.apply)
    runner = [o for o in gc.get_objects() if isinstance(o, ModelRunner)][0]
    inner = runner.model.forward
    def fwd(*a, **k):
        torch.set_num_threads(1)
        try:
            return inner(*a, **k)
        finally:
            torch.set_num_threads(N)
    runner.model.forward = fwd
sp = SamplingParams(max_tokens=ntok, temperature=0, ignore_eos=True)
prompts = [f"Tell me a story about number {i}." for i in range(nreq)]
llm.generate(prompts, sp, use_tqdm=False)
res = []
for _ in range(3):
    t = time.perf_counter(); outs = llm.generate(prompts, sp, use_tqdm=False); res.append(nreq * ntok / (time.perf_counter() - t))
print(mode, dtype, nreq, "tok/s", [round(x, 1) for x in res], os.getloadavg()[0], outs[0].outputs[0].text[:40].replace("\n", " "))
