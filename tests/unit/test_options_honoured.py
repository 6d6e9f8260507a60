"""No silent options: every EngineArgs and SamplingParams field is either honoured (read where the table says, or
checked by behaviour) or rejected with an error that names it. A new field fails this test until it has an entry."""
from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import torch
import transformers

from pagedllm import config as cfg_mod
from pagedllm.config import EngineArgs, EngineConfig, ResolvedModel
from pagedllm.engine.core import create_engine_config
from pagedllm.model.layers.sampler import Sampler
from pagedllm.sampling_params import GuidedDecodingParams, SamplingParams

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "pagedllm"


@dataclass
class Read:
    """Honoured: ``pattern`` is read in one of ``where`` (files or folders under pagedllm/)."""
    where: tuple[str, ...]
    pattern: str


@dataclass
class Behaves:
    """Honoured: a cheap behaviour check; ``check`` raises AssertionError when the option stops working."""
    check: Callable[[Any], None]


@dataclass
class Rejects:
    """Rejected: this value raises ``error`` with ``match`` in its message."""
    value: Any
    match: str
    error: type = ValueError


def build(monkeypatch, device: str = "cpu", gguf: str | None = None, **kwargs) -> EngineConfig:
    """EngineConfig.build on a made-up model: no files, no download."""
    monkeypatch.setattr(cfg_mod, "_pick_device", lambda name: torch.device(device))
    hf = transformers.LlamaConfig(max_position_embeddings=4096)
    return EngineConfig.build(EngineArgs(model="m", **kwargs), ResolvedModel("m", hf, None, gguf_file=gguf))


def _cfg(**kwargs):
    return lambda mp: build(mp, **kwargs)


def _served(monkeypatch, device: str = "cpu", **kwargs) -> EngineConfig:
    """``build`` as ``pagedllm serve`` builds it (its usage context picks some defaults)."""
    monkeypatch.setattr(cfg_mod, "_pick_device", lambda name: torch.device(device))
    args = EngineArgs(model="m", **kwargs)
    args.usage_context = "openai_api_server"
    return EngineConfig.build(args, ResolvedModel("m", transformers.LlamaConfig(max_position_embeddings=4096), None))


