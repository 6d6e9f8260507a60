"""sm_90 SASS of triton_packed's dequantize kernel and 2..16-row dot config with EVEN_N off / on (session 20),
compiled offline (no GPU): instructions a program and the memory-op mix (vector width of loads and stores, shared
memory traffic, barriers).

PYTHONPATH=<triton 3.6 site>:$PWD python benchmarks/kernels/packed_even_n_sass.py
"""
import collections
import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
from sass_count import _tool, compile_cubin  # noqa: E402

from pagedllm.kernels.quant import triton_packed as tp  # noqa: E402


def report(tag, fn, sig, ce, warps, stages, div):
    cub = compile_cubin(fn, sig, ce, warps, stages, div)
    sass = _tool("cuobjdump", cub, "-sass")
    ops = collections.Counter(re.findall(r"\b(STG\.E[\.\w]*|LDG\.E[\.\w]*|STS[\.\w]*|LDS[\.\w]*|BAR[\.\w]*|LDGSTS[\.\w]*)", sass))
    n = len(re.findall(r"^\s+/\*[0-9a-f]{4}\*/", sass, re.M))
    print(tag, "instrs", n, dict(ops))


sig = {"QW": "*i32", "S": "*bf16", "O": "*bf16", "W": "*bf16", "N": "i32", "KP": "i32", "LDQ": "i32"}
for even in (False, True):
    ce = dict(GROUP=128, BITS=4, SCALE_MODE=tp.scale_mode(128, 3584, 128, 8), EVEN_K=True, FUSED=True, BLOCK_N=128, BLOCK_KP=16, EVEN_N=even)
    report(f"dequant _DQ EVEN_N={even}", tp._dequantize_kernel, sig, ce, 4, 1, list(sig))
dsig = {"X": "*bf16", "QW": "*i32", "S": "*bf16", "O": "*bf16", "B": "*bf16", "Y": "*bf16", "WS": "*fp32", "Locks": "*i32",
        "M": "i32", "N": "i32", "KP": "i32", "KP_PER_SPLIT": "i32", "stride_xm": "i32", "stride_ym": "i32"}
for even in (False, True):
    # the 7B gate_up 2..16-row config: _P(16, 64, 128, 4, 3)
    ce = dict(BITS=4, GROUP=128, SCALE_MODE=tp.scale_mode(128, 3584, 128, 8), HAS_BIAS=False, USE_DOT=True, EVEN_K=True, SPLIT_K=1,
              FUSED=True, PREFETCH=False, BLOCK_M=16, BLOCK_N=64, BLOCK_KP=16, PDL=False, EVEN_N=even, X_MASKED=False)
    report(f"decode dot 16x64x128 EVEN_N={even}", tp._packed_decode_kernel, dsig, ce, 4, 3, ["X", "QW", "S", "O", "B", "Y", "WS", "N", "KP", "KP_PER_SPLIT", "stride_xm", "stride_ym"])
