"""Kernel table of the 7B's pure-decode steps at the served run's batch (96 requests, 512-token prompts, 256
generated: steps 100..199 are decodes at contexts ~600-700), through profile_offline.py with one extra workload.
python3 benchmarks/gpu_session39/profile_b96.py [MODEL] (PAGEDLLM_BENCH_DIR=.bench/sb)."""
import os
import sys

sys.path.insert(0, os.environ.get("PAGEDLLM_BENCH_DIR", ".bench/sb"))
import workloads  # noqa: E402

workloads.WORKLOADS["b96_512_256"] = lambda: workloads.fixed(96, 512, 256)
model = sys.argv[1] if len(sys.argv) > 1 else "qwen2.5-7b"
sys.argv = ["profile_offline.py", model, "b96_512_256", "--steps", "100:200"]
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "profile_offline.py")
exec(compile(open(path).read(), path, "exec"))