ENGINE_FIELDS: dict[str, list] = {
    "model": [Read(("model/loader.py",), "args.model")],
    "tokenizer": [Read(("model/loader.py",), "args.tokenizer")],
    "tokenizer_mode": [Read(("engine/",), "args.tokenizer_mode != \"slow\""),
                       Rejects("mistral", "tokenizer_mode='mistral' is not supported yet"),
                       Behaves(_cfg(tokenizer_mode="hf")),      # vLLM's "hf": test_tokenizer_mode_hf
                       Rejects("fast", "tokenizer_mode must be 'auto', 'hf' or 'slow'")],
    "skip_tokenizer_init": [Read(("engine/",), "args.skip_tokenizer_init")],
    # (the prompts themselves: tests/models/test_prompt_embeds.py, tests/unit/test_prompt_embeds_server.py)
    # (the processors' effect: tests/unit/test_logits_processors.py)
    "logits_processors": [Read(("worker/model_runner.py", "engine/input_processor.py"),
                               "load_logits_processor_classes(config.args.logits_processors)")],
    "safetensors_load_strategy": [Read(("model/loader.py",), "strategy=config.args.safetensors_load_strategy"),
                                  Rejects("torchao", "torchao checkpoints, which pagedllm does not load"),
                                  Rejects("fast", "safetensors_load_strategy must be one of")],
    "pt_load_map_location": [Read(("model/loader.py",), "map_location=config.args.pt_load_map_location"),
                             Rejects(3, "pt_load_map_location must be a device string")],
    # Into transformers' AutoConfig / AutoTokenizer with trust_remote_code: test_code_revision_reaches_transformers.
    "code_revision": [Read(("model/loader.py",), "code_revision=args.code_revision"),
                      Read(("engine/input_processor.py",), "args.code_revision")],
    # The prefix cache's CPU tier: tests/unit/test_swap_preemption.py (tokens equal recomputed ones, copies counted).
    "kv_offloading_size": [Read(("worker/model_runner.py",), "args.kv_offloading_size"),
                           Read(("engine/core.py",), "config.args.kv_offloading_size"),
                           Rejects(-1, "kv_offloading_size must be a positive number of GiB")],
    "kv_offloading_backend": [Rejects("lmcache", "LMCache is not integrated"),
                              Rejects("other", "kv_offloading_backend must be 'native' or 'lmcache'")],
    "kv_transfer_config": [Read(("config.py",), "kv_transfer_offloading_gib(args.kv_transfer_config)"),
                           Rejects({"kv_connector": "NixlConnector", "kv_role": "kv_both"},
                                   "kv_connector='NixlConnector' is not supported by pagedllm")],
    # Waves of loading ranks: tests/unit/test_tensor_parallel.py.
    "max_parallel_loading_workers": [Read(("worker/executor.py",), "config.args.max_parallel_loading_workers"),
                                     Rejects(0, "max_parallel_loading_workers must be a positive integer")],
    "enable_prompt_embeds": [Read(("engine/input_processor.py",), "args.enable_prompt_embeds"),
                             Read(("entrypoints/openai/serving_completion.py",), "args.enable_prompt_embeds")],
    "trust_remote_code": [Read(("model/loader.py",), "trust_remote_code=args.trust_remote_code")],
    "revision": [Read(("model/loader.py",), "revision=args.revision")],
    "tokenizer_revision": [Read(("engine/",), "revision=args.tokenizer_revision")],
    # Downloads with it (model, tokenizer; LoRA adapters): tests/unit/test_hf_token.py, test_lora.py.
    "hf_token": [Read(("model/loader.py",), "token=args.hf_token"), Read(("lora/manager.py",), "self.dtype, self.hf_token"),
                 Rejects("", "hf_token must be a token")],
    "download_dir": [Read(("model/loader.py",), "cache_dir=args.download_dir")],
    # tests/unit/test_weight_files.py (downloads and local loading), test_hf_config_load.py (the other three)
    "ignore_patterns": [Read(("model/loader.py",), "ignore_patterns=args.ignore_patterns"),
                        Rejects([3], "ignore_patterns must be a file pattern or a list of them")],
    "hf_config_path": [Read(("model/loader.py",), "_config_dir(args) if args.hf_config_path")],
    "config_format": [Rejects("mistral", "config_format='mistral' is not supported")],
    "model_impl": [Rejects("transformers", "model_impl='transformers' (vLLM's Transformers backend")],
    "load_format": [Read(("model/loader.py",), "args.load_format"), Rejects("tensorizer", "load_format must be one of")],
    "dtype": [Behaves(lambda mp: build(mp, dtype="float32").dtype == torch.float32 or _fail()),
              # float16 on the CPU: fp16 weights computed in fp32 (tests/unit/test_cpu_fp16_weights.py)
              Behaves(lambda mp: (lambda c: c.dtype == torch.float32 and c.cpu_fp16_weights)(
                  build(mp, dtype="float16")) or _fail()),
              Rejects("fp8", "Unknown dtype 'fp8'")],
    # The method is resolved against the registry and the checkpoint by create_engine_config
    # (tests/unit/test_quant_int_formats.py loads AWQ / GPTQ / compressed-tensors checkpoints).
    "quantization": [Read(("engine/core.py",), "resolve_quantization(args.quantization"),
                     Behaves(lambda mp: _unknown_quantization()),
                     Rejects("gguf", "quantization='gguf' needs a .gguf model file")],
    "seed": [Read(("worker/model_runner.py",), "args.seed")],
    "max_model_len": [Behaves(lambda mp: build(mp, max_model_len=1000).max_model_len == 1000 or _fail()),
                      Rejects(8192, "greater than the derived max_model_len"),
                      # -1 / 'auto': cut to the KV cache by engine/core.py (tests/unit/test_memory_plan.py)
                      Read(("engine/core.py",), "config.args.max_model_len == -1"),
                      Rejects(-2, "max_model_len must be positive, or -1 / 'auto'")],
    "block_size": [Behaves(lambda mp: build(mp, block_size=32).block_size == 32 or _fail()),
                   Rejects(12, "block_size must be a positive power of two")],
    "enable_prefix_caching": [Read(("engine/",), "args.enable_prefix_caching")],
    "gpu_memory_utilization": [Read(("worker/model_runner.py",), "args.gpu_memory_utilization"),
                               Rejects(1.5, "gpu_memory_utilization must be in (0, 1]")],
    "kv_cache_memory_gb": [Behaves(lambda mp: build(mp, device="cuda", kv_cache_memory_gb=2).kv_cache_memory_bytes
                                   == 2 << 30 or _fail()),
                           Read(("worker/model_runner.py",), "config.kv_cache_memory_bytes"),
                           Rejects(-1.0, "kv_cache_memory_gb must be positive")],
    "kv_cache_memory_bytes": [Behaves(lambda mp: build(mp, kv_cache_memory_bytes=4096).kv_cache_memory_bytes == 4096
                                      or _fail()),
                              Rejects(0, "kv_cache_memory_bytes must be positive")],
    # vLLM's quantized-KV-cache page spells out calculate_kv_scales=False (scales 1.0); True's warm-up calibration of
    # an fp8 cache is not done here (with a 16-bit cache the scales are used by nothing, in vLLM too).
    "calculate_kv_scales": [Behaves(lambda mp: build(mp, kv_cache_dtype="fp8", calculate_kv_scales=False)
                                    .cache_config.calculate_kv_scales is False or _fail()),
                            Behaves(_cfg(calculate_kv_scales=True)),
                            Behaves(lambda mp: _raises(lambda: build(mp, kv_cache_dtype="fp8_e5m2",
                                                                     calculate_kv_scales=True),
                                                       "calculate_kv_scales=True is not supported yet"))],
    # A count below 1 was the memory plan's "-1 blocks ... estimated maximum model length is -16".
    "num_gpu_blocks_override": [Read(("worker/model_runner.py",), "args.num_gpu_blocks_override"),
                                Rejects(-1, "num_gpu_blocks_override must be >= 1 (a number of KV-cache blocks), "
                                            "got -1.")],
    # Swap vs recompute preemption, same tokens, pools whole: tests/unit/test_swap_preemption.py.
    "swap_space": [Read(("worker/model_runner.py",), "args.swap_space"), Rejects(-1, "swap_space must be >= 0")],
    "preemption_mode": [Read(("engine/core.py",), "preemption_mode=config.args.preemption_mode"),
                        Read(("engine/scheduler.py",), 'self.preemption_mode == "swap"'),
                        Rejects("swap", "preemption_mode='swap' needs swap space"),
                        Rejects("lifo", "preemption_mode must be 'swap', 'recompute' or None")],
    # Layer streaming: tests/unit/test_cpu_offload.py (CPU mechanics), tests/gpu/test_cpu_offload_gpu.py.
    "cpu_offload_gb": [Read(("worker/model_runner.py",), "_offload_layers(self.model, config.args.cpu_offload_gb"),
                       Rejects(-1.0, "cpu_offload_gb must be >= 0"),
                       Rejects(2.0, "on the cpu device the weights are in CPU memory already")],
    # fp8 vs model-dtype greedy, twice the blocks: tests/unit/test_fp8_kv_cache.py.
    "kv_cache_dtype": [Read(("worker/model_runner.py",), "kv_cache_torch_dtype(config.args.kv_cache_dtype"),
                       Rejects("float16", "kv_cache_dtype='float16' is not supported yet"),
                       Rejects("int4", "kv_cache_dtype must be one of 'auto', 'bfloat16', 'fp8', 'fp8_e4m3', "
                                       "'fp8_e5m2'")],
    "prefix_caching_hash_algo": [Rejects("builtin", "prefix_caching_hash_algo='builtin' is not supported yet")],
    "max_num_seqs": [Behaves(lambda mp: build(mp, max_num_seqs=7).max_num_seqs == 7 or _fail()),
                     Rejects(-1, "max_num_seqs must be >= 1"),
                     Rejects(0, "max_num_seqs must be >= 1, got 0")],    # not the default in disguise
    "max_num_batched_tokens": [Behaves(lambda mp: build(mp, max_num_batched_tokens=99).max_num_batched_tokens == 99
                                       or _fail()),
                               # vLLM's: an unset max_num_seqs follows a smaller budget (it stayed 256 here) ...
                               Behaves(lambda mp: build(mp, max_num_batched_tokens=64).max_num_seqs == 64 or _fail()),
                               # ... and a budget below max_num_seqs given with it is its error (it was accepted).
                               Behaves(lambda mp: _raises(lambda: build(mp, max_num_batched_tokens=4, max_num_seqs=8),
                                                          r"^max_num_batched_tokens \(4\) must be greater than or "
                                                          r"equal to max_num_seqs \(8\)\.$")),
                               Rejects(0, "max_num_batched_tokens must be >= 1")],
    "enable_chunked_prefill": [Behaves(lambda mp: build(mp, enable_chunked_prefill=False).max_num_batched_tokens
                                       == 4096 or _fail())],
    "max_logprobs": [Read(("engine/",), "args.max_logprobs"),
                     Rejects(-5, "max_logprobs must be -1 (no cap) or >= 0, got -5")],
    # Values against HF's logits in every mode: tests/unit/test_logprobs_mode.py.
    "logprobs_mode": [Read(("worker/model_runner.py",), "Sampler(config.args.logprobs_mode, custom)"),
                      Rejects("logits", "logprobs_mode must be one of raw_logprobs, raw_logits")],
    "enforce_eager": [Read(("worker/model_runner.py",), "args.enforce_eager")],
    # vLLM's AttentionConfig: its backend is attention_backend (tests/unit/test_attention_backends.py).
    "attention_config": [Behaves(lambda mp: build(mp, attention_config={"backend": "TORCH_SDPA"}).attention_backend
                                 == "torch" or _fail()),
                         Rejects({"flash_attn_version": 3}, "attention_config: flash_attn_version is not supported")],
    # 0: no CUDA graphs, through the rule the runner follows (tests/unit/test_cuda_graph_sizes.py).
    "optimization_level": [Read(("config.py",), "args.optimization_level == 0"),
                           Behaves(lambda mp: cfg_mod.cuda_graphs_off(EngineArgs(model="m", optimization_level=0),
                                                                      True, False) or _fail()),
                           Rejects(4, "optimization_level must be one of 0, 1, 2, 3")],
    "performance_mode": [Behaves(_cfg(performance_mode="balanced")),
                         Rejects("throughput", "performance_mode='throughput' is not supported yet")],
    # No cascade attention exists here: accepted either way (an error before), kept in the arguments.
    "disable_cascade_attn": [Behaves(lambda mp: build(mp, disable_cascade_attn=True).args.disable_cascade_attn
                                     or _fail())],
    # tests/unit/test_sleep_mode.py: sleep() without it is an error, with it the memory is given back.
    "enable_sleep_mode": [Read(("engine/",), "args.enable_sleep_mode")],
    # An RLHF weight update through collective_rpc, tokens equal HF's after it: tests/unit/test_worker_extension.py.
    "worker_extension_cls": [Read(("worker/executor.py",), "runner_class(ModelRunner, config.args.worker_extension_cls)"),
                             Rejects(3, "worker_extension_cls must be the class's import path")],
    "async_scheduling": [Behaves(lambda mp: build(mp, async_scheduling=True).async_scheduling or _fail())],
    # TP=2 vs TP=1 tokens, the killed worker, indivisible heads: tests/unit/test_tensor_parallel.py.
    "tensor_parallel_size": [Behaves(lambda mp: build(mp, tensor_parallel_size=2).executor_backend == "mp"
                                     or _fail()),
                             # CUDA: one GPU per rank (NCCL); too few GPUs is the error.
                             Behaves(lambda mp: mp.setattr(torch.cuda, "device_count", lambda: 8)
                                     or build(mp, device="cuda", tensor_parallel_size=2).executor_backend == "mp"
                                     or _fail()),
                             Behaves(lambda mp: mp.setattr(torch.cuda, "device_count", lambda: 1)
                                     or _raises(lambda: build(mp, device="cuda", tensor_parallel_size=2),
                                                r"larger than the number of available GPUs \(1\)")),
                             Rejects(0, "tensor_parallel_size must be >= 1")],
    # PP=2 and TP=2 x PP=2 vs one process, the killed stage, too few layers: tests/unit/test_pipeline_parallel.py.
    "pipeline_parallel_size": [Behaves(lambda mp: build(mp, pipeline_parallel_size=2, tensor_parallel_size=2)
                                       .world_size == 4 or _fail()),
                               Behaves(lambda mp: build(mp, pipeline_parallel_size=2).executor_backend == "mp"
                                       or _fail()),
                               Behaves(lambda mp: _raises(lambda: build(mp, pipeline_parallel_size=64),
                                                          r"num_hidden_layers \(32\) must be >= pipeline_parallel_size")),
                               Rejects(0, "pipeline_parallel_size must be >= 1")],
    "distributed_executor_backend": [Behaves(_cfg(distributed_executor_backend="uni")),
                                     Behaves(lambda mp: build(mp, distributed_executor_backend="mp",
                                                              tensor_parallel_size=2).executor_backend == "mp"
                                             or _fail()),
                                     Behaves(lambda mp: _ray_backend(mp)),    # run: tests/unit/test_ray_executor.py
                                     Rejects("external_launcher", "external launchers are not supported yet"),
                                     Rejects("dask", "distributed_executor_backend must be one of")],
    "device": [Behaves(lambda mp: build(mp).device.type == "cpu" or _fail())],
    # Names are checked against the backend registry by create_engine_config (test_attention_backends.py).
    "attention_backend": [Behaves(lambda mp: build(mp, attention_backend="torch").attention_backend == "torch"
                                  or _fail()),
                          Read(("engine/core.py",), "resolve_attention_backend(config.attention_backend")],
    "disable_log_stats": [Read(("entrypoints/",), "args.disable_log_stats")],
    "enable_log_requests": [Read(("engine/async_engine.py",), "engine_args.enable_log_requests")],
    "served_model_name": [Read(("entrypoints/openai/api_server.py",), "served_model_name")],
    "generation_config": [Read(("model/loader.py",), "args.generation_config")],
    # Merged over the generation config: tests/unit/test_llm_api.py::test_override_generation_config.
    "override_generation_config": [Read(("model/loader.py",), "args.override_generation_config"),
                                   Rejects({"foo": 1}, "override_generation_config: foo is not a sampling default")],
    "hf_overrides": [Read(("model/loader.py",), "args.hf_overrides")],
    "use_tqdm_on_load": [Read(("model/loader.py",), "use_tqdm_on_load")],
    "triton_gemv": [Read(("model/layers/linear.py",), "current.triton_gemv"),
                    Behaves(lambda mp: build(mp, triton_gemv=False).triton_gemv is False or _fail())],
    "pdl": [Read(("kernels/pdl.py",), "current.pdl"),
            Behaves(lambda mp: build(mp, pdl=False).pdl is False or _fail())],
    "piecewise_cuda_graphs": [Read(("worker/model_runner.py",), "config.piecewise_cuda_graphs")],
    "cpu_onednn": [Read(("kernels/cpu_onednn.py",), "current.cpu_onednn")],
    "cpu_threads": [Read(("worker/model_runner.py",), "threads = config.cpu_threads"),
                    Behaves(lambda mp: build(mp, cpu_threads=3).cpu_threads == 3 or _fail()),
                    Rejects(0, "cpu_threads must be >= 1")],
    "disable_custom_kernels": [Behaves(lambda mp: build(mp, device="cuda", disable_custom_kernels=True)
                                       .attention_backend == "torch" or _fail())],
    # True: no one-shot all-reduce even with PAGEDLLM_CUSTOM_ALL_REDUCE_KIB set (tests/unit/test_tensor_parallel.py).
    "disable_custom_all_reduce": [Read(("worker/executor.py",), "not config.args.disable_custom_all_reduce")],
    "task": [Behaves(lambda mp: build(mp, task="embed").runner_type == "pooling" or _fail()),
             Behaves(lambda mp: build(mp, task="generate").runner_type == "generate" or _fail()),
             Rejects("transcription", "transcription and draft models are not supported yet"),
             Rejects("reward", "convert='reward' runs a reward checkpoint"),
             Rejects("classify", "needs a sequence-classification checkpoint (*ForSequenceClassification)"),
             Rejects("translate", "task must be one of")],
    "runner": [Behaves(lambda mp: build(mp, runner="pooling").is_pooling or _fail()),
               Behaves(lambda mp: build(mp, runner="pooling").enable_chunked_prefill is False or _fail()),
               Behaves(_cfg(runner="generate")), Rejects("draft", "draft models are not supported yet"),
               Rejects("embed", "runner must be one of")],
    # embed: a decoder as an embedder; classify: a *ForSequenceClassification's head (tests/models/
    # test_classifier_models.py); a new head on a generative checkpoint is refused.
    "convert": [Behaves(lambda mp: build(mp, convert="embed").runner_type == "pooling" or _fail()),
                Rejects("classify", "converting a model into a classifier with a new head is not supported yet"),
                Rejects("reward", "convert='reward' runs a reward checkpoint"),
                Rejects("auto_embed", "convert must be one of")],
    "scheduling_policy": [Behaves(lambda mp: build(mp, scheduling_policy="priority").verify_priority(3)),
                          Behaves(lambda mp: _raises(lambda: build(mp).verify_priority(3),
                                                     "Got priority 3 but Priority scheduling is not enabled")),
                          Rejects("lifo", "scheduling_policy must be 'fcfs' or 'priority'")],
    # LoRA: behaviour in tests/unit/test_lora.py (tokens against the merged model, max_loras=1 with two adapters).
    "enable_lora": [Read(("worker/model_runner.py",), "config.args.enable_lora"),
                    Read(("engine/core.py",), "config.args.enable_lora"),
                    Read(("engine/input_processor.py",), "self.config.args.enable_lora")],
    "max_loras": [Read(("engine/core.py",), "config.args.max_loras"),
                  Read(("worker/model_runner.py",), "args.max_loras"),
                  Rejects(0, "max_loras (0) must be >= 1"), Rejects(4, "max_loras only applies with enable_lora=True")],
    "max_lora_rank": [Read(("worker/model_runner.py",), "args.max_lora_rank"),
                      Rejects(12, "max_lora_rank (12) must be one of"),
                      Rejects(64, "max_lora_rank only applies with enable_lora=True")],
    "max_cpu_loras": [Read(("worker/model_runner.py",), "args.max_cpu_loras"),
                      Rejects(0, "max_cpu_loras (0) must be >= max_loras (1)")],
    "lora_dtype": [Read(("worker/model_runner.py",), "args.lora_dtype"),
                   Rejects("float32", "lora_dtype must be one of")],
    "enable_lora_bias": [Rejects(True, "enable_lora_bias=True is not supported yet")],
    "fully_sharded_loras": [Rejects(True, "fully_sharded_loras only applies with enable_lora=True")],
    "long_prefill_token_threshold": [
        Read(("engine/core.py",), "config.long_prefill_token_threshold"),
        Behaves(lambda mp: build(mp, long_prefill_token_threshold=64).long_prefill_token_threshold == 64 or _fail()),
        Behaves(lambda mp: build(mp).long_prefill_token_threshold == 0 or _fail()),          # offline: no cap
        Behaves(lambda mp: _served(mp).long_prefill_token_threshold == 64 or _fail()),      # served on the CPU
        Behaves(lambda mp: _served(mp, long_prefill_token_threshold=0).long_prefill_token_threshold == 0 or _fail()),
        Rejects(-1, "long_prefill_token_threshold must be >= 0")],
    "max_num_seqs_per_request": [
        Read(("engine/core.py",), "config.max_num_seqs_per_request"),
        Behaves(lambda mp: build(mp).max_num_seqs_per_request == 0 or _fail()),              # offline: no cap
        Behaves(lambda mp: _served(mp).max_num_seqs_per_request == 128 // 16 or _fail()),     # vLLM CPU: 128 seqs
        Behaves(lambda mp: _served(mp, max_num_seqs_per_request=4).max_num_seqs_per_request == 4 or _fail()),
        Rejects(-1, "max_num_seqs_per_request must be >= 0")],
    "max_num_partial_prefills": [Rejects(2, "max_num_partial_prefills is not supported yet")],
    # vLLM's default 1 is accepted (it only matters with concurrent partial prefills, which pagedllm lacks); above
    # max_num_partial_prefills is vLLM's error. It was "unexpected keyword argument", even for 1.
    "max_long_partial_prefills": [Behaves(_cfg(max_long_partial_prefills=1)),
                                  Rejects(2, "max_long_partial_prefills (2) must be >= 1 and <= "
                                             "max_num_partial_prefills (1)"),
                                  Rejects(0, "max_long_partial_prefills (0) must be >= 1")],
    # Batches streamed (DELTA) outputs: test_detokenizer.py test_stream_interval_batches_deltas.
    "stream_interval": [Read(("engine/engine.py", "engine/async_engine.py"), "args.stream_interval"),
                        Rejects(0, "stream_interval must be >= 1, got 0")],
    "enable_expert_parallel": [Rejects(True, "enable_expert_parallel is not supported yet")],
    "data_parallel_size": [Rejects(2, "data_parallel_size=2 is not supported yet")],
    # Greedy tokens equal, drafts accepted: tests/unit/test_spec_decode.py.
    "speculative_config": [Read(("engine/core.py",), "speculative_config=config.args.speculative_config"),
                           Rejects({"method": "eagle", "model": "x", "num_speculative_tokens": 4},
                                   "speculative_config method 'eagle' is not supported by pagedllm yet")],
    # Traces written: tests/unit/test_vllm_examples.py::test_profiling_example_with_profiler_config.
    "profiler_config": [Read(("worker/model_runner.py", "entrypoints/dev_routes.py"), "args.profiler_config"),
                        Rejects({"profiler": "cuda"}, "profiler='cuda' is not supported yet"),
                        Rejects({"profiler": "torch", "torch_profiler_dir": "x", "delay_iterations": 3},
                                "'delay_iterations' is not supported yet")],
    # Compact JSON for every request: tests/unit/test_structured_output.py::test_structured_outputs_config.
    "structured_outputs_config": [Read(("engine/input_processor.py",), "args.structured_outputs_config"),
                                  Rejects({"backend": "outlines"}, "backend 'outlines' is not supported"),
                                  Rejects({"disable_any_whitespace": 1}, "must be true or false"),
                                  Rejects({"reasoning_parser": "nope"}, "invalid reasoning parser: nope")],
    # tests/unit/test_reasoning_parsers.py: the server's split, and grammars that start after the thinking.
    "reasoning_parser": [Read(("engine/structured_output.py", "entrypoints/openai/api_server.py"),
                              "reasoning_parser_name("),
                         Rejects("nope", "invalid reasoning parser: nope")],
    # vLLM's multimodal settings, unused on a text-only model there too; a prompt's multi_modal_data is refused here
    # (tests/unit/test_vllm_examples.py::test_spec_decode_example passes them as its example does).
    "limit_mm_per_prompt": [Behaves(_cfg(limit_mm_per_prompt={"image": 5})),
                            Rejects(5, "limit_mm_per_prompt must be a dict of modality -> count")],
    "disable_chunked_mm_input": [Behaves(_cfg(disable_chunked_mm_input=True))],
    "allowed_local_media_path": [Behaves(_cfg(allowed_local_media_path="/data")),
                                 Rejects(1, "allowed_local_media_path must be a path string")],
    # tests/models/test_qwen2_vl.py::test_mm_processor_kwargs_pixel_range: Qwen2-VL's pixel range against HF.
    "mm_processor_kwargs": [Read(("engine/multimodal.py", "model/models/qwen2_vl.py"), "mm_processor_kwargs"),
                            Rejects(5, "mm_processor_kwargs must be a dict of the processor's settings")],
    # tests/models/test_pooler_config.py: each field against HF, and the errors of the fields that do not apply.
    "pooler_config": [Read(("model/layers/pooler.py",), "pooler_config"),
                      Rejects({"pooling_typ": "MEAN"}, "Unknown pooler_config field(s): pooling_typ")],
    # Its graph-size keys are the two fields below (tests/unit/test_cuda_graph_sizes.py); torch.compile is not used.
    "compilation_config": [Rejects(3, "compilation_config is not supported yet"),
                           Behaves(_cfg(compilation_config=0)),
                           Behaves(lambda mp: cfg_mod.cuda_graph_sizes(build(mp, device="cuda", compilation_config={
                               "cudagraph_capture_sizes": [4, 1, 2]}).args) == ([1, 2, 4], 4) or _fail()),
                           Rejects({"mode": 3}, "compilation_config is not supported yet beyond"),
                           # cudagraph_mode picks the graph kinds (tests/unit/test_cuda_graph_sizes.py), which the
                           # runner captures
                           Read(("worker/model_runner.py",), "self.config.decode_cuda_graphs"),
                           Behaves(lambda mp: build(mp, device="cuda", compilation_config={
                               "cudagraph_mode": "FULL_DECODE_ONLY"}).piecewise_cuda_graphs is False or _fail()),
                           Rejects({"cudagraph_capture_sizes": [1, 2]}, "cudagraph_capture_sizes: no CUDA graphs are "
                                                                        "captured here (this engine runs on the CPU)")],
    # tests/unit/test_sliding_window.py: the cap, the error past it, tokens against HF's windowed attention.
    "disable_sliding_window": [Behaves(lambda mp: (lambda c: c.max_model_len == 64 or _fail())(EngineConfig.build(
        EngineArgs(model="m", disable_sliding_window=True), ResolvedModel("m", transformers.MistralConfig(
            sliding_window=64, max_position_embeddings=4096), None))))],
    "cudagraph_capture_sizes": [Read(("worker/model_runner.py",), "cuda_graph_sizes(self.config.args)"),
                                Behaves(lambda mp: cfg_mod.cuda_graph_sizes(build(
                                    mp, device="cuda", cudagraph_capture_sizes=[8, 1]).args) == ([1, 8], 8) or _fail()),
                                Rejects([0, 2], "cudagraph_capture_sizes must be a non-empty list of positive"),
                                Rejects([1, 2], "no CUDA graphs are captured here (this engine runs on the CPU)")],
    "max_cudagraph_capture_size": [Read(("worker/model_runner.py",), "cuda_graph_sizes(self.config.args)"),
                                   Behaves(lambda mp: cfg_mod.cuda_graph_sizes(build(
                                       mp, device="cuda", max_cudagraph_capture_size=64).args) == (None, 64)
                                       or _fail()),
                                   Rejects(0, "max_cudagraph_capture_size must be a positive integer"),
                                   Rejects(64, "no CUDA graphs are captured here (this engine runs on the CPU)")],
}


def _fail():
    raise AssertionError("option not honoured")


def _unknown_quantization():
    """An unknown method is an error naming the supported ones, before the model is looked for."""
    with pytest.raises(ValueError, match=r"Unknown quantization method: int3\. Must be one of \[.*'awq'"):
        create_engine_config(EngineArgs(model="no/such-model", quantization="int3"))


def _raises(fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


def _ray_backend(monkeypatch) -> None:
    """'ray' runs the ranks as Ray actors when Ray is installed; without Ray the error names the pip command."""
    if importlib.util.find_spec("ray") is None:
        _raises(lambda: build(monkeypatch, distributed_executor_backend="ray"), r"pip install 'pagedllm\[ray\]'")
    elif build(monkeypatch, distributed_executor_backend="ray", tensor_parallel_size=2).executor_backend != "ray":
        _fail()


def _read_in(where: tuple[str, ...], pattern: str) -> bool:
    for place in where:
        path = PACKAGE / place
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        if any(pattern in f.read_text(encoding="utf-8") for f in files if f.exists()):
            return True
    return False


def test_every_engine_field_has_an_entry():
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    assert sorted(fields - ENGINE_FIELDS.keys()) == [], "new EngineArgs field(s): say how each is honoured"
    assert sorted(ENGINE_FIELDS.keys() - fields) == []


@pytest.mark.parametrize("name", sorted(ENGINE_FIELDS))
def test_engine_field_honoured_or_rejected(monkeypatch, name):
    for entry in ENGINE_FIELDS[name]:
        if isinstance(entry, Read):
            assert _read_in(entry.where, entry.pattern), f"{name}: {entry.pattern!r} is not read in {entry.where}"
        elif isinstance(entry, Behaves):
            entry.check(monkeypatch)
        else:
            with pytest.raises(entry.error, match=_escape(entry.match)):
                build(monkeypatch, **{name: entry.value})


def _escape(text: str) -> str:
    import re
    return re.escape(text)


@pytest.mark.parametrize("name", ["swap_space", "max_num_seqs", "tokenizer_mode", "distributed_executor_backend", "task",
                                  "kv_cache_dtype", "max_loras", "speculative_config", "compilation_config"])
def test_rejected_before_the_model_is_resolved(monkeypatch, name):
    """create_engine_config checks the arguments before any download: a made-up model id still gets the option's error."""
    def no_resolve(args):
        raise AssertionError("resolved the model before rejecting the option")
    import pagedllm.model.loader as loader
    monkeypatch.setattr(loader, "resolve_model", no_resolve)
    entry = next(e for e in ENGINE_FIELDS[name] if isinstance(e, Rejects))
    with pytest.raises(entry.error, match=_escape(entry.match)):
        create_engine_config(EngineArgs(model="no/such-model", **{name: entry.value}))


def test_numbers_given_as_strings(monkeypatch):
    """LLM(max_num_seqs="8"): the number, as vLLM's validated configs take it; human-readable forms where the command
    line takes them; anything else a ValueError naming the field (it was a TypeError from a comparison)."""
    cfg = build(monkeypatch, max_num_seqs="8", max_num_batched_tokens="1k", gpu_memory_utilization="0.5",
                max_model_len="2K", kv_cache_memory_bytes="4M")
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.max_model_len, cfg.kv_cache_memory_bytes) == \
        (8, 1000, 2048, 4 << 20)
    with pytest.raises(ValueError, match=r"^swap_space: a number expected, got 'x'\.$"):
        EngineArgs(model="m", swap_space="x")
    with pytest.raises(ValueError, match=r"^max_num_seqs: an integer expected, got '8\.5'\.$"):
        EngineArgs(model="m", max_num_seqs="8.5")
    # Switches: "false" is off (a non-empty string would be truthy), as pydantic reads it.
    args = EngineArgs(model="m", enforce_eager="false", enable_prefix_caching="False", async_scheduling="true")
    assert (args.enforce_eager, args.enable_prefix_caching, args.async_scheduling) == (False, False, True)
    with pytest.raises(ValueError, match=r"^enforce_eager: true or false expected, got 'maybe'\.$"):
        EngineArgs(model="m", enforce_eager="maybe")


def test_none_means_the_default_as_vllms_none_defaults(monkeypatch):
    """vLLM's block_size, enable_prefix_caching, enable_chunked_prefill and task default to None (its choice), so
    scripts pass None (LLM(block_size=args.block_size) with argparse's None). Here block_size=None was a TypeError
    traceback, task=None a ValueError, and enable_prefix_caching / enable_chunked_prefill=None turned them off."""
    config = build(monkeypatch, block_size=None, enable_prefix_caching=None, enable_chunked_prefill=None, task=None,
                   lora_dtype=None, enforce_eager=None)
    assert (config.block_size, config.cache_config.enable_prefix_caching, config.enable_chunked_prefill,
            config.runner_type, config.args.lora_dtype, config.args.enforce_eager) == \
        (16, True, True, "generate", "auto", False)
    # A number given None: a ValueError naming the field (vLLM's validated configs refuse it too), not a TypeError.
    with pytest.raises(ValueError, match=r"^gpu_memory_utilization: a number expected, got None \(leave it out for "
                                         r"its default, 0\.9\)\.$"):
        EngineArgs(model="m", gpu_memory_utilization=None)
    with pytest.raises(ValueError, match="generation_config must be 'auto'"):
        build(monkeypatch, generation_config=None)


def test_unknown_keyword_names_vllm_arguments(capsys):
    with pytest.raises(TypeError, match="unexpected keyword argument.*no_such_option") as info:
        EngineArgs.from_kwargs("m", no_such_option=1)
    assert "vLLM" not in str(info.value)
    with pytest.raises(TypeError, match="enable_eplb is a vLLM engine argument that pagedllm "
                                        "does not support yet"):
        EngineArgs.from_kwargs("m", enable_eplb=True)
    # vLLM 0.2x's LLM(quantization_config=...) (online quantization) and --kernel-config.KEY (a dotted key of a flag
    # pagedllm lacks) are named as vLLM's, with what to do instead; they were bare 'unexpected' / 'unrecognized'.
    with pytest.raises(TypeError, match="quantization_config is a vLLM engine argument that pagedllm does not "
                                        "support yet; quantization_config: a quantized checkpoint's own"):
        EngineArgs.from_kwargs("m", quantization_config={"method": "fp8"})
    from pagedllm.entrypoints.cli import make_parser
    with pytest.raises(SystemExit):
        make_parser().parse_args(["serve", "m", "--kernel-config.enable_flashinfer_autotune=False"])
    assert "is a vLLM engine flag that pagedllm does not support yet; --kernel-config.enable_flashinfer_autotune: " \
           "it tunes vLLM's FlashInfer kernels" in capsys.readouterr().err


# ---- SamplingParams ----------------------------------------------------------------------------------------------
def _sp(**kwargs):
    return lambda: SamplingParams(**kwargs)


SAMPLING_FIELDS: dict[str, list] = {
    "n": [Read(("engine/",), "params.n")],
    "best_of": [Behaves(lambda: SamplingParams(n=2, best_of=2).best_of == 2 or _fail()),
                Behaves(lambda: SamplingParams(n=3).best_of == 3 or _fail()),
                Rejects(4, "best_of > n is not supported (vLLM V1 removed it)")],
    "presence_penalty": [Read(("model/layers/sampler.py",), "sp.presence_penalty")],
    "frequency_penalty": [Read(("model/layers/sampler.py",), "sp.frequency_penalty")],
    "repetition_penalty": [Read(("model/layers/sampler.py",), "sp.repetition_penalty")],
    "temperature": [Read(("model/layers/sampler.py",), "sp.temperature")],
    "top_p": [Read(("model/layers/sampler.py",), "sp.top_p")],
    "top_k": [Read(("model/layers/sampler.py",), "sp.top_k")],
    "min_p": [Read(("model/layers/sampler.py",), "sp.min_p")],
    "seed": [Read(("engine/",), "params.seed")],
    "stop": [Read(("engine/detokenizer.py",), ".stop")],
    "stop_token_ids": [Read(("model/layers/sampler.py",), "sp.stop_token_ids")],
    "ignore_eos": [Read(("model/layers/sampler.py",), "sp.ignore_eos")],
    "max_tokens": [Read(("engine/request.py",), "sampling_params.max_tokens")],
    "min_tokens": [Read(("model/layers/sampler.py",), "sp.min_tokens")],
    "logprobs": [Read(("model/layers/sampler.py",), "sp.logprobs")],
    "prompt_logprobs": [Read(("worker/model_runner.py",), "sampling_params.prompt_logprobs")],
    "detokenize": [Read(("engine/",), ".detokenize")],
    "skip_special_tokens": [Read(("engine/detokenizer.py",), "sp.skip_special_tokens")],
    "spaces_between_special_tokens": [Read(("engine/detokenizer.py",), "sp.spaces_between_special_tokens")],
    "include_stop_str_in_output": [Read(("engine/",), ".include_stop_str_in_output")],
    "logit_bias": [Read(("model/layers/sampler.py",), "sp.logit_bias")],
    "allowed_token_ids": [Read(("model/layers/sampler.py",), "sp.allowed_token_ids")],
    "bad_words": [Read(("model/layers/sampler.py",), "sp._bad_words_token_ids"),
                  Rejects("darn", "bad_words must be a list of non-empty strings"),
                  Rejects([""], "bad_words must be a list of non-empty strings")],
    "truncate_prompt_tokens": [Read(("engine/",), ".truncate_prompt_tokens")],
    "output_kind": [Read(("engine/",), ".output_kind")],
    # tests/unit/test_llm_api.py::test_flat_logprobs; test_detokenizer.py::test_per_request_stream_interval.
    "flat_logprobs": [Read(("engine/output_processor.py",), "params.flat_logprobs"),
                      Rejects("yes", "flat_logprobs must be True or False")],
    "stream_interval": [Read(("engine/output_processor.py",), "params.stream_interval"),
                        Rejects(0, "stream_interval must be at least 1, got 0")],
    # tests/unit/test_llm_api.py::test_repetition_detection_ends_a_repeating_output.
    "repetition_detection": [Read(("engine/scheduler.py",), "sp.repetition_detection"),
                             Rejects({"max_pattern_size": 2}, "min_count must be >= 2")],
    # (read by custom logits processors, refused without one: tests/unit/test_logits_processors.py)
    "extra_args": [Behaves(_sp(extra_args={})), Rejects("target_token=3", "extra_args must be a dict")],
    "logits_processors": [Rejects([lambda ids, logits: logits], "Per-request logits_processors callables are not supported")],
    "structured_outputs": [Read(("engine/core.py",), "sampling_params.structured_outputs"),
                           Rejects({"json": {"type": "object"}}, "structured_outputs must be a StructuredOutputsParams")],
    "guided_decoding": [Behaves(lambda: SamplingParams(guided_decoding=GuidedDecodingParams(regex="[0-9]+"))
                                .structured_outputs.regex == "[0-9]+" or _fail())],
    # tests/unit/test_reasoning_parsers.py::test_thinking_token_budget_forces_the_end_of_thinking.
    "thinking_token_budget": [Read(("engine/core.py",), "sampling_params.thinking_token_budget"),
                              Rejects(-2, "must be a non-negative integer or -1")],
    # tests/unit/test_llm_api.py::test_num_cached_tokens_reports_prefix_cache_hits.
    "skip_reading_prefix_cache": [Read(("engine/kv_cache.py",), "sp.skip_reading_prefix_cache"),
                                  Rejects("yes", "skip_reading_prefix_cache must be True, False or None")],
}


def test_every_sampling_field_has_an_entry():
    fields = {f.name for f in dataclasses.fields(SamplingParams) if not f.name.startswith("_")}
    assert sorted(fields - SAMPLING_FIELDS.keys()) == [], "new SamplingParams field(s): say how each is honoured"
    assert sorted(SAMPLING_FIELDS.keys() - fields) == []


@pytest.mark.parametrize("name", sorted(SAMPLING_FIELDS))
def test_sampling_field_honoured_or_rejected(name):
    for entry in SAMPLING_FIELDS[name]:
        if isinstance(entry, Read):
            assert _read_in(entry.where, entry.pattern), f"{name}: {entry.pattern!r} is not read in {entry.where}"
        elif isinstance(entry, Behaves):
            entry.check()
        else:
            with pytest.raises(entry.error, match=_escape(entry.match)):
                SamplingParams(**{name: entry.value})


# ---- bad_words -----------------------------------------------------------------------------------------------------
def test_bad_words_encoded_with_and_without_a_leading_space(tokenizer):
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)   # noqa: E731
    assert len(enc("hello")) == len(enc(" hello")) == 1 and enc("hello") != enc(" hello")
    sp = SamplingParams(bad_words=["hello", " hello", "New York"])
    sp.update_from_tokenizer(tokenizer)
    # "hello" at the start of a text and after a space, once each (" hello" is the same word); "New York" likewise.
    assert sp._bad_words_token_ids[:2] == [enc("hello"), enc(" hello")]
    assert enc(" New York") in sp._bad_words_token_ids and len(enc(" New York")) > 1
    assert len(sp._bad_words_token_ids) == len({tuple(ids) for ids in sp._bad_words_token_ids})
    assert sp.clone()._bad_words_token_ids == sp._bad_words_token_ids


