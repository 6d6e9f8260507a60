"""Session 23, issue 18's cold start: the decode CUDA graphs captured through torch.cuda.graph (A, as before
session 23) or through worker/cuda_graphs._capturing (B: no caching-allocator / pinned-host emptying, no
gc.collect, before each size). 7B dummy, bf16, max_model_len 4096, the engine's default sizes (44 decode, 32
piecewise); one LLM per call, in this process.

    python3 benchmarks/gpu_session23/capture_ab.py A|B

Prints torch's graph.__enter__ (what A pays per size in this torch), then the capture log lines and the start-up
seconds. Prediction (H200, 44 decode sizes 4.0-5.6 s in session 20): B's decode capture ~0.5-1.5 s less if
emptying the allocator cache (the next warm-up's cudaMallocs) is what a size costs beyond its forwards; ~2-4 s less
if this torch still runs gc.collect() per capture (~400,000 live objects).
"""
import inspect
import json
import logging
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".bench", "sb"))
from workloads import qwen2_config  # noqa: E402

variant = sys.argv[1]
if variant == "A":
    from pagedllm.worker import cuda_graphs as cg

    @torch.inference_mode()
    def capture_a(self):
        t0 = time.perf_counter()
        for bs in reversed(self.sizes):     # no LoRA here: one variant per size, keyed (bs, False) since session 26
            batch = self._batch(bs, False)
            stage_args = () if self.stage_inputs is None else self.stage_inputs.args(bs)
            for _ in range(2):
                self.model(batch.input_ids, batch.positions, batch, *stage_args)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.model(batch.input_ids, batch.positions, batch, *stage_args)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs, False], self.outputs[bs, False] = graph, out
        torch.cuda.synchronize()
        logging.getLogger(cg.__name__).info("A: captured %d CUDA graphs in %.2f s", len(self.graphs),
                                            time.perf_counter() - t0)
    cg.CudaGraphRunner.capture = capture_a
    print(inspect.getsource(torch.cuda.graph.__enter__))
    print("force_cudagraph_gc:", getattr(getattr(torch.compiler, "config", None), "force_cudagraph_gc", "absent"))

d = tempfile.mkdtemp()
json.dump(qwen2_config("qwen2.5-7b"), open(os.path.join(d, "config.json"), "w"))
from pagedllm import LLM, SamplingParams  # noqa: E402
t0 = time.perf_counter()
llm = LLM(model=d, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", max_model_len=4096, seed=0)
took = time.perf_counter() - t0
out = llm.generate([{"prompt_token_ids": [1, 2, 3]}], SamplingParams(max_tokens=8, ignore_eos=True,
                                                                       detokenize=False), use_tqdm=False)
print(json.dumps({"variant": variant, "llm_init_s": round(took, 2), "tokens": out[0].outputs[0].token_ids}))
