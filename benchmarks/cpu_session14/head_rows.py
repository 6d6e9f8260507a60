"""The fp32 LM head (SmolLM2's tied 49152 x 576) at 1, 4 and 16 rows, three forms, repeated (issue 19, session 14).

python benchmarks/cpu_session14/head_rows.py [threads] [rows=1,4,16]

oneDNN-packed (the engine's path), ``x @ W^T`` with W^T stored [576, 49152] (MKL), ``F.linear`` (MKL); the median of
20 calls, three rounds, so the spread between rounds shows how much neighbours move each form.
"""
import sys
import time

from pagedllm.kernels import cpu_onednn   # first: pagedllm sets the OpenMP wait policy

import torch  # noqa: E402


def median_ms(fn, reps: int = 20) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[reps // 2] * 1e3


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    rows = [int(r) for r in (sys.argv[2] if len(sys.argv) > 2 else "1,4,16").split(",")]
    w = torch.randn(49152, 576)
    wt = w.t().contiguous()
    packed = cpu_onednn.onednn_pack(w)
    for rnd in range(3):
        for m in rows:
            x = torch.randn(m, 576)
            a = median_ms(lambda: cpu_onednn.onednn_linear(x, packed, None))
            b = median_ms(lambda: x @ wt)
            c = median_ms(lambda: torch.nn.functional.linear(x, w))
            print(f"round {rnd} M={m}: oneDNN {a:.2f} ms, x @ W^T {b:.2f} ms, F.linear {c:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