def _row(token_ids, sp, num_prompt=1):
    return SimpleNamespace(token_ids=list(token_ids), sampling_params=sp, num_prompt_tokens=num_prompt,
                           num_computed_tokens=len(token_ids), eos_token_ids=frozenset(), prompt_ids_known=True)


def test_sampler_masks_bad_words():
    sp = SamplingParams(temperature=0.0, bad_words=["x"])
    sp._bad_words_token_ids = [[7], [3, 4, 5]]       # a one-token and a three-token bad word
    vocab = 10

    def banned(history):
        logits = Sampler._apply_masks(torch.zeros(1, vocab), [_row(history, sp)])
        return sorted(torch.nonzero(torch.isinf(logits[0])).flatten().tolist())
    assert banned([1, 2]) == [7]                       # one-token bad word: always
    assert banned([1, 3]) == [7]                       # prefix [3, 4] not complete yet
    assert banned([1, 3, 4]) == [5, 7]                 # after 3, 4 the word's last token is banned
    assert banned([3, 4]) == [5, 7]                    # the prefix may lie in the prompt
    assert banned([3, 4, 9]) == [7]


def test_bad_words_need_a_tokenizer():
    SamplingParams(temperature=0.5).verify_without_tokenizer()
    with pytest.raises(ValueError, match="bad_words needs the tokenizer"):
        SamplingParams(bad_words=["x"]).verify_without_tokenizer()


