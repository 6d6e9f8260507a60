"""What each small kernel of a decode step costs in the real graph: leave it out and time the step.

python3 benchmarks/kernels/leave_one_out.py VARIANT MODEL_NAME WORKLOAD...   (GPU; .bench/sb's offline_workload.py)
VARIANT: base | no_silu | no_norm | no_rotary | no_attn. The left-out kernel is replaced by nothing (its output
buffer is allocated, not written), so the tokens are garbage; only the timing means something. Kernels overlap
under programmatic dependent launch, so a kernel's profiled time says little about what it adds to a step: the
difference of step times does. Prints offline_workload.py's JSON lines prefixed with the variant.
"""
import os
import runpy
import sys

import torch

variant = sys.argv[1]
sys.argv = ["offline_workload.py", "pagedllm"] + sys.argv[2:]

if variant == "no_silu":
    import pagedllm.kernels.triton_ops as ops
    ops.silu_and_mul = lambda x: torch.empty(x.shape[0], x.shape[1] // 2, dtype=x.dtype, device=x.device)
elif variant == "no_norm":
    import pagedllm.kernels.triton_ops as ops
    ops.rms_norm = lambda x, w, eps, residual=None: (x, residual)
elif variant == "no_rotary":
    import pagedllm.attention.backends.triton_backend as tb
    tb.rotary_store_kv = lambda *a, **k: None
elif variant == "no_attn":
    import pagedllm.kernels.triton_attention as ta

    def _skip(query, *a, out=None, **k):
        return torch.empty_like(query) if out is None else out
    ta.decode_attention = _skip
elif variant != "base":
    raise SystemExit(f"unknown variant {variant}")
runpy.run_path(os.path.join(os.environ.get("PAGEDLLM_BENCH_DIR", ".bench/sb"), "offline_workload.py"),
               run_name="__main__")
