"""Do transparent huge pages help the CPU engine? (issue 19, session 14: a probe, nothing kept.)

python benchmarks/cpu_session14/thp_probe.py [threads]

Needs THP in ``madvise`` (or ``always``) mode. Times (1) the first touch of 1 GiB: ``torch.zeros`` (4 KB pages) vs
an anonymous mapping advised ``MADV_HUGEPAGE`` behind ``torch.frombuffer`` (one write per 4 KB); (2) one-row fp32
GEMVs (``F.linear``) and a streaming ``sum`` over ~400 MB of weights in 4 KB pages vs the same weights copied into
huge pages. AnonHugePages from /proc/meminfo shows the huge pages were really used.
"""
import mmap
import os
import sys
import time

import pagedllm   # first: it sets the OpenMP wait policy before torch starts its runtime

import torch  # noqa: E402

HUGE = 2 << 20


def huge_empty(nbytes: int, dtype: torch.dtype, keep: list) -> torch.Tensor:
    mm = mmap.mmap(-1, nbytes + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mm.madvise(mmap.MADV_HUGEPAGE)
    keep.append(mm)
    raw = torch.frombuffer(mm, dtype=torch.uint8)
    off = (-raw.data_ptr()) % HUGE            # start on a 2 MiB boundary
    return raw[off:off + nbytes].view(dtype)


def anon_huge_kib() -> str:
    return open("/proc/meminfo").read().split("AnonHugePages:")[1].split("\n")[0].strip()


def best(fn, copies: int, nbytes: int) -> float:
    fn()
    t = min((lambda t0: (fn(), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(4))
    return nbytes / (t / copies) / 2**30


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    print(f"pagedllm {pagedllm.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    keep: list = []
    for name in ("4 KB pages (torch.zeros)", "huge pages"):
        t0 = time.perf_counter()
        t = torch.zeros(2**29, dtype=torch.bfloat16) if name.startswith("4") else \
            huge_empty(2**30, torch.bfloat16, keep)
        t1 = time.perf_counter()
        t[::2048].fill_(1)
        print(f"{name}: allocate {t1 - t0:.3f} s, then touch every 4 KB of 1 GiB {time.perf_counter() - t1:.3f} s")
        del t
    keep.clear()
    for n, k in ((3072, 576), (576, 1536), (49152, 576)):
        copies = max(3, int(400e6 / (n * k * 4)))
        small = [torch.randn(n, k) for _ in range(copies)]
        huge = [huge_empty(n * k * 4, torch.float32, keep).view(n, k).copy_(w) for w in small]
        x = torch.randn(1, k)
        row = [f"{n} x {k}:"]
        for label, ws in (("4 KB", small), ("huge", huge)):
            gemv = best(lambda: [torch.nn.functional.linear(x, w) for w in ws], copies, n * k * 4)
            stream = best(lambda: [w.sum() for w in ws], copies, n * k * 4)
            row.append(f"{label}: F.linear {gemv:.1f} GiB/s, sum {stream:.1f} GiB/s")
        print(" ".join(row), f"(AnonHugePages {anon_huge_kib()})", flush=True)


if __name__ == "__main__":
    main()
