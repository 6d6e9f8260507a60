"""CPU thread policies (issue 19, session 8). python stepthr.py MODE DTYPE NREQ NTOK CUTOFF: NREQ concurrent greedy
requests of NTOK tokens, tok/s of 3 timed calls. MODE A: as the engine is; B: GEMMs (linears, LM head) on two
threads and the rest of every step on one; C: steps of at most CUTOFF scheduled
tokens on one thread (launch and finish); D: fbgemm fp16 GEMMs of at most CUTOFF rows on one thread (what
model/quantization/cpu_fp16.py now does with CUTOFF 4); E: oneDNN fp32 linears and head of at most CUTOFF rows on
one thread."""
import os, sys, time
mode, dtype, nreq, ntok, cutoff = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
from pagedllm import LLM, SamplingParams
import torch
from pagedllm.worker import model_runner as MR
if mode == "B":
    import gc
    from pagedllm.model.layers import linear as L, embedding as E
    from pagedllm.model.quantization import cpu_fp16 as C16
    N = torch.get_num_threads()

    def on_all_threads(fn):
        def g(*a, **k):
            torch.set_num_threads(N)
            try:
                return fn(*a, **k)
            finally:
                torch.set_num_threads(1)
        return g
    L.LinearBase.linear = on_all_threads(L.LinearBase.linear)
    E.ParallelLMHead._shard_logits = on_all_threads(E.ParallelLMHead._shard_logits)
    C16.CpuFp16WeightMethod.apply = on_all_threads(C16.CpuFp16WeightMethod.apply)
if mode == "C":
    N = torch.get_num_threads()
    orig_launch, orig_finish = MR.ModelRunner.launch, MR.ModelRunner.finish
    def launch(self, sched):
        few = sched.total_num_scheduled_tokens <= cutoff
        self._few = few
        if few: torch.set_num_threads(1)
        try:
            return orig_launch(self, sched)
        finally:
            if few: torch.set_num_threads(N)
    def finish(self, step, grammar=None):
        few = getattr(self, "_few", False)
        if few: torch.set_num_threads(1)
        try:
            return orig_finish(self, step, grammar)
        finally:
            if few: torch.set_num_threads(N)
    MR.ModelRunner.launch, MR.ModelRunner.finish = launch, finish
if mode == "D":
    from pagedllm.model.quantization import cpu_fp16 as C16
    N = torch.get_num_threads()
    orig_apply = C16.CpuFp16WeightMethod.apply
    def apply(self, layer, x, bias):
        if x.shape[0] <= cutoff:
            torch.set_num_threads(1)
            try:
                return orig_apply(self, layer, x, bias)
            finally:
                torch.set_num_threads(N)
        return orig_apply(self, layer, x, bias)
    C16.CpuFp16WeightMethod.apply = apply
if mode == "E":
    from pagedllm.model.layers import linear as L, embedding as E
    from pagedllm.kernels.cpu_threads import on_one_thread
    orig = L.onednn_linear
    def onednn_linear(x, packed, bias):
        return on_one_thread(orig, x, packed, bias) if x.shape[0] <= cutoff else orig(x, packed, bias)
    L.onednn_linear = onednn_linear
    E.onednn_linear = onednn_linear
llm = LLM(model="HuggingFaceTB/SmolLM2-135M-Instruct", dtype=dtype, max_model_len=512)
if mode == "B":      # the model's forward on one thread (its GEMMs switch to all)
    runner = [o for o in gc.get_objects() if isinstance(o, MR.ModelRunner)][0]
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
print(mode, dtype, nreq, "cutoff", cutoff, "tok/s", [round(x, 1) for x in res], os.getloadavg()[0])
