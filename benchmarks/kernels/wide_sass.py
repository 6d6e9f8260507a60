"""Static sm_90 figures of triton_packed_wide's configs, compiled offline (no GPU), and a byte-identity check.

For each config on a Qwen2.5-7B shape at one M (int4 g128, bf16, no bias, PDL on, 132 SMs as on an H200): registers,
shared memory, the K loop's instruction count and mix, instructions a weight, and the plan (programs, split).
``--save DIR`` writes each routed config's SASS text (``_TABLE`` in triton_packed.py); ``--compare DIR`` compiles them
again and says whether each is byte-identical to the saved text (a new opt-in kernel variant must leave the routed
configs' code unchanged).

Usage (CPU, Triton with ptxas/nvdisasm):
  PYTHONPATH=/tmp/tritonpkg:$PWD python benchmarks/kernels/wide_sass.py --save /tmp/sass_before
  PYTHONPATH=/tmp/tritonpkg:$PWD python benchmarks/kernels/wide_sass.py --compare /tmp/sass_before
  PYTHONPATH=/tmp/tritonpkg:$PWD python benchmarks/kernels/wide_sass.py --figures gate_up:48 o:32
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
from sass_count import _tool, loop_lines, loop_mix  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from pagedllm.kernels.quant import triton_packed as tp  # noqa: E402
from pagedllm.kernels.quant import triton_packed_wide as tw  # noqa: E402

SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944)}
SIG = {"X": "*bf16", "QW": "*i32", "S": "*bf16", "O": "*bf16", "B": "*bf16", "Y": "*bf16", "WS": "*fp32",
       "Locks": "*i32", "M": "i32", "N": "i32", "K": "i32", "K_PER_SPLIT": "i32", "stride_xm": "i32",
       "stride_ym": "i32"}
DIV16 = ["X", "QW", "S", "O", "B", "Y", "WS", "Locks", "N", "K", "K_PER_SPLIT", "stride_xm", "stride_ym"]
NUM_SMS = 132


def compile_config(m: int, n: int, k: int, cfg: tw.PackedWideConfig, pdl: bool = True):
    plan = tw.make_plan(m, n, k, 4, 128, False, NUM_SMS, cfg)
    ce = dict(plan.constexprs, PDL=pdl)
    num_warps, num_stages = ce.pop("num_warps"), ce.pop("num_stages")
    fn = tw._packed_wide_kernel
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in DIV16}
    src = ASTSource(fn=fn, signature=dict(SIG, **{c: "constexpr" for c in ce}), constexprs=ce, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    return plan, kernel


def sass_text(cubin: bytes) -> str:
    return _tool("nvdisasm", cubin, "-c")


CLOCK_GHZ = 1.98
SMEM_PER_SM = 228 * 1024


def _smem_cycles(line: str) -> float:
    """Shared-memory / L1 cycles (128 B a cycle an SM) one warp's instruction costs; wgmma's per warpgroup."""
    m = re.search(r"HGMMA\.64x(\d+)x16", line)
    if m:          # B (16 x N bf16) always from shared memory; A too unless a register operand precedes gdesc
        a_in_regs = re.search(r"R\d+, R\d+, gdesc", line)
        return (16 * int(m.group(1)) * 2 + (0 if a_in_regs else 64 * 16 * 2)) / 128
    # LDG: L1 and shared memory share the SM's 128 B a cycle (the repeated-row word loads are L1 hits)
    m = re.search(r"\b(LDS|STS|LDGSTS\.E(?:\.BYPASS)?|LDG\.E|LDSM\.16\.M88|STSM\.16\.M88)(\.[A-Z0-9.]+)?\s",
                  line)
    if not m:
        return 0.0
    suffix = m.group(2) or ""
    if m.group(1).startswith(("LDSM", "STSM")):
        return 4.0 if suffix.startswith(".4") else 2.0 if suffix.startswith(".2") else 1.0
    return 4.0 if ".128" in suffix else 2.0 if ".64" in suffix else 1.0


def figures(m: int, n: int, k: int, cfg: tw.PackedWideConfig) -> str:
    """One line of static figures: the K loop's SASS instructions (a thread's, per weight it unpacks), its shared
    memory cycles per weight (LDS / STS / LDSM / LDGSTS by width, wgmma operand reads), occupancy, and a throughput
    model: the busiest SM's weights x (issue + shared-memory cycles a weight), the two taken as not overlapping
    (it reproduced session 12's 85-96 µs for gate_up's routed configs within ~10%)."""
    plan, kernel = compile_config(m, n, k, cfg)
    cubin = kernel.asm["cubin"]
    usage = _tool("cuobjdump", cubin, "--dump-resource-usage")
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    smem = kernel.metadata.shared        # Triton's dynamic shared memory (cuobjdump shows only the static part)
    sass = sass_text(cubin)
    spill = "spills" if re.search(r"STL|LDL", sass) else "no spills"
    mix = loop_mix(sass)
    total = sum(mix.values())
    loop = loop_lines(sass)
    weights = cfg.block_k * cfg.block_n                     # a program's weights a K step
    warps = cfg.num_warps
    smem_cyc = sum(_smem_cycles(line) * (warps / 4 if "HGMMA" in line else warps) for line in loop) / weights
    issue_cyc = total * warps / 4 / weights                 # 4 schedulers an SM, one instruction a cycle each
    occupancy = min(65536 // (((regs + 7) // 8) * 8 * 32 * warps), SMEM_PER_SM // (smem + 1024), 64 // warps)
    programs = plan.grid[0] * plan.grid[1] * plan.grid[2]
    busiest = -(-programs // NUM_SMS)
    us = busiest * cfg.block_n * plan.k_per_split * (issue_cyc + smem_cyc) / CLOCK_GHZ / 1e3
    mem = ", ".join(f"{op} {mix.get(op, 0)}"        # opcodes without their suffixes: LDG is not LDGSTS
                    for op in ("LDGSTS", "LDG", "LDS", "STS", "LDSM", "HGMMA", "WARPGROUP", "BAR"))
    return (f"regs {regs} ({spill}), smem {smem}, {occupancy} programs/SM, {programs} programs (split "
            f"{plan.grid[1]}, busiest SM {busiest}); loop {total} = {total / (weights / (32 * warps)):.2f} a "
            f"weight, smem {smem_cyc:.3f} + issue {issue_cyc:.3f} cycles a weight; {mem}; model {us:.0f} us")


def routed() -> list[tuple[str, int, tw.PackedWideConfig]]:
    out = []
    for name, (n, k) in SHAPES.items():
        for bucket, cfg in tp._TABLE[(n, k, 4)].items():
            if isinstance(cfg, tw.PackedWideConfig):
                out.append((name, bucket, cfg))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save")
    ap.add_argument("--compare")
    ap.add_argument("--figures", nargs="*", help="SHAPE:M ... : the figures of every candidate of M's row bucket")
    args = ap.parse_args()
    for directory in (args.save, args.compare):
        if not directory:
            continue
        same = True
        for (name, bucket, cfg), pdl in itertools.product(routed(), (True, False)):
            m = {16: 8, 32: 24, 64: 48, 128: 128, 256: 200}[bucket]     # a partial tile where one is routed
            text = sass_text(compile_config(m, *SHAPES[name], cfg, pdl)[1].asm["cubin"])
            path = os.path.join(directory, f"{name}_{bucket}{'' if pdl else '_nopdl'}.sass")
            if directory == args.save:
                os.makedirs(directory, exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
                print(f"saved {path}: {len(text.splitlines())} lines")
            else:
                with open(path) as f:
                    ok = f.read() == text
                same &= ok
                print(f"{name} bucket {bucket} {tuple(cfg)} PDL {pdl}: {'byte-identical' if ok else 'DIFFERENT'} "
                      f"SASS ({len(text.splitlines())} lines)")
        if directory == args.compare:
            print("all routed configs byte-identical" if same else "SASS CHANGED")
    for item in args.figures or []:
        name, m = item.split(":")
        m = int(m)
        for cfg in tw.CANDIDATES[tw.row_bucket(m)]:
            try:
                print(f"{name} M={m} {tuple(cfg)}: {figures(m, *SHAPES[name], cfg)}", flush=True)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"{name} M={m} {tuple(cfg)}: {type(e).__name__}: {str(e)[:200]}", flush=True)


if __name__ == "__main__":
    main()
