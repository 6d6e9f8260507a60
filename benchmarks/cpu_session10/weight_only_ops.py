"""torch's CPU weight-only ops at M = 1 on the SmolLM2 shapes, one thread: fbgemm fp16, int8 per-channel and int4 (groups of
32) with fp32 / bf16 activations, dense fp32; 30 weight copies read round-robin (2 for the LM head). µs per call.
python benchmarks/cpu_session10/weight_only_ops.py  (docs/perf.md, issue 19, session 10)"""
import torch
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import us_per_call  # noqa: E402
torch.set_num_threads(1)
def bench(fn, n=200):
    return us_per_call(fn, n)
for (N,K,copies) in [(1536,576,30),(576,1536,30),(49152,576,2)]:
    ws=[torch.randn(N,K)*0.05 for _ in range(copies)]
    x=torch.randn(1,K)
    # fbgemm fp16
    packed=[torch.ops.quantized.linear_prepack_fp16(w, None) for w in ws]
    i=[0]
    def f16():
        i[0]=(i[0]+1)%copies; return torch.ops.quantized.linear_dynamic_fp16(x, packed[i[0]])
    # int8 weight-only
    w8=[(w/ (w.abs().amax(1,keepdim=True)/127)).round().to(torch.int8) for w in ws]
    sc=[(w.abs().amax(1)/127) for w in ws]
    res={}
    for dt in (torch.float32, torch.bfloat16):
        xd=x.to(dt); scd=[s.to(dt) for s in sc]
        def i8():
            i[0]=(i[0]+1)%copies; return torch.ops.aten._weight_int8pack_mm(xd, w8[i[0]], scd[i[0]])
        try: res[f"int8 x{dt}"]=bench(i8)
        except Exception as e: res[f"int8 x{dt}"]=str(e)[:80]
    # int4 for cpu
    try:
        gs=32
        qs=[]
        for w in ws:
            wg=w.reshape(N,K//gs,gs); mn=wg.amin(-1,keepdim=True); mx=wg.amax(-1,keepdim=True)
            scale=((mx-mn)/15).clamp(min=1e-8); q=((wg-mn)/scale).round().clamp(0,15).to(torch.int32).reshape(N,K)
            zero=mn+8*scale
            sz=torch.stack([scale.squeeze(-1).t(), zero.squeeze(-1).t()],-1).contiguous()  # [K/gs, N, 2]
            wp=torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            qs.append((wp,sz))
        for dt in (torch.float32, torch.bfloat16):
            xd=x.to(dt); qsd=[(a,b.to(dt)) for a,b in qs]
            def i4():
                i[0]=(i[0]+1)%copies; a,b=qsd[i[0]]; return torch.ops.aten._weight_int4pack_mm_for_cpu(xd, a, gs, b)
            try: res[f"int4 x{dt}"]=bench(i4)
            except Exception as e: res[f"int4 x{dt}"]=str(e)[:100]
    except Exception as e:
        res["int4"]=str(e)[:120]
    res["fbgemm fp16"]=bench(f16)
    wf=[w for w in ws]
    def f32():
        i[0]=(i[0]+1)%copies; return torch.nn.functional.linear(x, wf[i[0]])
    res["fp32 F.linear"]=bench(f32)
    print(N,K,{k:(round(v,1) if isinstance(v,float) else v) for k,v in res.items()}, flush=True)
