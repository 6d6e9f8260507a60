"""`pagedllm` command-line parsing (no server started)."""
from __future__ import annotations

import re
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
                 "--no-enable-prefix-caching", "--max-model-len", "2K", "--dtype", "bfloat16", "--seed", "3",
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


def test_disable_log_requests_is_deprecated(caplog):
    with caplog.at_level("WARNING", logger="pagedllm"):
        assert parse("serve", "--disable-log-requests").log_requests is False
    assert "--disable-log-requests` is deprecated" in caplog.text


def test_shutdown_timeout_and_seqs_per_request_flags():
    assert parse("serve").shutdown_timeout == 0
    assert parse("serve", "--shutdown-timeout", "30").shutdown_timeout == 30
    with pytest.raises(ValueError, match="--shutdown-timeout must be a non-negative"):
        parse("serve", "--shutdown-timeout", "-1")
    assert EngineArgs.from_cli_args(parse("serve", "--max-num-seqs-per-request", "4")).max_num_seqs_per_request == 4
    assert EngineArgs.from_cli_args(parse("serve", "--long-prefill-token-threshold", "0")) \
        .long_prefill_token_threshold == 0


def test_request_logging_and_api_key_env(monkeypatch):
    # vLLM's current default: prompts are logged only with --enable-log-requests.
    assert parse("serve").log_requests is False
    assert parse("serve", "--enable-log-requests").log_requests is True
    assert parse("serve", "--disable-log-requests").log_requests is False
    assert parse("serve", "--disable-log-requests", "--enable-log-requests").log_requests is True
    monkeypatch.setenv("PAGEDLLM_API_KEY", "from-env")
    assert parse("serve").api_key == ["from-env"]
    assert parse("serve", "--api-key", "flag").api_key == ["flag"]
    assert parse("serve", "--api-key", "k1", "k2").api_key == ["k1", "k2"]      # vLLM: several keys


def test_limit_flags():
    args = parse("serve")
    assert (args.max_n, args.max_prompts_per_request, args.max_request_body_bytes) == (128, 2048, 32 * 1024 * 1024)
    assert args.trust_request_chat_template is False
    args = parse("serve", "--max-n", "4", "--max-prompts-per-request", "2", "--max-request-body-bytes", "0",
                 "--trust-request-chat-template")
    assert (args.max_n, args.max_prompts_per_request, args.max_request_body_bytes) == (4, 2, 0)
    assert args.trust_request_chat_template is True
    with pytest.raises(ValueError, match=r"--max-n must be in \[1, 16384\], got 0"):
        parse("serve", "--max-n", "0")
    with pytest.raises(ValueError, match="--max-prompts-per-request must be at least 1"):
        parse("serve", "--max-prompts-per-request", "0")


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


