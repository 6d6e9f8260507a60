"""LoRA adapters on DeepSeek's expanded prefill over a cached context in bounded chunks (MLAttention.attend's
context_chunks, merged by log-sum-exp): kv_b_proj's adapter is added to each chunk's expanded latent, each key token
with its request's adapter. tests/unit/test_lora_deepseek.py's batch (two adapters and the base model, a 16-token
budget cutting the 21-token prompt, chunks beside decodes) with the bound at 8 keys and every step with cached context
expanded (the tiny config's cost rule would keep the 5-token chunk after 16 cached ones absorbed): its second chunk
attends to itself and to its 16 cached tokens in two chunks of 8. Greedy tokens HF's with each adapter merged."""
from __future__ import annotations

import pytest

import test_lora_deepseek as lora_deepseek
from pagedllm.attention.backends.torch_backend import TorchAttentionBackend
from pagedllm.model.models.deepseek import MLAttention


@pytest.mark.parametrize("name", list(lora_deepseek.CONFIGS))
def test_adapter_on_context_chunks_gives_the_merged_models_tokens(tmp_path, monkeypatch, name):
    init, varlen, chunks = MLAttention.__init__, TorchAttentionBackend.varlen_attention, []

    def expanding(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.context_token_cost = 0         # every step with cached context expanded (the cost rule's other side)

    def record(self, q, k, v, cu_q, cu_k, *args, **kwargs):
        if not kwargs.get("causal", True):
            chunks.append(cu_k.diff().tolist())
        return varlen(self, q, k, v, cu_q, cu_k, *args, **kwargs)
    monkeypatch.setattr(MLAttention, "__init__", expanding)
    monkeypatch.setattr(MLAttention, "context_chunk_keys", 8)
    monkeypatch.setattr(TorchAttentionBackend, "varlen_attention", record)
    lora_deepseek.test_adapter_gives_the_merged_models_tokens(tmp_path, monkeypatch, name, "expanded")
    assert chunks and all(sum(lens) <= 8 for lens in chunks), chunks
