"""Builds (on the CPU, where sentence-transformers is installed) a tiny sentence-transformers XLM-RoBERTa with two
Dense modules (helper-92's bac1d52 test model) in OUT_DIR, with SentenceTransformer.encode's embeddings of three
texts in OUT_DIR/expected.pt; st_dense_check.py then embeds them with pagedllm on the GPU (no sentence-transformers
there). python3 benchmarks/gpu_session39/st_dense_build.py OUT_DIR"""
import json
import pathlib
import sys

import torch
import transformers
from sentence_transformers import SentenceTransformer, models

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from tests.unit.tiny_models import save_word_tokenizer  # noqa: E402

out = pathlib.Path(sys.argv[1])
cfg = transformers.XLMRobertaConfig(vocab_size=104, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=128, max_position_embeddings=66, type_vocab_size=1,
                                    pad_token_id=1, bos_token_id=0, eos_token_id=2)
torch.manual_seed(0)
transformers.XLMRobertaModel(cfg).save_pretrained(out / "hf")
save_word_tokenizer(out / "hf", "xlm_roberta")
st = SentenceTransformer(modules=[
    models.Transformer(str(out / "hf")), models.Pooling(64, "mean"),
    models.Dense(64, 32, activation_function=torch.nn.Tanh()),
    models.Dense(32, 16, bias=False, activation_function=torch.nn.Identity()), models.Normalize()], device="cpu")
st.save(str(out / "st"))
(out / "st" / "1_Pooling" / "config.json").write_text(json.dumps(
    {"embedding_dimension": 64, "pooling_mode": "mean", "include_prompt": True}))
texts = ["w1 w2 w3", "w5 w60 w7 w8 w9 w10 w11", "w42"]
torch.save({"texts": texts, "expected": SentenceTransformer(str(out / "st"), device="cpu").encode(
    texts, convert_to_tensor=True)}, out / "expected.pt")
print("built", out)
