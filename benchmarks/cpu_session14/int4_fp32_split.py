"""Can torch's int4 weight-only op give an fp32-accurate product? (issue 19, session 14: a probe, nothing kept.)

python benchmarks/cpu_session14/int4_fp32_split.py

The idea: an fp32 activation is exactly the sum of three bf16 numbers and a GGUF fp16 scale of two, so three bf16
rows against two scale copies would give an fp32-accurate x @ W through the fast bf16 path of
``aten._weight_int4pack_mm_for_cpu`` (the fp32 path is ~25x slower, session 10). That holds only if the op returns
its fp32 accumulator. This prints the op's output dtype and its error against the float64 product of the same bf16
operands: a bf16 output (error ~2^-9) closes the idea whatever the inputs.
"""
from pagedllm.kernels.quant.cpu import int4pack_supported   # pagedllm first: its OpenMP wait policy

import torch  # noqa: E402


def main() -> None:
    if not int4pack_supported():
        raise SystemExit("this torch has no CPU int4pack op")
    torch.manual_seed(0)
    n, k, g = 1536, 576, 32
    q = torch.randint(0, 16, (n, k), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    scale = (torch.rand(k // g, n) * 0.02 + 0.001).bfloat16()
    scales_and_zeros = torch.stack([scale, torch.zeros_like(scale)], -1).contiguous()
    weight = (q.double() - 8) * scale.double().t().repeat_interleave(g, 1)     # [N, K], exact
    for m in (1, 3):
        x = torch.randn(m, k).bfloat16()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, g, scales_and_zeros)
        ref = x.double() @ weight.t()
        err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
        print(f"M = {m}: output dtype {y.dtype}, max error / max |y| = {err:.2e}")


if __name__ == "__main__":
    main()
