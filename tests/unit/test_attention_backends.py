"""The attention-backend interface: names resolve through the registry (with the user-facing errors), and a new
backend is one class plus one ``register_attention_backend`` call, with no edit anywhere else."""
from __future__ import annotations

import sys

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.attention.backends.torch_backend import TorchAttentionBackend
from pagedllm.attention.registry import (_BACKENDS, attention_backend_class, attention_backend_names,
                                         default_backend_name, register_attention_backend,
                                         resolve_attention_backend)
from tiny_models import save_tiny_llama

VOCAB = 1000
PROMPTS = [[11, 12, 13, 14, 15], [(7 * i + 3) % VOCAB for i in range(40)], [101, 57, 300]]


class CountingBackend(TorchAttentionBackend):
    """The torch backend, counting the calls the engine makes to it (a stand-in for a third-party backend)."""
    calls = {"build_metadata": 0, "write_kv": 0, "attend": 0}

    def build_metadata(self, common):
        self.calls["build_metadata"] += 1
        return super().build_metadata(common)

    def write_kv(self, q, k, v, kv_cache, slot_mapping, rotary=None, positions=None):
        self.calls["write_kv"] += 1
        return super().write_kv(q, k, v, kv_cache, slot_mapping, rotary, positions)

    def attend(self, q, kv_cache, metadata, scale, out=None):
        self.calls["attend"] += 1
        return super().attend(q, kv_cache, metadata, scale, out=out)


@pytest.fixture
def counting_backend():
    register_attention_backend("counting", f"{__name__}:CountingBackend")
    CountingBackend.calls = {k: 0 for k in CountingBackend.calls}
    yield "counting"
    _BACKENDS.pop("counting", None)


def test_builtin_names_resolve_and_default_by_device():
    assert attention_backend_names()[:2] == ["torch", "triton"]
    assert default_backend_name("cpu") == "torch"
    assert default_backend_name(torch.device("cuda")) == "triton"
    assert resolve_attention_backend(None, "cpu") == "torch"
    assert resolve_attention_backend("torch", "cpu") == "torch"
    assert resolve_attention_backend("triton", "cuda") == "triton"
    assert attention_backend_class("torch") is TorchAttentionBackend


def test_registry_errors_name_the_field():
    with pytest.raises(ValueError, match=r"attention_backend must be one of 'torch', 'triton', got 'flash'\."):
        resolve_attention_backend("flash", "cpu")
    with pytest.raises(ValueError, match=r"attention_backend='triton' needs a CUDA device\."):
        resolve_attention_backend("triton", "cpu")
    with pytest.raises(ValueError, match="must be 'module:Class'"):
        register_attention_backend("broken", "no_colon_here")


def test_resolving_triton_does_not_import_it():
    # The registry holds import strings: naming (or rejecting) a backend never imports its kernels.
    before = "pagedllm.attention.backends.triton_backend" in sys.modules
    resolve_attention_backend("triton", "cuda")
    assert ("pagedllm.attention.backends.triton_backend" in sys.modules) == before


def test_engine_rejects_unknown_backend(tmp_path):
    save_tiny_llama(tmp_path, VOCAB)
    with pytest.raises(ValueError, match="attention_backend must be one of 'torch', 'triton', got 'nope'"):
        LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", attention_backend="nope")


def test_registered_backend_runs_the_engine_like_torch(tmp_path, counting_backend):
    save_tiny_llama(tmp_path, VOCAB)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    reference = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", attention_backend="torch")
    expected = [o.outputs[0].token_ids for o in reference.generate(prompts, params, use_tqdm=False)]
    del reference

    llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", attention_backend=counting_backend)
    assert llm.llm_engine.config.attention_backend == "counting"
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert got == expected
    calls = CountingBackend.calls
    # At least one prefill step and 7 decode steps went through it, every layer (2) writing and attending.
    assert calls["build_metadata"] >= 8
    assert calls["write_kv"] == calls["attend"] == 2 * calls["build_metadata"]


class NoSoftCapBackend(CountingBackend):
    supports_logits_soft_cap = False      # what a third-party backend says unless it takes soft_cap


