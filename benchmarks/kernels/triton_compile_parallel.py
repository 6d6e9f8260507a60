"""Do Triton compiles run in parallel? Serial vs a thread pool vs a process pool, on any host (no GPU needed).

    PYTHONPATH=/path/to/triton-3.6 python benchmarks/kernels/triton_compile_parallel.py [N]

Compiles N specialisations of pagedllm's RMSNorm kernel (different hidden sizes) for sm_90 with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``, each into its own cache folder so that no
compile hits another's cache; first serially, then on 2 threads, then on 2 forked processes. The question behind it
(issue 18): the cold start builds 14 kernel variants one after the other (6.5 s on the H200 host).
"""
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE = "/tmp/triton_compile_parallel"


def compile_one(i: int) -> float:
    os.environ["TRITON_CACHE_DIR"] = f"{CACHE}/{i}"
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from pagedllm.kernels import triton_ops
    fn = triton_ops._rms_norm_kernel
    names = [p.name for p in fn.params]
    signature = {"X": "*bf16", "Res": "*bf16", "W": "*bf16", "Out": "*bf16", "ResOut": "*bf16", "stride_x": "i32",
                 "stride_r": "i32", "stride_o": "i32", "stride_ro": "i32", "eps": "fp32",
                 "N": "constexpr", "BLOCK": "constexpr", "HAS_RES": "constexpr", "PDL": "constexpr"}
    constexprs = {(names.index("N"),): 1024 + 64 * i, (names.index("BLOCK"),): 2048,
                  (names.index("HAS_RES"),): True, (names.index("PDL"),): False}
    t = time.perf_counter()
    triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32))
    return time.perf_counter() - t


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    shutil.rmtree(CACHE, ignore_errors=True)
    compile_one(10_000)                        # imports and first-use set-up, not timed
    t = time.perf_counter()
    each = [compile_one(i) for i in range(n)]
    print(f"serial: {n} compiles {time.perf_counter() - t:.2f} s (each {[round(x, 2) for x in each]})")
    t = time.perf_counter()
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(compile_one, range(100, 100 + n)))
    print(f"2 threads: {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as ex:
        list(ex.map(compile_one, range(200, 200 + n)))
    print(f"2 processes (fork): {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
