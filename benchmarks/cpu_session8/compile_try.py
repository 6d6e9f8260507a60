"""Experiment (issue 19, session 8; rejected): the whole SmolLM2 decoder under torch.compile (Inductor) on the CPU,
attention as an opaque custom op, rotary written plainly. python compile_try.py eager|compile float32 NREQ
(FREEZE=1 PAGEDLLM_CPU_ONEDNN=0 for compile: Inductor packs the weights itself; our oneDNN-packed tensors do not
trace). Prints tok/s of 3 timed generate calls of NREQ x 64 greedy tokens after a first call that compiles."""
import gc, os, sys, time
mode, dtype, nreq = sys.argv[1], sys.argv[2], int(sys.argv[3])
from pagedllm import LLM, SamplingParams   # first: OMP_WAIT_POLICY=PASSIVE applies before torch loads OpenMP
import torch
llm = LLM(model="HuggingFaceTB/SmolLM2-135M-Instruct", dtype=dtype, max_model_len=512)
from pagedllm.worker.model_runner import ModelRunner
runner = [o for o in gc.get_objects() if isinstance(o, ModelRunner)][0]
model = runner.model
if mode == "compile":
    from torch.library import custom_op
    from pagedllm.model.layers import attention as A
    CUR = {}
    mods = {m.layer_idx: m for m in model.modules() if isinstance(m, A.Attention)}
    @custom_op("pdexp::attn", mutates_args=())
    def attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
        b = CUR["b"]
        q2 = b.attn_backend.write_kv(q, k, v, b.kv_caches[layer], b.slot_mapping, None, None)
        return mods[layer].attend(q2, b).reshape(q.shape[0], -1)
    @attn.register_fake
    def _(q, k, v, layer):
        return q.new_empty(q.shape[0], q.shape[1] * q.shape[2])
    def fwd(self, q, k, v, batch, rotary=None, positions=None):
        q = q if q.dim() == 3 else q.view(-1, self.num_heads, self.head_dim)
        k = k if k.dim() == 3 else k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if rotary is not None:
            cos = rotary.cos[positions].unsqueeze(1).to(q.dtype); sin = rotary.sin[positions].unsqueeze(1).to(q.dtype)
            def rot(x):
                x1, x2 = x.chunk(2, -1)
                return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)
            q, k = rot(q), rot(k)
        return torch.ops.pdexp.attn(q, k, v, self.layer_idx)
    A.Attention.forward = fwd
    inner = model.model
    orig = type(inner).forward
    import torch._inductor.config as ic; ic.freezing = os.environ.get("FREEZE") == "1"
    compiled = torch.compile(lambda ids, pos: orig(inner, ids, pos, None), dynamic=True)
    def new_forward(ids, pos, batch, intermediate=None):
        CUR["b"] = batch
        return compiled(ids, pos)
    inner.forward = new_forward
sp = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)
prompts = [f"Tell me a story about number {i}." for i in range(nreq)]
t = time.perf_counter(); outs = llm.generate(prompts, sp, use_tqdm=False); first = time.perf_counter() - t
print("first call (incl compile)", round(first, 1), "s")
times = []
for _ in range(3):
    t = time.perf_counter(); outs = llm.generate(prompts, sp, use_tqdm=False); times.append(time.perf_counter() - t)
print(mode, dtype, nreq, "tok/s", [round(nreq * 64 / x, 1) for x in times])
print(repr(outs[0].outputs[0].text[:80]))
