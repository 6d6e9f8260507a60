"""vLLM's ``hf_token`` / ``--hf-token``: the Hugging Face token for a gated model's download (the weights' snapshot
and the tokenizer), never printed in the server's start-up log. The Hub is replaced by a function that records what
it was asked and answers with a tiny local model. (LoRA adapters from the Hub: tests/unit/test_lora.py.)"""
from __future__ import annotations

import argparse
import logging

import pytest

from pagedllm import LLM
from pagedllm.config import EngineArgs


def _fake_hub(monkeypatch, folder: str) -> list:
    import huggingface_hub
    asked = []

    def snapshot_download(repo_id, local_files_only=False, token=None, **kwargs):
        asked.append(("snapshot", repo_id, local_files_only, token))
        return folder
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return asked


@pytest.mark.parametrize("hf_token", ["hf_secret", True, None])
def test_a_hub_model_downloads_with_the_token(tiny_llama_dir, monkeypatch, hf_token):
    import transformers
    asked = _fake_hub(monkeypatch, tiny_llama_dir)
    original = transformers.AutoTokenizer.from_pretrained.__func__

    def from_pretrained(cls, path, *args, **kwargs):
        asked.append(("tokenizer", kwargs.get("token")))
        return original(cls, path, *args, **kwargs)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(from_pretrained))
    llm = LLM(model="someone/gated-llama", hf_token=hf_token, dtype="float32", max_model_len=64,
              kv_cache_memory_gb=0.01)
    assert llm.generate(["Hello"], use_tqdm=False)[0].outputs[0].token_ids
    assert asked[0] == ("snapshot", "someone/gated-llama", True, hf_token)       # the local cache first
    assert ("tokenizer", hf_token) in asked and all(a[-1] == hf_token for a in asked)


def test_hf_token_flag_and_errors(monkeypatch):
    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    assert EngineArgs.from_cli_args(parser.parse_args(["--hf-token", "hf_abc"])).hf_token == "hf_abc"
    assert EngineArgs.from_cli_args(parser.parse_args(["--hf-token"])).hf_token is True     # the saved login
    assert EngineArgs.from_cli_args(parser.parse_args([])).hf_token is None
    with pytest.raises(ValueError, match="hf_token must be a token"):
        LLM(model="someone/gated-llama", hf_token=" ")


def test_the_token_is_not_in_the_servers_start_up_log(tiny_llama_dir, monkeypatch, caplog):
    from app_client import serve_args

    from pagedllm.entrypoints.openai import api_server

    def stop(*_args, **_kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(api_server, "configure_logging", lambda: None)
    monkeypatch.setattr(api_server, "bind_listen_socket", lambda host, port: None)
    monkeypatch.setattr(api_server, "build_engine", stop)
    with caplog.at_level(logging.INFO, logger=api_server.logger.name), pytest.raises(KeyboardInterrupt):
        api_server.run_server(serve_args(tiny_llama_dir, "--hf-token", "hf_secret_value", "--api-key", "k_secret"))
    text = caplog.text
    assert "'hf_token': '<set>'" in text
    assert "hf_secret_value" not in text and "k_secret" not in text
