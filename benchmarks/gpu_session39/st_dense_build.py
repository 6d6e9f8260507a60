"""Builds (on the CPU, where sentence-transformers is installed) a tiny sentence-transformers XLM-RoBERTa with two
Dense modules (helper-92's bac1d52 test model) in OUT_DIR, with SentenceTransformer.encode's embeddings of three
texts in OUT_DIR/expected.pt; st_dense_check.py then embeds them with pagedllm on the GPU (no sentence-transformers
there). python3 benchmarks/gpu_session39/st_dense_build.py OUT_DIR"""
import pathlib
import sys

import torch
from sentence_transformers import SentenceTransformer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from tests.unit.tiny_models import save_st_dense_model  # noqa: E402

out = pathlib.Path(sys.argv[1])
st_path = save_st_dense_model(out)
texts = ["w1 w2 w3", "w5 w60 w7 w8 w9 w10 w11", "w42"]
torch.save({"texts": texts, "expected": SentenceTransformer(str(st_path), device="cpu").encode(
    texts, convert_to_tensor=True)}, out / "expected.pt")
print("built", out)