def test_a_soft_capping_model_needs_a_backend_that_soft_caps(tmp_path):
    """Gemma 2 soft-caps its attention logits: a backend that cannot is refused before the model loads, and
    a Llama (no cap) runs on it; the layers pass soft_cap only when they have one."""
    import transformers
    cfg = transformers.Gemma2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    max_position_embeddings=256, pad_token_id=0)
    transformers.Gemma2ForCausalLM(cfg).save_pretrained(tmp_path / "gemma2")
    save_tiny_llama(tmp_path / "llama", VOCAB)
    register_attention_backend("nocap", f"{__name__}:NoSoftCapBackend")
    try:
        with pytest.raises(ValueError, match=r"soft-caps its attention logits \(attn_logit_softcapping=50.0 .*"
                                             r"the attention backend 'nocap' does not: use 'torch' or 'triton'"):
            LLM(str(tmp_path / "gemma2"), skip_tokenizer_init=True, attention_backend="nocap",
                kv_cache_memory_gb=0.01)
        llm = LLM(str(tmp_path / "llama"), skip_tokenizer_init=True, attention_backend="nocap",
                  kv_cache_memory_gb=0.01)
        assert llm.generate([{"prompt_token_ids": PROMPTS[0]}], SamplingParams(max_tokens=2), use_tqdm=False)
    finally:
        _BACKENDS.pop("nocap", None)


def test_vllm_backend_names(tmp_path):
    """vLLM's --attention-backend names: TRITON_ATTN (any case) is pagedllm's triton, TORCH_SDPA / CPU_ATTN its torch
    attention; a vLLM backend pagedllm lacks (FLASH_ATTN, FLASHINFER) says what to use. They were argparse's bare
    'invalid choice' / 'attention_backend must be one of ...'."""
    from pagedllm.config import EngineArgs
    from pagedllm.entrypoints.cli import make_parser
    assert make_parser().parse_args(["serve", "m", "--attention-backend", "TRITON_ATTN"]).attention_backend == "triton"
    assert EngineArgs(model="m", attention_backend="cpu_attn").attention_backend == "torch"
    save_tiny_llama(tmp_path, VOCAB)
    llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", attention_backend="TORCH_SDPA")
    assert llm.llm_engine.config.attention_backend == "torch"
    with pytest.raises(ValueError, match=r"attention_backend='FLASH_ATTN' is a vLLM attention backend that pagedllm "
                                         r"does not have; use 'triton' \(pagedllm's Triton kernels, as vLLM's "
                                         r"TRITON_ATTN\) or 'torch'"):
        LLM(model=str(tmp_path), skip_tokenizer_init=True, attention_backend="FLASH_ATTN")
    with pytest.raises(SystemExit):
        make_parser().parse_args(["serve", "m", "--attention-backend", "flashinfer"])


def test_vllm_attention_config(tmp_path):
    """vLLM's attention_config (LLM kwarg, --attention-config JSON or --attention-config.backend): its backend picks
    the attention as attention_backend does; its kernel-tuning keys are refused. It was an unknown keyword / flag."""
    from pagedllm.config import EngineArgs
    from pagedllm.entrypoints.cli import make_parser
    from pagedllm.entrypoints.openai.cli_args import finalize_args
    args = finalize_args(make_parser().parse_args(["serve", "m", "--attention-config.backend", "TRITON_ATTN"]))
    assert EngineArgs.from_cli_args(args).attention_backend == "triton"
    save_tiny_llama(tmp_path, VOCAB)
    llm = LLM(model=str(tmp_path), skip_tokenizer_init=True, dtype="float32", attention_config={"backend": "CPU_ATTN"})
    assert llm.llm_engine.config.attention_backend == "torch"
    with pytest.raises(ValueError, match="attention_config: use_trtllm_attention is not supported"):
        EngineArgs(model="m", attention_config={"backend": "TRITON_ATTN", "use_trtllm_attention": True})
    with pytest.raises(ValueError,
                       match="attention_config backend 'TRITON_ATTN' contradicts attention_backend='torch'"):
        EngineArgs(model="m", attention_backend="torch", attention_config={"backend": "TRITON_ATTN"})