def test_multi_token_bad_words_need_the_hosts_tokens():
    sp = SamplingParams(bad_words=["x"])
    sp._bad_words_token_ids = [[7]]
    assert not sp.needs_host_tokens
    sp._bad_words_token_ids = [[7], [3, 4]]
    assert sp.needs_host_tokens


def test_code_revision_reaches_transformers(tiny_llama_dir, monkeypatch):
    """code_revision (remote code kept in another Hub repository) goes to AutoConfig and AutoTokenizer when remote
    code may run, as vLLM passes it; without trust_remote_code it is not passed (no remote code runs)."""
    import transformers
    seen = []
    for auto in (transformers.AutoConfig, transformers.AutoTokenizer):
        original = auto.from_pretrained.__func__

        def spy(cls, *args, _original=original, **kwargs):
            seen.append((cls.__name__, kwargs.get("code_revision")))
            return _original(cls, *args, **kwargs)
        monkeypatch.setattr(auto, "from_pretrained", classmethod(spy))
    from pagedllm import LLM
    LLM(model=tiny_llama_dir, trust_remote_code=True, code_revision="v2", kv_cache_memory_gb=0.01)
    assert ("AutoConfig", "v2") in seen and ("AutoTokenizer", "v2") in seen
    seen.clear()
    LLM(model=tiny_llama_dir, code_revision="v2", kv_cache_memory_gb=0.01)
    assert seen and all(rev is None for _, rev in seen)


