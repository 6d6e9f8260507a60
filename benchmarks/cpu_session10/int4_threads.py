"""torch's int4 GEMM (groups of 32) with fp16 / bf16 activations against fbgemm fp16 at M = 1, 4, 16 on the SmolLM2 shapes,
with the relative error against the dequantized fp32 product. python benchmarks/cpu_session10/int4_threads.py THREADS"""
import torch
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import us_per_call  # noqa: E402
torch.set_num_threads(int(sys.argv[1]))
def bench(fn, n=200):
    return us_per_call(fn, n)
gs=32
for M in (1, 4, 16):
  for (N,K,copies) in [(1536,576,30),(576,1536,30),(49152,576,2)]:
    ws=[torch.randn(N,K)*0.05 for _ in range(copies)]
    x=torch.randn(M,K)
    qs=[]; deq=[]
    for w in ws:
        wg=w.reshape(N,K//gs,gs); mn=wg.amin(-1,keepdim=True); mx=wg.amax(-1,keepdim=True)
        scale=((mx-mn)/15).clamp(min=1e-8).half().float(); mnh=mn.half().float()
        q=((wg-mnh)/scale).round().clamp(0,15)
        deq.append((q*scale+mnh).reshape(N,K))
        zero=mnh+8*scale
        sz=torch.stack([scale.squeeze(-1).t(), zero.squeeze(-1).t()],-1).contiguous()
        wp=torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).reshape(N,K), 1)
        qs.append((wp,sz))
    i=[0]
    res={}
    for dt in (torch.float16, torch.bfloat16):
        xd=x.to(dt); qsd=[(a,b.to(dt)) for a,b in qs]
        def i4():
            i[0]=(i[0]+1)%copies; a,b=qsd[i[0]]; return torch.ops.aten._weight_int4pack_mm_for_cpu(xd, a, gs, b)
        res[f"int4 x{str(dt)[6:]}"]=bench(i4)
        y=torch.ops.aten._weight_int4pack_mm_for_cpu(xd, qsd[0][0], gs, qsd[0][1]).float()
        ref=x@deq[0].t()
        res[f"relerr {str(dt)[6:]}"]=((y-ref).norm()/ref.norm()).item()
    packed=[torch.ops.quantized.linear_prepack_fp16(w, None) for w in deq]
    def f16():
        i[0]=(i[0]+1)%copies; return torch.ops.quantized.linear_dynamic_fp16(x, packed[i[0]])
    res["fbgemm fp16"]=bench(f16)
    print(M,N,K,{k:(round(v,1) if k[0]!='r' else f"{v:.1e}") for k,v in res.items()}, flush=True)
