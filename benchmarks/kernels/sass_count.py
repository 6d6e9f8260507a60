"""Count the SASS instructions in a Triton kernel's main loop for sm_90, on a machine WITHOUT a GPU.

Triton ships ptxas and nvdisasm, so a kernel compiles to a cubin offline; this prints, per variant of constexprs,
the registers, shared memory, and the instruction mix of the longest backward-branch loop (the K loop), and
instructions per weight when ``--weights-per-thread`` is given (e.g. BLOCK_KP * BLOCK_N * 8 * NSUB / (32 * warps)).
How triton_packed_gemv.py's counts were found (docs in its module docstring).

Example (CPU, Triton from /work/triton_site):
  PYTHONPATH=/work/triton_site:$PWD python benchmarks/kernels/sass_count.py \\
    pagedllm.kernels.quant.triton_packed_gemv _packed_gemv_kernel \\
    --sig '{"X": "*bf16", "QW": "*i32", "S": "*bf16", "O": "*bf16", "B": "*bf16", "Y": "*bf16", "WS": "*fp32",
            "Locks": "*i32", "N": "i32", "KP": "i32", "KP_PER_SPLIT": "i32"}' \\
    --base '{"GROUP": 128, "HAS_BIAS": false, "EVEN_N": true, "EVEN_K": true, "SPLIT_K": 4, "ASM": true,
             "PREFETCH": true, "XVEC": false, "NSUB": 1, "BLOCK_N": 128, "BLOCK_KP": 16, "PDL": false}' \\
    --variants '[{}, {"NSUB": 2}]' --div16 X,QW,S,O,B,Y,WS,N,KP,KP_PER_SPLIT --weights-per-thread 128
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def compile_cubin(fn, signature: dict, constexprs: dict, num_warps: int, num_stages: int, div16: list[str]) -> bytes:
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in div16}
    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    return kernel.asm["cubin"]


def _tool(name: str, cubin: bytes, *flags: str) -> str:
    path = os.path.join(tempfile.mkdtemp(), "k.cubin")
    with open(path, "wb") as f:
        f.write(cubin)
    return subprocess.run([os.path.join(_BIN, name), *flags, path], capture_output=True, text=True).stdout


def loop_lines(sass: str) -> list[str]:
    """The SASS lines of the longest loop (a label and a later predicated branch back to it)."""
    lines = sass.splitlines()
    best: tuple[int, int] | None = None
    for j, line in enumerate(lines):
        m = re.search(r"@!?U?P\w+ BRA `\((\.L_x_\d+)\)", line)
        if m:
            i = next((i for i in range(j) if lines[i].startswith(m.group(1) + ":")), None)
            if i is not None and (best is None or j - i > best[1] - best[0]):
                best = (i, j)
    return lines[best[0]:best[1] + 1] if best else []


def loop_mix(sass: str) -> dict[str, int]:
    """Opcode counts of the longest loop."""
    mix: dict[str, int] = {}
    for line in loop_lines(sass):
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)", line)
        if m:
            mix[m.group(2)] = mix.get(m.group(2), 0) + 1
    return mix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("module")
    ap.add_argument("kernel")
    ap.add_argument("--sig", required=True, help="JSON: runtime argument -> Triton type ('*bf16', 'i32', ...)")
    ap.add_argument("--base", required=True, help="JSON: constexpr values")
    ap.add_argument("--variants", default="[{}]", help="JSON list of overrides (num_warps/num_stages allowed)")
    ap.add_argument("--div16", default="", help="arguments Triton would specialise as multiples of 16")
    ap.add_argument("--weights-per-thread", type=float, default=0.0)
    args = ap.parse_args()
    fn = getattr(importlib.import_module(args.module), args.kernel)
    for variant in json.loads(args.variants):
        ce = dict(json.loads(args.base), **variant)
        num_warps, num_stages = ce.pop("num_warps", 4), ce.pop("num_stages", 1)
        cubin = compile_cubin(fn, json.loads(args.sig), ce, num_warps, num_stages,
                              [a for a in args.div16.split(",") if a])
        usage = _tool("cuobjdump", cubin, "--dump-resource-usage")
        regs = re.search(r"REG:(\d+)", usage)
        smem = re.search(r"SHARED:(\d+)", usage)
        mix = loop_mix(_tool("nvdisasm", cubin, "-c"))
        total = sum(mix.values())
        per = f" per weight {total / args.weights_per_thread:.2f}" if args.weights_per_thread else ""
        top = ", ".join(f"{k} {v}" for k, v in sorted(mix.items(), key=lambda t: -t[1])[:10])
        print(f"{variant}: regs {regs.group(1) if regs else '?'}, smem {smem.group(1) if smem else '?'}, "
              f"loop {total}{per}: {top}", flush=True)


if __name__ == "__main__":
    main()
