"""NCCL's all-reduce against the one-shot all-reduce over symmetric memory (distributed/symm_mem_all_reduce.py) at
decode sizes, on a machine with 2+ GPUs (issue 21): µs per all-reduce of ``[rows, hidden]`` bf16, measured as a
decode step issues them, 2 x 28 back to back inside one CUDA graph, replayed.

    python3 benchmarks/gpu_multi/allreduce_bench.py [--world 2] [--hidden 3584] [--rows 1,8,32,64,128,256]

``--device cpu`` runs the NCCL column's code over gloo on the CPU (no graphs, no one-shot): a smoke test only.
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CALLS = 56      # 2 all-reduces a layer x 28 layers (Qwen2.5-7B)


def _time(fn, device: str, reps: int = 20) -> float:
    """µs per all-reduce: ``fn`` issues CALLS of them; captured in a CUDA graph on the GPU."""
    if device == "cuda":
        fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        torch.cuda.synchronize()
        dist.barrier()
        t = time.perf_counter()
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    else:
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
    return (time.perf_counter() - t) / reps / CALLS * 1e6


def _rank(rank: int, args, port: int) -> None:
    device = args.device
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=args.world,
                            **({"device_id": torch.device("cuda", rank)} if device == "cuda" else {}))
    rows = [int(r) for r in args.rows.split(",")]
    dev = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
    one_shot = None
    if device == "cuda":
        from pagedllm.distributed.symm_mem_all_reduce import SymmMemAllReduce
        one_shot = SymmMemAllReduce(None, dev, torch.bfloat16, max(rows) * args.hidden * 2)
    for m in rows:
        xs = [torch.full((m, args.hidden), float(rank + 1), dtype=torch.bfloat16, device=dev) for _ in range(2)]

        def nccl():
            for i in range(CALLS):
                dist.all_reduce(xs[i % 2])

        def symm():
            for i in range(CALLS):
                one_shot(xs[i % 2])
        row = f"rows {m:4d} ({m * args.hidden * 2 / 1024:7.1f} KiB): NCCL {_time(nccl, device):7.2f} µs"
        if one_shot is not None:
            for x in xs:
                x.fill_(rank + 1)
            one_shot(xs[0])
            expected = args.world * (args.world + 1) / 2
            ok = bool((xs[0].float() == expected).all())
            row += f", one-shot {_time(symm, device):7.2f} µs (sum checked: {'ok' if ok else 'WRONG'})"
        if rank == 0:
            print(row, flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=3584)
    ap.add_argument("--rows", default="1,8,32,64,128,256")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")      # no NVLink multicast (KINDS.md)
    from pagedllm.worker.executor import free_port
    mp.spawn(_rank, args=(args, free_port()), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
