"""The 120 int4 GEMMs of a SmolLM2 decode step at 16 rows: on 2 OpenMP threads (the engine's PASSIVE wait policy)
vs split 8 + 8 rows over two Python threads with one torch thread each vs 16 rows on one thread; ms per step.

python benchmarks/cpu_session13/split_gemms.py      (docs/perf.md, issue 19, session 13: the split-step prototype)
"""
import threading
import time

__import__("pagedllm")     # first: OMP_WAIT_POLICY=PASSIVE before torch loads libgomp
import torch  # noqa: E402

GS, COPIES = 32, 30
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}
layers = []
for l in range(COPIES):
    d = {}
    for name, (N, K) in SHAPES.items():
        d[name] = (torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (N, K), dtype=torch.int32), 1),
                   torch.rand(K // GS, N, 2).to(torch.bfloat16))
    layers.append(d)
def step(M):
    xs = {name: torch.randn(M, K).to(torch.bfloat16) for name, (N, K) in SHAPES.items()}
    def run():
        for d in layers:
            for name in SHAPES:
                torch.ops.aten._weight_int4pack_mm_for_cpu(xs[name], d[name][0], GS, d[name][1])
    return run
def timeit(fn, n=5):
    fn(); ts=[]
    for _ in range(n):
        t=time.perf_counter(); fn(); ts.append(time.perf_counter()-t)
    return sorted(ts)[len(ts)//2]*1e3
torch.set_num_threads(2)
a = timeit(step(16))
torch.set_num_threads(1)
h1, h2 = step(8), step(8)
def two():
    t = threading.Thread(target=h2); t.start(); h1(); t.join()
b = timeit(two)
c = timeit(step(16))
print(f"M=16 2 omp threads PASSIVE: {a:.1f} ms/30 layers; two python threads x M=8 (1 omp thread): {b:.1f}; M=16 one thread: {c:.1f}")