def test_serve_help_keyword_as_vllm():
    """vLLM's `serve --help=<keyword>`: a group by its config-class title (any case), the flags containing a word
    (_ or -), all, the list of groups; exit 0. Before: argparse's "ignored explicit argument", exit 2."""
    def help_of(keyword: str) -> str:
        out = subprocess.run([sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", f"--help={keyword}"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout
    model = help_of("modelconfig")
    assert model.startswith("ModelConfig:") and "--max-model-len" in model and "--dtype" in model
    assert "--max-num-seqs" not in model and "--port" not in model
    cache = help_of("CacheConfig")
    assert "--gpu-memory-utilization" in cache and "--block-size" in cache and "--dtype " not in cache
    assert "--port" in help_of("Frontend") and "--max-num-seqs" in help_of("SchedulerConfig")
    one = help_of("max_num_seqs")
    assert one.startswith("Arguments matching 'max-num-seqs'") and "--max-num-seqs " in one
    assert "--model-impl" not in one
    assert "No group or arguments matching 'nosuchflag'" in help_of("nosuchflag")
    groups = help_of("listgroup")
    for title in ("Frontend", "ModelConfig", "LoadConfig", "ParallelConfig", "CacheConfig", "SchedulerConfig",
                  "LoRAConfig"):
        assert f"  - {title}\n" in groups
    everything = help_of("all")
    assert "--port" in everything and "--max-model-len" in everything and "--help=ModelConfig" in everything


def test_engine_flag_help_says_what_the_flag_does():
    """serve --help: no flag that works is described as unsupported; --block-size takes vLLM's sizes."""
    parser = make_parser()
    serve = next(a for a in parser._actions if getattr(a, "choices", None) and "serve" in a.choices).choices["serve"]
    helps = {a.dest: a.help for a in serve._actions}
    assert "fp8_e5m2" in helps["kv_cache_dtype"] and "Only auto" not in helps["kv_cache_dtype"]
    assert "streamed to the GPU" in helps["cpu_offload_gb"] and "Not supported" not in helps["cpu_offload_gb"]
    assert "ray" in helps["distributed_executor_backend"] and "Only uni" not in helps["distributed_executor_backend"]
    assert "bitsandbytes" in helps["quantization"] and "bitsandbytes" in helps["load_format"]
    assert [parse("serve", "--block-size", n).block_size for n in ("1", "256")] == [1, 256]


def test_snake_case_flags_as_vllm_accepts_them():
    args = parse("serve", "m", "--tensor_parallel_size", "1", "--max_model_len=2K", "--gpu_memory_utilization",
                 "0.5", "--served_model_name", "my_model", "--no-enable_prefix_caching", "-tp", "1")
    assert (args.tensor_parallel_size, args.max_model_len, args.gpu_memory_utilization) == (1, 2048, 0.5)
    assert args.served_model_name == ["my_model"] and args.enable_prefix_caching is False   # values stay as given
    from pagedllm.bench.cli import BENCHMARKS  # noqa: F401  (the bench sub-commands parse the same way)
    bench = make_parser().parse_args(["bench", "latency", "--input_len", "8", "--max_model_len", "64"])
    assert (bench.input_len, bench.max_model_len) == (8, 64)


def test_switch_flags():
    args = parse("serve", "--no-pdl", "--triton-gemv", "--no-piecewise-cuda-graphs", "--no-cpu-onednn")
    engine_args = EngineArgs.from_cli_args(args)
    assert (engine_args.pdl, engine_args.triton_gemv, engine_args.piecewise_cuda_graphs, engine_args.cpu_onednn) == \
        (False, True, False, False)
    engine_args = EngineArgs.from_cli_args(parse("serve"))
    assert (engine_args.pdl, engine_args.triton_gemv, engine_args.piecewise_cuda_graphs, engine_args.cpu_onednn) == \
        (None, None, None, None)                     # None: the PAGEDLLM_* variable decides (on by default)


@pytest.mark.parametrize("flags, message", [
    (["--swap-space=-1"], "swap_space must be >= 0"),
    (["--preemption-mode", "swap"], "preemption_mode='swap' needs swap space"),
    (["--cpu-offload-gb=-8"], "cpu_offload_gb must be >= 0"),
    (["--task", "transcription"], "transcription and draft models are not supported yet"),
    (["--convert", "mm_encoder_only"], "convert='mm_encoder_only' is not supported yet"),
    (["--task", "embed", "--convert", "classify"], "task='embed' contradicts convert='classify'"),
    (["--runner", "draft"], "draft models are not supported yet"),
    (["--task", "generate", "--runner", "pooling"], "task='generate' contradicts runner='pooling'"),
    (["--kv-cache-dtype", "int8"], "kv_cache_dtype must be one of 'auto', 'bfloat16', 'fp8', 'fp8_e4m3', 'fp8_e5m2'"),
    (["--enable-lora", "--tensor-parallel-size", "2", "--fully-sharded-loras"], "fully_sharded_loras=True is not "
                                                                               "supported yet"),
    (["--scheduling-policy", "lifo"], "scheduling_policy must be 'fcfs' or 'priority'"),
    (["--distributed-executor-backend", "external_launcher"], "external launchers are not supported yet"),
    (["--tokenizer-mode", "mistral"], "tokenizer_mode='mistral' is not supported yet"),
    (["--speculative-config", '{"method": "ngram"}'], "speculative_config needs num_speculative_tokens"),
    (["--speculative-config", '{"method": "eagle3", "model": "x", "num_speculative_tokens": 3}'],
     "speculative_config method 'eagle3' is not supported by pagedllm yet; supported: 'ngram'"),
    (["-cc", "3"], "compilation_config is not supported yet"),     # a torch.compile mode (-O3 is a level)
    (["--performance-mode", "throughput"], "performance_mode='throughput' is not supported yet"),
    (["--data-parallel-size", "2"], "data_parallel_size=2 is not supported yet"),
    (["--disable-custom-kernels", "--attention-backend", "triton"], "contradicts disable_custom_kernels"),
    (["--max-num-seqs", "0"], "max_num_seqs must be >= 1, got 0"),
    # Checked before start-up, not in the engine process (a traceback there).
    (["--gpu-memory-utilization", "1.5"], "gpu_memory_utilization must be in (0, 1], got 1.5"),
    (["--max-model-len", "-5"], "max_model_len must be positive, or -1 / 'auto' (the longest that fits in memory)"),
    (["--max-num-batched-tokens", "0"], "max_num_batched_tokens must be >= 1, got 0"),
    # -q is checked by name before start-up, as vLLM's choices are (no model is looked for).
    (["-q", "int3"], "Unknown quantization method: int3. Must be one of ['awq'"),
    (["-q", "hqq"], "Quantization method hqq is a vLLM method that pagedllm does not support yet"),
])
def test_unsupported_flags_parse_then_fail_clearly(flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse("serve", "m", *flags)


def test_accepted_vllm_flags():
    args = parse("serve", "m", "--disable-custom-all-reduce", "--swap-space", "4", "--preemption-mode", "swap",
                 "--kv-cache-dtype", "fp8", "--task", "generate",
                 "--scheduling-policy", "priority", "--kv-cache-memory-bytes", "1000000", "--compilation-config", "0",
                 "--hf-overrides", '{"rope_theta": 1e6}')
    engine_args = EngineArgs.from_cli_args(args)
    assert engine_args.disable_custom_all_reduce and engine_args.scheduling_policy == "priority"
    assert (engine_args.swap_space, engine_args.preemption_mode, engine_args.kv_cache_dtype) == (4, "swap", "fp8")
    for flags in (["--task", "embed"], ["--runner", "pooling"], ["--task", "embedding", "--runner", "pooling"],
                  ["--task", "classify"], ["--task", "score"], ["--runner", "pooling", "--convert", "classify"]):
        parse("serve", "m", *flags)      # accepted: finalize_args runs verify_engine_args
    assert engine_args.kv_cache_memory_bytes == 1000000 and engine_args.hf_overrides == {"rope_theta": 1e6}


def test_vllm_flags_pagedllm_lacks_are_named_as_such(capsys):
    with pytest.raises(SystemExit):
        make_parser().parse_args(["serve", "m", "--enable-eplb", "--enable-dbo", "--no-such-flag"])
    err = capsys.readouterr().err
    assert ("unrecognized arguments: --enable-eplb --enable-dbo --no-such-flag (--enable-eplb, "
            "--enable-dbo are vLLM engine flags that pagedllm does not support yet)") in err
    with pytest.raises(SystemExit):
        make_parser().parse_args(["serve", "m", "--rope-scaling", '{"rope_type": "yarn"}'])
    assert ("--rope-scaling is a vLLM engine flag that pagedllm does not support yet; --rope-scaling: "
            "hf_overrides / --hf-overrides '{\"rope_scaling\": {...}}' does it") in capsys.readouterr().err


def test_vllm_server_flags_pagedllm_lacks_are_named_as_such(capsys):
    # vLLM's frontend flags of features pagedllm lacks: named, with what to do where there is something.
    with pytest.raises(SystemExit):
        make_parser().parse_args(["serve", "m", "--api-server-count", "2", "--headless", "--enable-eplb"])
    err = capsys.readouterr().err
    assert ("(--enable-eplb is a vLLM engine flag that pagedllm does not support yet; --api-server-count, "
            "--headless are vLLM server flags that pagedllm does not support yet; --api-server-count: one API server "
            "process serves every request (its engine runs in a process of its own))") in err


def test_serve_exits_with_the_message():
    out = subprocess.run([sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", "m", "--swap_space=-4"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "error: swap_space must be >= 0" in out.stderr
    assert "unrecognized arguments" not in out.stderr


def test_bare_command_prints_help_and_exits_0(capsys):
    # vLLM's main(): no subcommand prints the help and returns (exit 0); pagedllm exited 1.
    from pagedllm.entrypoints.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pagedllm") and "serve" in out


def test_json_flag_in_key_value_form_says_what_json_to_give(capsys):
    # Older vLLM took `--limit-mm-per-prompt image=1`; vLLM 0.24 takes JSON only. The error gives the JSON to pass
    # (it was argparse's bare "invalid loads value: 'image=1'").
    with pytest.raises(SystemExit):
        make_parser().parse_args(["serve", "m", "--limit-mm-per-prompt", "image=1,video=0"])
    assert ("argument --limit-mm-per-prompt: 'image=1,video=0' is not JSON: older vLLM's KEY=VALUE form is not "
            "accepted (vLLM 0.24 refuses it too); give JSON: '{\"image\": 1, \"video\": 0}'.") \
        in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_parser().parse_args(["serve", "m", "--hf-overrides", '{"rope_theta": 1e6'])
    assert "argument --hf-overrides: '{\"rope_theta\": 1e6' is not valid JSON" in capsys.readouterr().err
    assert parse("serve", "m", "--limit-mm-per-prompt", '{"image": 1}').limit_mm_per_prompt == {"image": 1}


def test_engine_switches_take_vllms_no_forms():
    # vLLM's engine switches are BooleanOptionalAction (its get_kwargs: every bool field): launchers that render a
    # false setting as --no-FLAG (--no-enforce-eager, --no-trust-remote-code) got 'unrecognized arguments'.
    args = parse("serve", "m", "--enforce-eager", "--no-enforce-eager", "--no-trust-remote-code", "--enable-lora",
                 "--no-enable-sleep-mode", "--no-skip-tokenizer-init", "--no-disable-sliding-window",
                 "--no-disable-chunked-mm-input", "--no-disable-custom-all-reduce", "--no-fully-sharded-loras")
    engine_args = EngineArgs.from_cli_args(args)
    assert (engine_args.enforce_eager, engine_args.trust_remote_code, engine_args.enable_lora,
            engine_args.enable_sleep_mode, engine_args.skip_tokenizer_init) == (False, False, True, False, False)
    defaults = EngineArgs.from_cli_args(parse("serve", "m"))
    assert (defaults.enforce_eager, defaults.trust_remote_code, defaults.enable_lora) == (False, False, False)


def test_optional_engine_flags_take_none_as_vllm():
    # vLLM's optional_type: "None" (or "") is None for a flag whose field may be None (its help lists None among
    # --preemption-mode's choices). It was 'invalid int value', 'Unknown quantization method: none', or a tokenizer
    # named "None".
    engine_args = EngineArgs.from_cli_args(parse(
        "serve", "m", "-q", "None", "--seed", "None", "--max-model-len", "None", "--tokenizer", "None",
        "--distributed-executor-backend", "None", "--preemption-mode", "None", "--max-num-seqs", ""))
    assert (engine_args.quantization, engine_args.seed, engine_args.max_model_len, engine_args.tokenizer,
            engine_args.distributed_executor_backend, engine_args.preemption_mode, engine_args.max_num_seqs) == \
        (None,) * 7
    assert parse("serve", "m", "--seed", "7", "--preemption-mode", "swap", "--swap-space", "1").seed == 7
    with pytest.raises(SystemExit):
        parse("serve", "m", "--seed", "x")