def test_tokenizer_mode_hf(tiny_llama_dir):
    """vLLM's tokenizer_mode="hf" (its HF tokenizer, the fast one when there is one) is the fast tokenizer, as "auto"
    is here; it was a ValueError ("must be 'auto' or 'slow'")."""
    from pagedllm import LLM, SamplingParams
    llm = LLM(model=tiny_llama_dir, tokenizer_mode="hf", kv_cache_memory_gb=0.01, max_model_len=64)
    assert llm.get_tokenizer().is_fast
    out = llm.generate("Hello there", SamplingParams(temperature=0.0, max_tokens=3), use_tqdm=False)[0]
    assert out.prompt_token_ids == llm.get_tokenizer()("Hello there").input_ids and len(out.outputs[0].token_ids) == 3


def test_vllms_other_tokenizer_modes_are_named():
    """vLLM's tokenizer modes that pagedllm does not load ('custom', its TokenizerRegistry; 'deepseek_v32', 'grok2')
    are errors that say what the mode is in vLLM and what pagedllm loads; they were 'must be ... got 'custom''."""
    from pagedllm.config import verify_engine_args
    for mode, what in (("custom", "TokenizerRegistry"), ("deepseek_v32", "DeepSeek-V3.2"), ("grok2", "Grok-2")):
        with pytest.raises(ValueError, match=f"tokenizer_mode='{mode}' .*{what}.* is not supported: pagedllm loads "
                                             f"the folder's HF tokenizer"):
            verify_engine_args(EngineArgs.from_kwargs("m", tokenizer_mode=mode))
    with pytest.raises(ValueError, match="must be 'auto', 'hf' or 'slow', got 'bogus'"):
        verify_engine_args(EngineArgs.from_kwargs("m", tokenizer_mode="bogus"))


