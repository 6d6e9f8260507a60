"""`pagedllm` command-line parsing (no server started)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pagedllm.config import EngineArgs
from pagedllm.entrypoints.cli import make_parser
from pagedllm.entrypoints.openai.cli_args import finalize_args, load_chat_template


def parse(*argv: str):
    return finalize_args(make_parser().parse_args(list(argv)))


def test_serve_model_positional_flag_and_default():
    assert parse("serve").model == EngineArgs.model
    assert parse("serve", "some/model").model == "some/model"
    assert parse("serve", "--model", "other/model").model == "other/model"
    args = parse("serve", "m", "--port", "9000", "--served-model-name", "a", "b", "-tp", "1", "-q", "gguf",
                 "--no-enable-prefix-caching", "--max-model-len", "2k", "--dtype", "bfloat16", "--seed", "3",
                 "--max-num-seqs", "8", "--max-num-batched-tokens", "512", "--gpu-memory-utilization", "0.5",
                 "--enforce-eager", "--trust-remote-code", "--disable-log-stats", "--uvicorn-log-level", "warning",
                 "--allowed-origins", '["http://a"]', "--root-path", "/api", "--generation-config", "vllm")
    assert args.port == 9000 and args.served_model_name == ["a", "b"] and args.quantization == "gguf"
    assert args.enable_prefix_caching is False and args.max_model_len == 2048
    assert args.allowed_origins == ["http://a"] and args.root_path == "/api"
    engine_args = EngineArgs.from_cli_args(args)
    assert (engine_args.model, engine_args.dtype, engine_args.seed, engine_args.max_num_seqs) == \
        ("m", "bfloat16", 3, 8)
    assert engine_args.enforce_eager and engine_args.trust_remote_code and engine_args.disable_log_stats


def test_request_logging_and_api_key_env(monkeypatch):
    assert parse("serve").log_requests is True
    assert parse("serve", "--disable-log-requests").log_requests is False
    assert parse("serve", "--disable-log-requests", "--enable-log-requests").log_requests is True
    monkeypatch.setenv("PAGEDLLM_API_KEY", "from-env")
    assert parse("serve").api_key == "from-env"
    assert parse("serve", "--api-key", "flag").api_key == "flag"


def test_chat_template_file_or_inline(tmp_path):
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert load_chat_template(str(f)) == f.read_text()
    assert load_chat_template("{{ messages[0].content }}\\n") == "{{ messages[0].content }}\n"
    with pytest.raises(ValueError, match="looks like a file path"):
        load_chat_template("/no/such/template.jinja")


def test_help_and_version():
    out = subprocess.run([sys.executable, "-m", "pagedllm.entrypoints.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "serve" in out and "bench" in out
    out = subprocess.run([sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for flag in ("--host", "--port", "--served-model-name", "--max-model-len", "--chat-template", "--api-key",
                 "--dtype", "--tensor-parallel-size", "--enable-prefix-caching", "--disable-log-requests",
                 "--ssl-keyfile", "--root-path", "--generation-config", "--skip-tokenizer-init", "--load-format"):
        assert flag in out, flag
    import pagedllm
    out = subprocess.run([sys.executable, "-m", "pagedllm.entrypoints.cli", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == pagedllm.__version__
