"""torch's int4 GEMM (bf16 activations) against oneDNN's dense bf16 GEMM at M = 1 / 4 / 16 / 64 on the SmolLM2 shapes, 2 threads."""
import torch
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import us_per_call  # noqa: E402
torch.set_num_threads(2)
def bench(fn, n=100):
    return us_per_call(fn, n)
gs=32
for M in (1, 4, 16, 64):
  for (N,K) in [(1536,576),(576,1536)]:
    copies=30
    ws=[torch.randn(N,K)*0.05 for _ in range(copies)]
    x=torch.randn(M,K).to(torch.bfloat16)
    qs=[]
    for w in ws:
        q=torch.randint(0,16,(N,K),dtype=torch.int32)
        sz=torch.rand(K//gs,N,2).to(torch.bfloat16)
        qs.append((torch.ops.aten._convert_weight_to_int4pack_for_cpu(q,1),sz))
    pk=[torch.ops.mkldnn._reorder_linear_weight(w.to(torch.bfloat16), 16) for w in ws]
    i=[0]
    def i4():
        i[0]=(i[0]+1)%copies; a,b=qs[i[0]]; return torch.ops.aten._weight_int4pack_mm_for_cpu(x,a,gs,b)
    def dn():
        i[0]=(i[0]+1)%copies; return torch.ops.mkldnn._linear_pointwise(x, pk[i[0]], None, "none", [], "")
    print(M,N,K,{"int4 bf16":round(bench(i4),1),"onednn bf16 dense":round(bench(dn),1)},flush=True)