def test_max_long_partial_prefills_of_vllms_default():
    """vLLM's SchedulerConfig flags at their defaults, as a tutorial's command line spells them, are accepted offline
    and by serve (--max-long-partial-prefills was 'unrecognized arguments', LLM(max_long_partial_prefills=1) a
    TypeError)."""
    from pagedllm.entrypoints.cli import make_parser
    args = make_parser().parse_args(["serve", "m", "--max-num-partial-prefills", "1",
                                     "--max-long-partial-prefills", "1"])
    assert (args.max_num_partial_prefills, args.max_long_partial_prefills) == (1, 1)
    assert EngineArgs.from_kwargs("m", max_long_partial_prefills=1).max_long_partial_prefills == 1


def test_calculate_kv_scales_of_vllms_quantized_kv_cache_page():
    """vLLM's 'no calibration' recipe, kv_cache_dtype="fp8" with calculate_kv_scales=False, runs (it was a TypeError
    offline and 'unrecognized arguments' served); True with an fp8 cache is a ValueError naming it and the scales
    used instead."""
    from pagedllm.entrypoints.cli import make_parser
    args = make_parser().parse_args(["serve", "m", "--kv-cache-dtype", "fp8", "--no-calculate-kv-scales"])
    assert (args.kv_cache_dtype, args.calculate_kv_scales) == ("fp8", False)
    assert make_parser().parse_args(["serve", "m", "--calculate-kv-scales"]).calculate_kv_scales is True
    assert EngineArgs.from_kwargs("m", kv_cache_dtype="fp8", calculate_kv_scales=False).calculate_kv_scales is False
    with pytest.raises(ValueError) as info:
        create_engine_config(EngineArgs(model="no/such-model", kv_cache_dtype="fp8", calculate_kv_scales=True))
    assert str(info.value) == (
        "calculate_kv_scales=True is not supported yet with kv_cache_dtype='fp8' (scales computed from a warm-up "
        "batch): the FP8 KV cache is stored with k_scale = v_scale = 1.0, vLLM's scales without calibration; "
        "leave calculate_kv_scales unset (False).")
