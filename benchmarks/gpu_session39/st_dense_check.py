"""On the GPU: pagedllm's embeddings of st_dense_build.py's model (mean pooling, two Dense modules, normalize)
against SentenceTransformer.encode's on the CPU. python3 benchmarks/gpu_session39/st_dense_check.py DIR"""
import pathlib
import sys

import torch

from pagedllm import LLM

d = pathlib.Path(sys.argv[1])
ref = torch.load(d / "expected.pt")
llm = LLM(str(d / "st"), dtype="float32")
print("device:", next(llm.llm_engine.runner.model.parameters()).device)
ours = torch.tensor([o.outputs.embedding for o in llm.embed(ref["texts"], use_tqdm=False)])
err = (ours - ref["expected"].float()).abs().max().item()
print(f"shape {tuple(ours.shape)}, max abs difference to SentenceTransformer.encode {err:.2e}")
assert ours.shape == (3, 16) and err < 1e-4, "Dense projector on the GPU differs"
print("st dense: OK")
