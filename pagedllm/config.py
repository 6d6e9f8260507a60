"""Engine arguments (vLLM's names) and the validated configuration built from them.

``EngineArgs`` is what a user passes (``LLM(**kwargs)``, ``pagedllm serve --flags``); ``verify_engine_args`` checks the
arguments alone, ``EngineConfig.build`` checks them against the resolved model and the device, producing the
``EngineConfig`` that the rest of the engine reads (``pagedllm.engine.core.create_engine_config`` runs both around
the model's resolution). All user-facing validation of engine arguments lives here. This module is the bottom
layer: it imports nothing else of pagedllm but ``envs``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import enum
import importlib.util
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch

from pagedllm import envs
from pagedllm.pooling_params import POOLING_TASKS, PoolingParams, check_returned_token_ids
from pagedllm.reasoning_parsers import REASONING_PARSERS, get_reasoning_parser
from pagedllm.sampling_params import LOGPROBS_MODES
from pagedllm.usage.usage_lib import UsageContext

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16,
}
# "bitsandbytes" (vLLM's pairing with quantization="bitsandbytes"): the "auto" files, quantized by bitsandbytes.
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy", "pt", "bitsandbytes")
# vLLM's attention backend names (its AttentionBackendEnum; any case) for the two kinds pagedllm has: its Triton
# kernels (as vLLM's TRITON_ATTN, TRITON_MLA) and the PyTorch attention (vLLM's CPU backends). vLLM's other backends
# are kernels pagedllm does not have: named as such.
_VLLM_ATTENTION_BACKENDS = {"TRITON_ATTN": "triton", "TRITON_MLA": "triton", "TORCH_SDPA": "torch", "CPU_ATTN": "torch"}
_VLLM_ATTENTION_BACKENDS_NOT_SUPPORTED = frozenset({
    "FLASH_ATTN", "FLASH_ATTN_MLA", "FLASHINFER", "FLASHINFER_MLA", "FLASHMLA", "FLASHMLA_SPARSE", "CUTLASS_MLA",
    "FLEX_ATTENTION", "TREE_ATTN", "XFORMERS", "ROCM_ATTN", "ROCM_AITER_FA", "ROCM_AITER_MLA",
    "ROCM_AITER_UNIFIED_ATTN", "PALLAS", "IPEX", "NO_ATTENTION"})
# vLLM's optimization levels (-O0 .. -O3) and performance modes (EngineArgs.optimization_level / performance_mode).
OPTIMIZATION_LEVELS = (0, 1, 2, 3)
PERFORMANCE_MODES = ("balanced", "interactivity", "throughput")
SAFETENSORS_LOAD_STRATEGIES = ("lazy", "eager")
DEFAULT_CPU_KV_CACHE_GB = 4.0
# The server's prompt-chunk cap on the CPU: a short request waits for the step in flight and then needs two more, so
# a step must stay well under a second for it to finish within 2 s (docs/reliability.md has the measurement).
SERVER_CPU_LONG_PREFILL_TOKEN_THRESHOLD = 64
# vLLM's names for what pagedllm does not do yet, so a tutorial gets "not supported yet", not "unexpected keyword".
_UNSUPPORTED_TASKS = ("transcription", "draft")
# vLLM's spellings of "this model embeds" and "this model classifies / scores pairs" (task is the older argument,
# runner + convert the newer ones).
_EMBED_TASKS = ("embed", "embedding")
_CLASSIFY_TASKS = ("classify", "score")
_REWARD_TASKS = ("reward",)      # vLLM's task="reward": convert="reward"
# convert (vLLM's): run a checkpoint as another kind of pooling model. "embed" and "classify" name what a checkpoint
# already is here (a decoder or encoder as an embedder; a *ForSequenceClassification as a classifier); converting a
# generative checkpoint into a classifier with a new head, or into a reward model, is not supported yet.
CONVERT_CHOICES = ("auto", "none", "embed", "classify", "reward")
_UNSUPPORTED_CONVERT = ("mm_encoder_only",)
# kv_cache_dtype (vLLM's names): "auto" is the model's dtype; "fp8" is e4m3 (vLLM's default fp8 format). Values
# are stored divided by a per-tensor scale (k_scale / v_scale, 1.0 as vLLM when the checkpoint has none).
# "bfloat16" (vLLM's too) halves a float32 model's cache (the CPU default dtype) and is "auto" for a bf16 model.
KV_CACHE_DTYPES = ("auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2")
_KV_CACHE_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
                          "fp8_e5m2": torch.float8_e5m2}
_UNSUPPORTED_KV_CACHE_DTYPES = ("fp8_inc", "fp8_ds_mla", "float16")


def kv_cache_torch_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The KV cache tensors' dtype."""
    return _KV_CACHE_TORCH_DTYPES.get(kv_cache_dtype, model_dtype)


# What to use instead of a vLLM argument pagedllm lacks, where there is something.
_MULTI_NODE_INSTEAD = ("tensor / pipeline parallel ranks on several machines run on a Ray cluster here: "
                       "distributed_executor_backend='ray' (--distributed-executor-backend ray) from one node of it, "
                       "PAGEDLLM_RAY_PLACEMENT_STRATEGY=PACK to spread the ranks over the nodes")
_DATA_PARALLEL_INSTEAD = ("data parallel is not supported: run one engine (one server) per replica and balance the "
                          "requests over them, as vLLM's external load balancing does")
_VLLM_ARG_INSTEAD = {
    "api_server_count": "one API server process serves every request (its engine runs in a process of its own)",
    "rope_scaling": "hf_overrides / --hf-overrides '{\"rope_scaling\": {...}}' does it (vLLM's replacement)",
    "rope_theta": "hf_overrides / --hf-overrides '{\"rope_theta\": ...}' does it (vLLM's replacement)",
    "override_pooler_config": "vLLM removed it in 0.12: pooler_config / --pooler-config takes the same fields",
    "quantization_config": "a quantized checkpoint's own quantization_config is read, and quantization='fp8' (or "
                           "'bitsandbytes') quantizes a dense one at load",
    "kernel_config": "it tunes vLLM's FlashInfer kernels, which pagedllm does not have",
    # vLLM 0.7's speculative flags, folded into speculative_config (which pagedllm runs) in 0.8.
    **dict.fromkeys(("speculative_model", "num_speculative_tokens", "ngram_prompt_lookup_max",
                     "ngram_prompt_lookup_min", "speculative_draft_tensor_parallel_size", "speculative_max_model_len",
                     "speculative_model_quantization"),
                    "vLLM 0.8 replaced these with speculative_config / --speculative-config: '{\"method\": \"ngram\", "
                    "\"num_speculative_tokens\": 5, \"prompt_lookup_max\": 4}' or '{\"model\": DRAFT, "
                    "\"num_speculative_tokens\": 4}' (ngram_prompt_lookup_* are prompt_lookup_*, speculative_* the "
                    "keys without the prefix)"),
    "speculative_disable_by_batch_size": "vLLM removed it with its V0 engine; speculative_config takes no batch-size "
                                         "switch",
    # vLLM's multi-node multiprocessing launch (one `vllm serve` per node): pagedllm spans nodes through Ray.
    **dict.fromkeys(("nnodes", "node_rank", "master_addr", "master_port"), _MULTI_NODE_INSTEAD),
    **dict.fromkeys(("data_parallel_size_local", "data_parallel_rank", "data_parallel_start_rank",
                     "data_parallel_address", "data_parallel_rpc_port", "data_parallel_backend",
                     "data_parallel_hybrid_lb", "data_parallel_external_lb"), _DATA_PARALLEL_INSTEAD),
}


# vLLM's `vllm serve` frontend flags (FrontendArgs) that `pagedllm serve` lacks: named as such when given.
_VLLM_SERVER_FLAGS_NOT_SUPPORTED = frozenset({
    "api_server_count", "headless", "tool_server", "tool_parser_plugin",
    "log_error_stack", "fingerprint_mode", "fingerprint_value",
    "h11_max_incomplete_event_size", "h11_max_header_count", "enable_per_request_metrics", "tokens_only",
    "enable_ssl_refresh", "enable_offline_docs", "enable_flash_late_interaction", "data_parallel_supervisor_port",
    "dp_supervisor_probe_interval_s", "dp_supervisor_probe_timeout_s", "dp_supervisor_probe_failure_threshold",
    "cohere_is_reasoning_model", "cohere_format",
})


# `vllm bench` flags of datasets and modes `pagedllm bench` does not have (hf, random-mm, spec_bench, blazedit,
# reranker and embedding batches, timed traces): named as such when given.
_VLLM_BENCH_FLAGS_NOT_SUPPORTED = frozenset({
    "no_stream", "hf_subset", "hf_split", "hf_name", "hf_output_len", "random_mm_base_items_per_request",
    "random_mm_num_mm_items_range_ratio", "random_mm_limit_mm_per_prompt", "random_mm_bucket_config",
    "spec_bench_output_len", "spec_bench_category", "blazedit_min_distance", "blazedit_max_distance",
    "random_batch_size", "no_reranker", "self_timed", "no_self_timed",
})


def _vllm_args_note(spelled: Sequence[str], names: Sequence[str], kind: str) -> str:
    """" (X is a vLLM engine argument that pagedllm does not support yet; ...)" for the unknown arguments that are
    vLLM's (``names`` in snake_case, ``spelled`` as the user wrote them), or "". ``kind`` "flag" also names vLLM's
    server flags."""
    notes = []
    groups = [(_VLLM_ENGINE_ARGS_NOT_SUPPORTED, f"vLLM engine {kind}")]
    if kind == "flag":
        groups += [(_VLLM_SERVER_FLAGS_NOT_SUPPORTED, "vLLM server flag"),
                   (_VLLM_BENCH_FLAGS_NOT_SUPPORTED, "vLLM bench flag")]
    for known, label in groups:
        from_vllm = [(s, n) for s, n in zip(spelled, names) if n in known]
        if not from_vllm:
            continue
        what = f"is a {label}" if len(from_vllm) == 1 else f"are {label}s"
        instead: dict[str, list[str]] = {}      # one hint for the arguments that share it
        for s, n in from_vllm:
            if n in _VLLM_ARG_INSTEAD:
                instead.setdefault(_VLLM_ARG_INSTEAD[n], []).append(s)
        notes.append(f"{', '.join(s for s, _ in from_vllm)} {what} that pagedllm does not support yet"
                     + "".join(f"; {', '.join(args)}: {hint}" for hint, args in instead.items()))
    return f" ({'; '.join(notes)})" if notes else ""


# vLLM's PoolerConfig.pooling_type values: one vector per request (seq_pooling_type), or one row per token
# (tok_pooling_type: ALL every token, STEP the rows of step_tag_id tokens and the returned_token_ids columns).
SEQ_POOLING_TYPES = ("CLS", "LAST", "MEAN")
TOK_POOLING_TYPES = ("ALL", "STEP")
# Architectures whose per-token pooling is STEP by default (vLLM's process reward models).
STEP_POOLING_ARCHITECTURES = ("Qwen2ForProcessRewardModel",)


@dataclass
class PoolerConfig:
    """vLLM's ``PoolerConfig`` (``LLM(pooler_config=...)``, ``--pooler-config JSON``): how a pooling model pools,
    over what its checkpoint says (sentence-transformers' ``1_Pooling/config.json`` and ``Normalize`` module, else
    the architecture's default). Applied by pagedllm/model/layers/pooler.py; what it cannot do is an error here."""
    # The model's default pooling task, one it runs (vLLM's): "token_embed" on an embedding model makes /pooling
    # return token vectors and scoring ColBERT's MaxSim (late interaction); None: the model's own.
    task: str | None = None
    pooling_type: str | None = None            # CLS / LAST / MEAN, or ALL / STEP: fills one of the two below
    seq_pooling_type: str | None = None        # the row(s) a request's one vector comes from (embed, classify)
    tok_pooling_type: str | None = None        # per-token tasks (token_embed, token_classify): ALL or STEP
    # The default of requests that do not say: embeddings normalized, classifier / reward scores activated.
    use_activation: bool | None = None
    dimensions: int | None = None              # embed requests' default dimensions (Matryoshka models only)
    # Embedding models behind the server (/v1/embeddings, as vLLM's): an input longer than max_model_len is embedded
    # in max_model_len chunks, the vectors averaged weighted by their token counts; max_embed_len caps such an
    # input's length (None: no cap).
    enable_chunked_processing: bool = False
    max_embed_len: int | None = None
    # Classifiers: activation((logit - logit_mean) / logit_sigma) (Platt scaling of classify / score).
    logit_mean: float | None = None
    logit_sigma: float | None = None
    # STEP pooling (process reward models): only the rows whose prompt token is step_tag_id, and of each row only
    # the returned_token_ids columns.
    step_tag_id: int | None = None
    returned_token_ids: list[int] | None = None
    # vLLM's older names: logit_bias (logit_mean), logit_scale (1 / logit_sigma); normalize (embeddings), softmax
    # and activation (classifiers): use_activation.
    logit_bias: float | None = None
    logit_scale: float | None = None
    normalize: bool | None = None
    softmax: bool | None = None
    activation: bool | None = None

    def __post_init__(self) -> None:
        for name in ("use_activation", "normalize", "softmax", "activation", "enable_chunked_processing"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"pooler_config {name} must be true or false, got {value!r:.100}.")
        for name in ("dimensions", "max_embed_len", "step_tag_id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"pooler_config {name} must be an integer, got {value!r:.100}.")
        for name in ("logit_mean", "logit_sigma", "logit_bias", "logit_scale"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise ValueError(f"pooler_config {name} must be a number, got {value!r:.100}.")
        check_returned_token_ids(self.returned_token_ids, where="pooler_config ")
        if self.dimensions is not None and self.dimensions < 1:
            raise ValueError(f"pooler_config dimensions must be greater than 0, got {self.dimensions}.")
        # The older names, as vLLM resolves them (both spellings at once is an error).
        for old, new in (("logit_bias", "logit_mean"), ("logit_scale", "logit_sigma")):
            value = getattr(self, old)
            if value is None:
                continue
            if getattr(self, new) is not None:
                raise ValueError(f"Cannot set both `{old}` and `{new}`. `{old}` is deprecated, use `{new}` instead.")
            if old == "logit_scale" and value == 0:
                raise ValueError("logit_scale cannot be 0 (division by zero)")
            setattr(self, new, 1.0 / value if old == "logit_scale" else value)
            setattr(self, old, None)
        if self.logit_sigma is not None and self.logit_sigma == 0:
            raise ValueError("logit_sigma cannot be 0 (division by zero)")
        for old in ("normalize", "softmax", "activation"):
            value = getattr(self, old)
            if value is None:
                continue
            if self.use_activation is not None and self.use_activation != value:
                raise ValueError(f"pooler_config {old}={value} contradicts use_activation={self.use_activation}; "
                                 f"{old} is vLLM's older name of use_activation: set only use_activation.")
            self.use_activation = value
            setattr(self, old, None)
        if self.pooling_type is not None:
            for name in ("seq_pooling_type", "tok_pooling_type"):     # (equal: a resolved config's own copy)
                if getattr(self, name) not in (None, self.pooling_type):
                    raise ValueError(f"Cannot set both `pooling_type` and `{name}`")
            if self.pooling_type not in SEQ_POOLING_TYPES + TOK_POOLING_TYPES:
                raise ValueError(f"pooler_config pooling_type must be one of "
                                 f"{', '.join(SEQ_POOLING_TYPES + TOK_POOLING_TYPES)}, got {self.pooling_type!r:.100}.")
            field_name = "seq_pooling_type" if self.pooling_type in SEQ_POOLING_TYPES else "tok_pooling_type"
            setattr(self, field_name, self.pooling_type)
        for name, allowed in (("seq_pooling_type", SEQ_POOLING_TYPES), ("tok_pooling_type", TOK_POOLING_TYPES)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"pooler_config {name} must be one of {', '.join(allowed)}, got {value!r:.100}.")
        if self.task is not None and (not isinstance(self.task, str) or self.task not in POOLING_TASKS
                                      or self.task == "encode"):
            raise ValueError(f"pooler_config task must be one of "
                             f"{', '.join(t for t in POOLING_TASKS if t != 'encode')}, got {self.task!r:.100}.")
        if self.max_embed_len is not None and self.max_embed_len < 1:
            raise ValueError(f"pooler_config max_embed_len must be greater than 0, got {self.max_embed_len}.")
        if self.max_embed_len is not None and not self.enable_chunked_processing:
            raise ValueError("pooler_config max_embed_len applies with enable_chunked_processing=true (inputs "
                             "longer than max_model_len embedded in chunks); without it prompts are limited to "
                             "max_model_len.")

    @classmethod
    def coerce(cls, value: "PoolerConfig | dict | str") -> "PoolerConfig":
        """``pooler_config`` as given: a PoolerConfig, a dict of its fields or their JSON (``--pooler-config``)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"pooler_config must be a JSON object of PoolerConfig fields: {e}") from None
        if not isinstance(value, dict):
            raise ValueError(f"pooler_config must be a PoolerConfig or a dict of its fields, got "
                             f"{type(value).__name__}.")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in value if k not in names)
        if unknown:
            raise ValueError(f"Unknown pooler_config field(s): {', '.join(unknown)}; PoolerConfig's fields are "
                             f"{', '.join(names)}.")
        return cls(**value)


# A generation_config.json's sampling defaults (HF's names) -> SamplingParams' names (vLLM reads the same six);
# do_sample=false also means greedy here.
GENERATION_CONFIG_SAMPLING_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                                   "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens"}
_VLLM_ENGINE_ARGS_NOT_SUPPORTED = frozenset({
    "allowed_media_domains",
    "cuda_graph_sizes", "master_addr", "master_port", "nnodes",
    "node_rank", "decode_context_parallel_size", "dcp_kv_cache_interleave_size", "data_parallel_rank",
    "data_parallel_start_rank", "data_parallel_size_local", "data_parallel_address", "data_parallel_rpc_port",
    "data_parallel_hybrid_lb", "data_parallel_external_lb", "data_parallel_backend", "enable_dbo",
    "dbo_decode_token_threshold", "dbo_prefill_token_threshold", "disable_nccl_for_dp_synchronization",
    "eplb_config", "enable_eplb", "num_redundant_experts", "eplb_window_size", "eplb_step_interval",
    "eplb_log_balancedness",
    "aggregate_engine_logging", "rope_scaling",
    "rope_theta", "max_seq_len_to_capture", "interleave_mm_strings",
    "media_io_kwargs", "disable_mm_preprocessor_cache", "mm_processor_cache_gb",
    "mm_processor_cache_type", "mm_shm_cache_max_object_size_mb", "mm_encoder_tp_mode", "skip_mm_profiling",
    "default_mm_loras", "lora_extra_vocab_size", "ray_workers_use_nsight", "num_lookahead_slots",
    "model_loader_extra_config",
    "disable_hybrid_kv_cache_manager",
    "reasoning_parser_plugin", "guided_decoding_backend", "logits_processor_pattern", "show_hidden_metrics_for_version",
    "otlp_traces_endpoint", "collect_detailed_traces", "scheduler_cls", "override_pooler_config",
    "worker_cls", "kv_events_config",
    "override_attention_dtype",
    "mamba_cache_dtype", "mamba_ssm_cache_dtype", "additional_config",
    "kv_sharing_fast_prefill", "num_scheduler_steps",
    "multi_step_stream_outputs", "use_v2_block_manager", "max_context_len_to_capture", "disable_async_output_proc",
    "tokenizer_pool_size", "tokenizer_pool_type", "tokenizer_pool_extra_config", "quantization_param_path",
    "enable_multimodal_encoder_data_parallel", "speculative_model", "num_speculative_tokens",
    "ngram_prompt_lookup_max", "ngram_prompt_lookup_min", "speculative_draft_tensor_parallel_size",
    "speculative_max_model_len", "speculative_disable_by_batch_size", "speculative_model_quantization",
    "all2all_backend", "enable_mm_embeds",
    "mm_encoder_attn_backend", "io_processor_plugin", "mamba_block_size", "expert_placement_strategy",
    "quantization_config", "kernel_config",
})


@dataclass
class EngineArgs:
    model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    tokenizer: str | None = None
    tokenizer_mode: str = "auto"
    # vLLM's: the folder or Hub id whose config.json describes the model (default: the model's own)
    hf_config_path: str | None = None
    # vLLM's: how config.json is read ("auto" / "hf": transformers' format; Mistral's params.json is not read)
    config_format: str = "auto"
    # vLLM's: "auto" / "vllm" are this engine's own model code; its Transformers-backend fallback is not offered
    model_impl: str = "auto"
    skip_tokenizer_init: bool = False
    # vLLM's: prompts may come as input embeddings ({"prompt_embeds": tensor}, the server's base64 prompt_embeds):
    # generation only; those requests run their prompt eagerly (no CUDA graph) and penalties see no prompt tokens.
    enable_prompt_embeds: bool = False
    # vLLM's: custom logits processors, classes (subclasses of pagedllm.v1.sample.logits_processor.LogitsProcessor) or
    # their names ("package.module.Class" / "package.module:Class"); requests reach them through
    # SamplingParams.extra_args (the server's vllm_xargs). Loaded and checked by engine/core.create_engine_config.
    logits_processors: list[Any] | None = None
    trust_remote_code: bool = False
    revision: str | None = None
    # vLLM's: the revision of remote code (trust_remote_code) kept in another Hub repository than the model's (a
    # config.json auto_map "repo--module.Class"), passed to transformers' AutoConfig / AutoTokenizer.
    code_revision: str | None = None
    tokenizer_revision: str | None = None
    # vLLM's: the Hugging Face token for downloads (model, tokenizer, LoRA adapters from the Hub): a token, or True
    # for the one `hf auth login` saved. None: huggingface_hub's own default (HF_TOKEN, then the saved login).
    hf_token: bool | str | None = None
    download_dir: str | None = None
    # vLLM's: file patterns (fnmatch, relative to the model folder) neither downloaded nor loaded; its default skips
    # the duplicate weights some repositories keep under original/ (Llama 3's consolidated checkpoint).
    ignore_patterns: list[str] | str | None = dataclasses.field(default_factory=lambda: ["original/**/*"])
    load_format: str = "auto"
    use_tqdm_on_load: bool = True   # progress bars while weights load (vLLM's flag)
    # vLLM's: how safetensors files are read: "lazy" (memory-mapped, tensor by tensor) or "eager" (each file read
    # whole into memory first: fewer, larger reads, for network file systems).
    safetensors_load_strategy: str = "lazy"
    # vLLM's: torch.load's map_location for *.bin / *.pt checkpoints ("cpu", "cuda:0", or a {from: to} dict).
    pt_load_map_location: str | dict[str, str] = "cpu"
    # vLLM's: at most this many ranks (tensor x pipeline parallel workers) load their weights at once, in waves by
    # rank, to bound the host memory of loading a large model; None: all at once.
    max_parallel_loading_workers: int | None = None
    dtype: str = "auto"       # or a torch.dtype (stored as its name)
    quantization: str | None = None
    seed: int | None = 0
    max_model_len: int | None = None
    block_size: int = 16
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    # KV cache size in GiB, on the GPU instead of the gpu_memory_utilization budget. None: on the CPU
    # PAGEDLLM_CPU_KVCACHE_SPACE (vLLM's VLLM_CPU_KVCACHE_SPACE) or 4 GiB; both capped by the memory that
    # max_num_seqs full-length sequences could ever need.
    kv_cache_memory_gb: float | None = None
    # The same in bytes (vLLM's name); give one of the two.
    kv_cache_memory_bytes: int | None = None
    # Fixed number of KV blocks (overrides the memory-based sizing; used by tests and for reproducible runs).
    num_gpu_blocks_override: int | None = None
    # GiB of CPU memory per GPU for the KV blocks of preempted requests (swap out / swap in instead of recompute).
    # None or 0: no swap space, preemption recomputes (vLLM's default is 4; we pin nothing unless asked).
    swap_space: float | None = None
    # vLLM's KV offloading: a CPU tier of the prefix cache, this many GiB of CPU memory (per GPU worker). Full blocks
    # evicted from the device's prefix cache are copied there, and a later request whose prefix is there gets its
    # blocks copied back instead of recomputed. "native" is vLLM's own backend (LMCache's is not integrated).
    kv_offloading_size: float | None = None
    kv_offloading_backend: str = "native"
    # vLLM's KVTransferConfig (dict or JSON): its native CPU offloading connector ("OffloadingConnector" with
    # kv_connector_extra_config's cpu_bytes_to_use, what vLLM turns kv_offloading_size into) is that CPU tier; other
    # connectors (disaggregated prefill, LMCache) are refused by name (kv_transfer_offloading_gib).
    kv_transfer_config: dict | str | None = None
    # vLLM's names: "swap" | "recompute"; None: by cost (engine/scheduler.py Scheduler._swaps: swap when the request
    # holds more than SWAP_MIN_BLOCKS blocks of computed KV and the swap space has room, else recompute).
    preemption_mode: str | None = None
    cpu_offload_gb: float = 0
    kv_cache_dtype: str = "auto"
    # vLLM's: fp8 KV scales computed from a warm-up batch (True); False keeps k_scale = v_scale = 1.0, vLLM's scales
    # without calibration. True is refused with an fp8 cache; with a 16-bit cache no scale is used (in vLLM neither).
    calculate_kv_scales: bool = False
    prefix_caching_hash_algo: str = "sha256"
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool = True
    max_logprobs: int = 20
    # vLLM's: what a request's logprobs hold: raw_logprobs (the model's distribution), raw_logits, processed_logprobs
    # or processed_logits (after penalties, bias, masks and, for random sampling, temperature, min-p, top-k, top-p;
    # model/layers/sampler.py). Prompt logprobs are raw logprobs in every mode, as vLLM's.
    logprobs_mode: str = "raw_logprobs"
    enforce_eager: bool = False
    # vLLM's optimization level (-O0 .. -O3; 2 is its default): 0 starts as fast as it can, capturing no CUDA graph
    # (as enforce_eager); 1, 2 and 3 capture pagedllm's graphs (full graphs of decode steps, piecewise graphs of steps
    # with prompt tokens). pagedllm compiles nothing (no torch.compile, no fusion passes), so 1 to 3 run alike.
    optimization_level: int = 2
    # vLLM's performance mode: "balanced" (its default) is pagedllm's one tuning; "interactivity" and "throughput"
    # are refused (cudagraph_capture_sizes, max_num_seqs and max_num_batched_tokens tune the same things).
    performance_mode: str = "balanced"
    # vLLM's: turn off cascade attention (its kernel for a prefix shared by a whole batch). pagedllm has no cascade
    # attention, so its attention is always what vLLM's is with this set: both values are honoured as they stand.
    disable_cascade_attn: bool = False
    # vLLM's: a model with sliding-window attention runs with full attention instead, max_model_len capped at the
    # window (where the two are the same; _sliding_window_len). Without it the windowed layers attend through their
    # window (layer_sliding_windows; both built-in attention backends).
    disable_sliding_window: bool = False
    # vLLM's CUDA-graph sizes (fields of its compilation config, also engine arguments and flags; compilation_config=
    # {"cudagraph_capture_sizes": [...]} works too): the decode graphs' batch sizes and the piecewise graphs' token
    # counts. None: pagedllm's own lists (decode 1..max_num_seqs, piecewise up to PAGEDLLM_PIECEWISE_MAX_TOKENS);
    # max_cudagraph_capture_size cuts those lists at that size. A step above the largest size runs eagerly.
    cudagraph_capture_sizes: list[int] | None = None
    max_cudagraph_capture_size: int | None = None
    # vLLM's sleep mode: LLM.sleep(level) / wake_up() (POST /sleep, /wake_up with PAGEDLLM_SERVER_DEV_MODE=1) free
    # the weights' and the KV cache's device memory without a restart (worker/sleep_mode.py). Off: sleep() is an
    # error that says to turn it on, as vLLM requires it.
    enable_sleep_mode: bool = False
    # vLLM's: "module.Class" whose methods every worker gets, for collective_rpc (RLHF weight updates;
    # worker/extension.py). "": none.
    worker_extension_cls: str = ""
    # Schedule step N+1 while the device runs step N (None: on for CUDA, off on CPU where nothing overlaps).
    async_scheduling: bool | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    device: str = "auto"
    attention_backend: str | None = None
    # vLLM's AttentionConfig as a dict: its "backend" is attention_backend (vLLM's --attention-backend is short for
    # --attention-config.backend); its other keys tune vLLM's FlashAttention / FlashInfer kernels: refused.
    attention_config: dict | None = None
    disable_log_stats: bool = False
    # AsyncEngineArgs' (vLLM's): AsyncLLMEngine.from_engine_args logs requests (their aborts) with it; the server's
    # switch is --enable-log-requests.
    enable_log_requests: bool = False
    served_model_name: list[str] | str | None = None
    generation_config: str = "auto"
    # Fields set over the generation config (the model's, or none with generation_config="vllm"), as vLLM:
    # {"temperature": 0.5} makes 0.5 every request's default temperature.
    override_generation_config: dict | None = None
    # Fields set on the model's HF config, or (vLLM's other form) a function of the config that returns it.
    hf_overrides: dict | Callable[[Any], Any] | None = None
    # Kernel and graph switches (A/B runs); None: the PAGEDLLM_* variable of the same name (envs.py), on by default.
    triton_gemv: bool | None = None              # Triton skinny GEMM for batch-1 GPU linears
    pdl: bool | None = None                      # programmatic dependent launch of our decode kernels
    piecewise_cuda_graphs: bool | None = None    # CUDA graphs for steps with prompt tokens
    cpu_onednn: bool | None = None               # CPU linears through oneDNN with prepacked weights
    # CPU engine: torch's intra-op threads (each rank's); None: PAGEDLLM_CPU_THREADS, else OMP_NUM_THREADS, else the
    # cores this process may use (os.sched_getaffinity) over the tensor x pipeline parallel ranks. vLLM's CPU backend
    # binds threads with VLLM_CPU_OMP_THREADS_BIND.
    cpu_threads: int | None = None
    # No Triton kernels of ours: torch attention, cuBLAS linears, no PDL.
    disable_custom_kernels: bool = False
    # True: every tensor-parallel all-reduce through NCCL / gloo, even with PAGEDLLM_CUSTOM_ALL_REDUCE_KIB set
    # (the opt-in one-shot all-reduce over symmetric memory, distributed/symm_mem_all_reduce.py; off by default).
    disable_custom_all_reduce: bool = False
    # "generate" or "pooling" (embedding and classification models); "auto": the checkpoint says (an encoder or
    # sequence-classification architecture, or a sentence-transformers modules.json, means pooling). task="embed" /
    # "classify" / "score" are vLLM's older spellings of runner="pooling" with convert="embed" / "classify".
    task: str = "auto"
    runner: str = "auto"
    convert: str = "auto"
    # vLLM arguments for what pagedllm does not do yet: the defaults are accepted, anything else is an error.
    scheduling_policy: str = "fcfs"              # "priority": requests' priority orders the queue
    # LoRA adapters (pagedllm/lora; docs/lora.md): at most max_loras distinct adapters in one step (requests with
    # others wait), of rank <= max_lora_rank; max_cpu_loras adapters kept loaded in CPU memory (None: max_loras).
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    lora_dtype: str = "auto"              # the adapters' weights: "auto" (the model's dtype), float16, bfloat16
    enable_lora_bias: bool = False        # LoRA biases: not supported yet (True is an error)
    fully_sharded_loras: bool = False     # True (shard A of column-parallel layers too) is not supported yet at TP > 1
    # At most this many tokens of one prompt per step (0: no cap). None: no cap, except behind the server on the
    # CPU (SERVER_CPU_LONG_PREFILL_TOKEN_THRESHOLD), where a step of 2048 prompt tokens takes seconds.
    long_prefill_token_threshold: int | None = None
    max_num_partial_prefills: int = 1
    max_long_partial_prefills: int = 1      # vLLM's: <= max_num_partial_prefills, so only 1 here
    # vLLM's: a streamed (DELTA) request is reported at its first token, then every this many tokens, and at its end.
    stream_interval: int = 1
    # At most this many of the n sequences of one request queued or running at once (0: no cap; pagedllm's own
    # option, vLLM has none). None: no cap offline (one caller owns the engine), max_num_seqs // 16 behind the server.
    max_num_seqs_per_request: int | None = None
    enable_expert_parallel: bool = False
    data_parallel_size: int = 1
    speculative_config: dict | None = None
    # vLLM's ProfilerConfig as a dict ({"profiler": "torch", "torch_profiler_dir": ...}): LLM.start_profile() /
    # stop_profile() and the server's /start_profile, /stop_profile (profiler_settings below).
    profiler_config: dict | None = None
    # vLLM's StructuredOutputsConfig as a dict: backend "auto" / "xgrammar" (pagedllm's one backend), and
    # disable_any_whitespace / disable_additional_properties for every request's JSON grammar; reasoning_parser
    # (as the field below) and enable_in_reasoning (grammars apply while the model thinks too).
    structured_outputs_config: dict | StructuredOutputsConfig | None = None
    # vLLM's --reasoning-parser (pagedllm/reasoning_parsers.py): the server splits a reasoning model's thinking
    # from its answer, and structured output constrains only the answer (offline too, as vLLM). "": none.
    reasoning_parser: str = ""
    compilation_config: int | dict | None = None
    # vLLM's multimodal settings. limit_mm_per_prompt: images per prompt for a model that reads them (LLaVA-1.5;
    # vLLM's default 999, engine/multimodal.py); a text-only model reads none (vLLM's "At most 0 image(s)"). On a
    # text-only model vLLM leaves them unused: taken and type-checked, so scripts passing them for every model
    # (spec_decode_offline.py) run as on vLLM. disable_chunked_mm_input=True: no prompt chunk ends inside an image's
    # placeholders (engine/scheduler.py _whole_images; by default an image's embeddings are sliced across chunks).
    limit_mm_per_prompt: dict | None = None
    disable_chunked_mm_input: bool = False
    allowed_local_media_path: str = ""
    # vLLM's image processor settings, for every request: Qwen2-VL / Qwen2.5-VL's min_pixels / max_pixels (an image's
    # pixel range, so its placeholder count); any other key, or any key for LLaVA, is refused by the front end;
    # unused on a text-only model (as vLLM's, like limit_mm_per_prompt).
    mm_processor_kwargs: dict | None = None
    # vLLM's PoolerConfig (or a dict of its fields, or their JSON): a pooling model's pooling type, activation /
    # normalization default, Matryoshka dimensions, classifier calibration, STEP pooling; over the checkpoint's.
    pooler_config: PoolerConfig | dict | None = None
    # Who builds the engine, vLLM's UsageContext: LLM_CLASS (offline LLM), OPENAI_API_SERVER (serve), or what
    # from_engine_args(usage_context=...) was given. Not a field (no LLM keyword, no flag): set on the instance, and
    # it picks the scheduler's defaults as in vLLM (the server's prefill chunks are half the LLM class's).
    usage_context: ClassVar[UsageContext] = UsageContext.LLM_CLASS

    # ---- construction -------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        # vLLM takes a torch.dtype too (LLM(model, dtype=torch.bfloat16)): kept as its name, the one form the rest
        # of the engine reads.
        if isinstance(self.dtype, torch.dtype):
            names = {dtype: name for name, dtype in _DTYPES.items() if name not in ("float", "half")}
            if self.dtype not in names:
                raise ValueError(f"dtype={self.dtype} is not supported; use one of "
                                 f"{', '.join(names.values())} (or auto).")
            self.dtype = names[self.dtype]
        self.attention_backend = attention_backend_name(self.attention_backend)
        if self.attention_config is not None:
            self.attention_backend = _backend_of_attention_config(self.attention_config, self.attention_backend)
        _coerce_scalar_fields(self)
        if self.pooler_config is not None:
            self.pooler_config = PoolerConfig.coerce(self.pooler_config)
        # load_format="bitsandbytes" alone asks for bitsandbytes (vLLM's tutorials give both; vLLM sets the load
        # format from the quantization, and a pre-quantized checkpoint says bitsandbytes itself).
        if self.load_format == "bitsandbytes" and self.quantization is None:
            self.quantization = "bitsandbytes"

    def for_usage_context(self, usage_context: UsageContext | str | None) -> "EngineArgs":
        """These arguments for an engine built in ``usage_context`` (vLLM's ``from_engine_args(engine_args,
        usage_context=...)``): a copy that carries it (the caller's instance is left as it is), or these arguments
        themselves when None."""
        if usage_context is None:
            return self
        args = copy.copy(self)
        args.usage_context = UsageContext.parse(usage_context)
        return args

    @classmethod
    def from_kwargs(cls, model: str | None = None, **kwargs: Any) -> "EngineArgs":
        """Build from ``LLM(...)`` keyword arguments; an unknown keyword is an error that names it."""
        # An AsyncEngineArgs-only field at its default passes: vLLM's ``LLM(**dataclasses.asdict(engine_args))``
        # (its examples; pagedllm's benchmarks too) hands over every field, and EngineArgs is AsyncEngineArgs here.
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        unknown = sorted(k for k, v in kwargs.items()
                         if k not in defaults or (k in _ASYNC_ONLY_FIELDS and v != defaults[k]))
        if unknown:
            message = f"LLM got unexpected keyword argument(s): {', '.join(unknown)}"
            message += _vllm_args_note(unknown, unknown, "argument")
            raise TypeError(message)
        if model is not None:
            kwargs["model"] = model
        return cls(**kwargs)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser, model_positional: bool = False) -> argparse.ArgumentParser:
        """Add every engine argument in kebab-case (vLLM's flag names)."""
        d = EngineArgs()
        g = parser.add_argument_group("engine arguments")
        if not model_positional:
            g.add_argument("--model", type=str, default=d.model, help="HF model id, local folder or .gguf file.")
        g.add_argument("--tokenizer", type=str, default=None, help="Tokenizer name or path (default: the model).")
        g.add_argument("--tokenizer-mode", type=str, default=d.tokenizer_mode)
        g.add_argument("--hf-config-path", type=str, default=None,
                       help="Folder or Hub id whose config.json to use instead of the model's.")
        g.add_argument("--config-format", type=str, default=d.config_format, choices=["auto", "hf", "mistral"])
        g.add_argument("--model-impl", type=str, default=d.model_impl, choices=["auto", "vllm", "transformers"])
        g.add_argument("--skip-tokenizer-init", action=argparse.BooleanOptionalAction, default=d.skip_tokenizer_init,
                       help="Skip the tokenizer; prompts must then be token ids.")
        g.add_argument("--logits-processors", type=str, nargs="+", default=None,
                       help="Custom logits processor classes, as 'package.module.Class' or 'package.module:Class' "
                            "(subclasses of pagedllm.v1.sample.logits_processor.LogitsProcessor); requests pass "
                            "their settings in vllm_xargs.")
        g.add_argument("--enable-prompt-embeds", action=argparse.BooleanOptionalAction, default=d.enable_prompt_embeds,
                       help="Accept prompts as input embeddings (/v1/completions prompt_embeds: base64 of "
                            "torch.save(tensor [num_tokens, hidden_size])). Only for trusted clients.")
        g.add_argument("--trust-remote-code", action=argparse.BooleanOptionalAction,
                       default=d.trust_remote_code, help="Trust remote code from the hub.")
        g.add_argument("--revision", type=str, default=None)
        g.add_argument("--code-revision", type=str, default=None,
                       help="The revision of remote code kept in another Hub repository (with --trust-remote-code).")
        g.add_argument("--tokenizer-revision", type=str, default=None)
        g.add_argument("--hf-token", type=str, nargs="?", const=True, default=None,
                       help="Hugging Face token for downloads (gated models); alone, the token `hf auth login` saved.")
        g.add_argument("--download-dir", type=str, default=None, help="Where to download and cache weights.")
        g.add_argument("--ignore-patterns", type=str, nargs="+", default=d.ignore_patterns,
                       help="File patterns (relative to the model folder) neither downloaded nor loaded.")
        g.add_argument("--load-format", type=str, default=d.load_format, choices=list(LOAD_FORMATS))
        g.add_argument("--use-tqdm-on-load", action=argparse.BooleanOptionalAction, default=d.use_tqdm_on_load,
                       help="Show progress bars while loading weights.")
        g.add_argument("--safetensors-load-strategy", type=str, default=d.safetensors_load_strategy,
                       choices=list(SAFETENSORS_LOAD_STRATEGIES),
                       help="lazy: memory-map each safetensors file; eager: read each file whole first (network "
                            "file systems).")
        g.add_argument("--pt-load-map-location", type=_json_or_str, default=d.pt_load_map_location,
                       help="torch.load's map_location for *.bin / *.pt checkpoints: 'cpu', 'cuda:0', or JSON "
                            "such as '{\"cuda:1\": \"cuda:0\"}'.")
        g.add_argument("--max-parallel-loading-workers", type=int, default=d.max_parallel_loading_workers,
                       help="At most this many parallel ranks load their weights at once (in waves by rank), to "
                            "bound the host memory of loading a large model.")
        g.add_argument("--dtype", type=str, default=d.dtype,
                       choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
        g.add_argument("--quantization", "-q", type=str, default=None,
                       help="Quantization method: awq (awq_marlin), gptq (gptq_marlin), compressed-tensors, fp8 (a "
                            "dense checkpoint is quantized at load), bitsandbytes (likewise), gguf. None: the "
                            "checkpoint's quantization_config.")
        g.add_argument("--seed", type=int, default=d.seed)
        g.add_argument("--max-model-len", type=_parse_len, default=None,
                       help="Model context length (prompt + output): 2048, 32k (32000) or 32K (32768), as vLLM; "
                            "auto (or -1): the model's own length, cut to the longest that the KV cache holds.")
        g.add_argument("--block-size", type=int, default=d.block_size, choices=[1, 8, 16, 32, 64, 128, 256])
        g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                       default=d.enable_prefix_caching)
        g.add_argument("--gpu-memory-utilization", type=float, default=d.gpu_memory_utilization)
        g.add_argument("--kv-cache-memory-gb", type=float, default=None,
                       help="KV cache size in GiB (GPU: instead of the gpu-memory-utilization budget; CPU: default "
                            "PAGEDLLM_CPU_KVCACHE_SPACE or 4).")
        g.add_argument("--kv-cache-memory-bytes", type=_human_int, default=None,
                       help="The same in bytes (vLLM's flag; 4G = 4 GiB, 4g = 4e9).")
        g.add_argument("--num-gpu-blocks-override", type=int, default=None)
        g.add_argument("--kv-offloading-size", type=float, default=d.kv_offloading_size,
                       help="GiB of CPU memory (in all, over the parallel ranks) for a CPU tier of the prefix cache "
                            "(evicted blocks are kept there and copied back on a hit instead of recomputed).")
        g.add_argument("--kv-offloading-backend", type=str, default=d.kv_offloading_backend,
                       choices=["native", "lmcache"], help="native: pagedllm's own CPU tier (lmcache: refused).")
        g.add_argument("--kv-transfer-config", type=json_arg, default=None,
                       help='vLLM\'s KV connector as JSON: only its native CPU offloading, \'{"kv_connector": '
                            '"OffloadingConnector", "kv_role": "kv_both", "kv_connector_extra_config": '
                            '{"cpu_bytes_to_use": BYTES}}\' (the same CPU tier as --kv-offloading-size).')
        g.add_argument("--swap-space", type=float, default=d.swap_space,
                       help="CPU swap space per GPU in GiB for preempted requests' KV blocks (default: none).")
        g.add_argument("--preemption-mode", type=str, default=d.preemption_mode, choices=["swap", "recompute"],
                       help="How preempted requests keep their KV: swap to CPU blocks or recompute (default: by "
                            "cost, swap when there is swap space and the request holds more than a few blocks).")
        g.add_argument("--cpu-offload-gb", type=float, default=d.cpu_offload_gb,
                       help="GiB of weights kept in CPU memory and streamed to the GPU for each forward (GPU only; "
                            "0 on the CPU).")
        g.add_argument("--kv-cache-dtype", type=str, default=d.kv_cache_dtype,
                       help="auto (the model's dtype), bfloat16, fp8 (= fp8_e4m3) or fp8_e5m2: an FP8 KV cache "
                            "holds twice the tokens of a 16-bit one in the same memory.")
        g.add_argument("--calculate-kv-scales", action=argparse.BooleanOptionalAction, default=d.calculate_kv_scales,
                       help="Not supported yet with an fp8 KV cache (its scales are 1.0, vLLM's without "
                            "calibration); --no-calculate-kv-scales is the default.")
        g.add_argument("--prefix-caching-hash-algo", type=str, default=d.prefix_caching_hash_algo,
                       help="Hash of prefix-cache blocks; only sha256 for now.")
        g.add_argument("--max-num-seqs", type=int, default=None)
        g.add_argument("--max-num-batched-tokens", type=_human_int, default=None)
        g.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction,
                       default=d.enable_chunked_prefill)
        g.add_argument("--max-logprobs", type=int, default=d.max_logprobs)
        g.add_argument("--logprobs-mode", type=str, default=d.logprobs_mode,
                       choices=list(LOGPROBS_MODES),
                       help="What logprobs hold: of the raw model output or of the distribution the token is drawn "
                            "from (after penalties, temperature, top-k/top-p), as log-probabilities or logits.")
        g.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction,
                       default=d.enforce_eager, help="Disable CUDA graphs.")
        g.add_argument("--optimization-level", "-O", type=_optimization_level_flag, default=d.optimization_level,
                       choices=list(OPTIMIZATION_LEVELS),
                       help="vLLM's optimization level, -O0 .. -O3: 0 captures no CUDA graph (fastest start-up, as "
                            "--enforce-eager); 1, 2 and 3 capture pagedllm's graphs (full graphs of decode steps, "
                            "piecewise ones of steps with prompt tokens). pagedllm compiles nothing (no "
                            "torch.compile), so 1 to 3 run alike.")
        g.add_argument("--performance-mode", type=str, default=d.performance_mode, choices=list(PERFORMANCE_MODES),
                       help="balanced (vLLM's default) only: interactivity and throughput are not supported yet "
                            "(tune --cudagraph-capture-sizes, --max-num-seqs, --max-num-batched-tokens instead).")
        g.add_argument("--disable-cascade-attn", action=argparse.BooleanOptionalAction, default=d.disable_cascade_attn,
                       help="vLLM's switch for its shared-prefix cascade attention; pagedllm has none (always as if "
                            "set).")
        g.add_argument("--disable-sliding-window", action=argparse.BooleanOptionalAction,
                       default=d.disable_sliding_window,
                       help="A sliding-window model (Mistral v0.1, Gemma 2, Qwen2 with use_sliding_window) runs "
                            "with full attention, max_model_len capped at its window (vLLM's flag); without it the "
                            "windowed layers attend through their window.")
        g.add_argument("--worker-extension-cls", type=str, default=d.worker_extension_cls,
                       help="module.Class whose methods every worker gets, for collective_rpc (vLLM's).")
        g.add_argument("--enable-sleep-mode", action=argparse.BooleanOptionalAction, default=d.enable_sleep_mode,
                       help="Allow sleep() / wake_up() (POST /sleep and /wake_up need PAGEDLLM_SERVER_DEV_MODE=1 too): "
                            "free the weights' and the KV cache's device memory without a restart.")
        g.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                       help="Overlap the host's scheduling and output processing with the GPU's step "
                            "(default: on with CUDA).")
        g.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
        g.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
        g.add_argument("--data-parallel-size", "-dp", type=int, default=d.data_parallel_size,
                       help="Not supported yet: only 1.")
        g.add_argument("--distributed-executor-backend", type=str, default=None,
                       help="uni (the model in this process; the default for one rank), mp (a worker process per "
                            "rank; the default for several) or ray (a Ray actor per rank).")
        g.add_argument("--disable-custom-all-reduce", action=argparse.BooleanOptionalAction,
                       default=d.disable_custom_all_reduce,
                       help="Every tensor-parallel all-reduce through NCCL / gloo, even with "
                            "PAGEDLLM_CUSTOM_ALL_REDUCE_KIB set.")
        g.add_argument("--enable-expert-parallel", action=argparse.BooleanOptionalAction,
                       default=d.enable_expert_parallel, help="Not supported yet.")
        g.add_argument("--device", type=str, default=d.device, choices=["auto", "cpu", "cuda"])
        g.add_argument("--attention-backend", type=_attention_backend_flag, default=None, choices=["torch", "triton"],
                       help="Attention kernels: triton (pagedllm's Triton kernels; vLLM's TRITON_ATTN / TRITON_MLA "
                            "name it too) or torch (PyTorch; vLLM's TORCH_SDPA / CPU_ATTN). None = triton on CUDA, "
                            "torch on the CPU.")
        g.add_argument("--attention-config", type=json_arg, default=None,
                       help='vLLM\'s attention config as JSON (or --attention-config.backend NAME): its backend, as '
                            '--attention-backend; its other keys tune vLLM\'s own kernels and are refused.')
        g.add_argument("--disable-custom-kernels", action=argparse.BooleanOptionalAction,
                       default=d.disable_custom_kernels,
                       help="None of pagedllm's Triton kernels: torch attention, cuBLAS linears, no PDL.")
        g.add_argument("--triton-gemv", action=argparse.BooleanOptionalAction, default=None,
                       help="Triton skinny GEMM for batch-1 GPU linears (default: env PAGEDLLM_TRITON_GEMV, on).")
        g.add_argument("--pdl", action=argparse.BooleanOptionalAction, default=None,
                       help="Programmatic dependent launch of the decode kernels, Hopper+ (default: env "
                            "PAGEDLLM_PDL, on).")
        g.add_argument("--cudagraph-capture-sizes", type=int, nargs="+", default=None,
                       help="CUDA-graph sizes: the decode graphs' batch sizes and the piecewise graphs' token counts "
                            "(vLLM's flag; default: pagedllm's lists). Larger steps run eagerly.")
        g.add_argument("--max-cudagraph-capture-size", type=int, default=None,
                       help="Largest CUDA-graph size: the default size lists cut there (vLLM's flag).")
        g.add_argument("--piecewise-cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                       help="CUDA graphs for steps with prompt tokens (default: env PAGEDLLM_PIECEWISE_GRAPHS, on).")
        g.add_argument("--cpu-onednn", action=argparse.BooleanOptionalAction, default=None,
                       help="CPU linears through oneDNN with prepacked weights (default: env PAGEDLLM_CPU_ONEDNN, "
                            "on).")
        g.add_argument("--cpu-threads", type=int, default=None,
                       help="CPU engine: torch's intra-op threads of each rank (default: env PAGEDLLM_CPU_THREADS, "
                            "else OMP_NUM_THREADS, else the cores this process may use shared out among the "
                            "tensor x pipeline parallel ranks).")
        g.add_argument("--compilation-config", "-cc", type=_json_or_int, default=None,
                       help="vLLM's compilation config as JSON (or -cc.KEY VALUE): pagedllm takes its "
                            "cudagraph_mode (NONE, PIECEWISE, FULL_DECODE_ONLY, FULL_AND_PIECEWISE; FULL runs as "
                            "FULL_AND_PIECEWISE), cudagraph_capture_sizes, max_cudagraph_capture_size and "
                            "cudagraph_specialize_lora; mode 0 only (pagedllm does not use torch.compile). -O is "
                            "--optimization-level.")
        g.add_argument("--disable-log-stats", action="store_true")
        g.add_argument("--generation-config", type=str, default=d.generation_config,
                       help='"auto" (the model\'s generation_config.json), "vllm" (ignore it) or a folder.')
        g.add_argument("--override-generation-config", type=json_arg, default=None,
                       help="JSON setting sampling defaults over the generation config, e.g. '{\"temperature\": "
                            f"0.5}}'; keys: {', '.join(GENERATION_CONFIG_SAMPLING_KEYS)}, do_sample.")
        g.add_argument("--hf-overrides", type=json_arg, default=None,
                       help='JSON overriding fields of the model\'s HF config, e.g. \'{"rope_theta": 1e6}\'.')
        g.add_argument("--task", type=str, default=d.task,
                       help="auto, generate, embed, classify or score (vLLM's older spellings of --runner pooling "
                            "--convert embed / classify).")
        g.add_argument("--runner", type=str, default=d.runner,
                       help="auto (from the checkpoint), generate, or pooling (embedding and classification models).")
        g.add_argument("--convert", type=str, default=d.convert,
                       help="auto, none, embed (a decoder or encoder as an embedding model) or classify (a "
                            "*ForSequenceClassification checkpoint's head); a generative checkpoint becomes a classifier "
                            "only through vLLM's hf_overrides recipe (classifier_from_token, e.g. Qwen3-Reranker).")
        g.add_argument("--scheduling-policy", type=str, default=d.scheduling_policy,
                       help="fcfs (requests' priority must be 0) or priority (lower value first, then arrival).")
        g.add_argument("--long-prefill-token-threshold", type=int, default=d.long_prefill_token_threshold,
                       help="At most this many tokens of one prompt per step (0: no cap), so a long prompt cannot "
                            "take a whole step's budget from short requests. None: no cap, except behind the server "
                            f"on the CPU ({SERVER_CPU_LONG_PREFILL_TOKEN_THRESHOLD}).")
        g.add_argument("--max-num-seqs-per-request", type=int, default=d.max_num_seqs_per_request,
                       help="At most this many of the n sequences of one request are queued or running at once; the "
                            "others wait for one to end (0: no cap). None: no cap offline, max_num_seqs // 16 behind "
                            "the server, so one request with a huge n cannot take every seat from short requests.")
        g.add_argument("--max-num-partial-prefills", type=int, default=d.max_num_partial_prefills,
                       help="Not supported yet: only 1.")
        g.add_argument("--max-long-partial-prefills", type=int, default=d.max_long_partial_prefills,
                       help="At most max_num_partial_prefills (so only 1 until concurrent partial prefills exist).")
        g.add_argument("--stream-interval", type=int, default=d.stream_interval,
                       help="A streamed request is sent its first token, then every this many tokens, and its "
                            "end (fewer, larger chunks; 1: every token).")
        g.add_argument("--enable-lora", action=argparse.BooleanOptionalAction, default=d.enable_lora,
                       help="Serve LoRA adapters (PEFT folders; --lora-modules, or a request's LoRARequest offline).")
        g.add_argument("--max-loras", type=int, default=d.max_loras,
                       help="Most distinct adapters in one step; requests with others wait.")
        g.add_argument("--max-lora-rank", type=int, default=d.max_lora_rank, choices=list(MAX_LORA_RANKS),
                       help="Largest adapter rank accepted.")
        g.add_argument("--max-cpu-loras", type=int, default=None,
                       help="Adapters kept loaded in CPU memory (default: --max-loras).")
        g.add_argument("--lora-dtype", type=str, default=d.lora_dtype, choices=list(LORA_DTYPES),
                       help="dtype of the adapters' weights (auto: the model's).")
        g.add_argument("--enable-lora-bias", action=argparse.BooleanOptionalAction,
                       default=d.enable_lora_bias, help="Not supported yet.")
        g.add_argument("--fully-sharded-loras", action=argparse.BooleanOptionalAction, default=d.fully_sharded_loras,
                       help="Not supported yet with tensor parallel (adapters are sharded as vLLM's default).")
        g.add_argument("--speculative-config", type=json_arg, default=None,
                       help='Speculative decoding as JSON, e.g. \'{"method": "ngram", "num_speculative_tokens": 5, '
                            '"prompt_lookup_max": 4}\' or \'{"model": DRAFT, "num_speculative_tokens": 4}\' (methods: ngram, '
                            'draft_model).')
        g.add_argument("--profiler-config", type=json_arg, default=None,
                       help='vLLM\'s profiler config as JSON, e.g. \'{"profiler": "torch", "torch_profiler_dir": '
                            '"./traces"}\': torch.profiler traces of the workers\' steps between /start_profile and '
                            '/stop_profile (LLM.start_profile / stop_profile). VLLM_TORCH_PROFILER_DIR does the same.')
        g.add_argument("--pooler-config", type=json_arg, default=None,
                       help='A pooling model\'s pooler as JSON (or --pooler-config.KEY VALUE), over its checkpoint\'s: '
                            '\'{"pooling_type": "MEAN", "use_activation": false}\'. Fields: pooling_type (CLS, LAST, '
                            'MEAN, ALL, STEP), use_activation, dimensions, logit_mean, logit_sigma, step_tag_id, '
                            'returned_token_ids.')
        g.add_argument("--structured-outputs-config", type=json_arg, default=None,
                       help='JSON (or --structured-outputs-config.KEY VALUE): backend "auto" / "xgrammar", '
                            "disable_any_whitespace, disable_additional_properties (defaults of every request), "
                            "reasoning_parser, enable_in_reasoning.")
        g.add_argument("--limit-mm-per-prompt", type=json_arg, default=None,
                       help='Images per prompt (JSON, e.g. \'{"image": 2}\'; default 999) for a model that reads '
                            "them (LLaVA-1.5, Qwen2-VL, Qwen2.5-VL).")
        g.add_argument("--disable-chunked-mm-input", action=argparse.BooleanOptionalAction,
                       default=d.disable_chunked_mm_input,
                       help="No prompt chunk ends inside an image's placeholders (vLLM's).")
        g.add_argument("--mm-processor-kwargs", type=json_arg, default=None,
                       help='The image processor\'s settings (JSON): Qwen2-VL / Qwen2.5-VL\'s min_pixels, max_pixels, '
                            'e.g. \'{"max_pixels": 1003520}\'.')
        g.add_argument("--allowed-local-media-path", type=str, default=d.allowed_local_media_path,
                       help="The folder under which file:// image URLs may be read (vLLM's).")
        g.add_argument("--reasoning-parser", type=str, default=d.reasoning_parser,
                       help="A reasoning model's parser: the server returns its thinking as message.reasoning apart "
                            "from message.content, and structured output constrains only what follows the thinking. "
                            f"One of {', '.join(REASONING_PARSERS)}.")
        _none_for_optional_flags(g)
        _split_into_config_groups(parser, g)
        return parser

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "EngineArgs":
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        return cls(**values)


# Fields of vLLM's AsyncEngineArgs only: LLM(...) refuses them as vLLM's LLM does (it would not use them).
_ASYNC_ONLY_FIELDS = frozenset({"enable_log_requests"})

# vLLM's name for the server's / AsyncLLMEngine's arguments (``from vllm import AsyncEngineArgs``): the same fields.
AsyncEngineArgs = EngineArgs


# Integer arguments that take vLLM's human-readable forms ("32k", "4G") offline as on the command line.
_HUMAN_READABLE_INT_FIELDS = ("max_model_len", "max_num_batched_tokens", "kv_cache_memory_bytes")


# Strings pydantic (vLLM's validated configs) reads as booleans.
_BOOL_STRINGS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False,
                 "off": False}


# Fields pagedllm gives a value by default whose vLLM namesakes default to None (its platform's or model's choice):
# None given for them (LLM(block_size=args.block_size) with an argparse default of None) is their default here too.
_NONE_IS_DEFAULT = ("block_size", "task", "lora_dtype")


def _coerce_scalar_fields(args: EngineArgs) -> None:
    """A number or a switch given as a string (LLM(max_num_seqs="8"), enforce_eager="false", from YAML or the
    environment) becomes the number or the bool, as vLLM's validated configs take it; anything else is a ValueError
    naming the field, not a TypeError from a comparison later (or "false" switching a flag on, as a non-empty
    string is true). None for a switch, or for a field vLLM defaults to None, is the default (vLLM's None for
    enable_prefix_caching / enable_chunked_prefill means on: it turned them off here); None for a number is a
    ValueError (it was a TypeError from a comparison)."""
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        kind = str(f.type).replace(" | None", "")
        if value is None and "None" not in str(f.type) and f.name != "model":
            if kind == "bool" or f.name in _NONE_IS_DEFAULT:
                setattr(args, f.name, f.default)
            elif kind in ("int", "float"):
                raise ValueError(f"{f.name}: {'an integer' if kind == 'int' else 'a number'} expected, got None "
                                 f"(leave it out for its default, {f.default!r}).")
            continue
        if isinstance(value, str) and kind == "bool":
            if value.strip().lower() not in _BOOL_STRINGS:
                raise ValueError(f"{f.name}: true or false expected, got {value!r}.")
            setattr(args, f.name, _BOOL_STRINGS[value.strip().lower()])
            continue
        if not isinstance(value, str) or kind not in ("int", "float"):
            continue
        try:
            if f.name in _HUMAN_READABLE_INT_FIELDS:
                number = parse_human_readable_int(value, allow_auto=f.name == "max_model_len")
            else:
                number = int(value) if kind == "int" else float(value)
        except ValueError as e:
            what = "an integer" if kind == "int" else "a number"
            detail = e if f.name in _HUMAN_READABLE_INT_FIELDS else f"{what} expected, got {value!r}"
            raise ValueError(f"{f.name}: {detail}.") from None
        setattr(args, f.name, number)


# vLLM's other tokenizer modes (its TokenizerRegistry's entries), which a user copying a vLLM command line may pass:
# named so the error says what they are rather than calling a vLLM value unknown.
_VLLM_TOKENIZER_MODES = {
    "custom": "(vLLM's TokenizerRegistry tokenizer; vLLM 0.24 takes the registered name as the mode)",
    "deepseek_v32": "(vLLM's DeepSeek-V3.2 chat encoder)",
    "grok2": "(vLLM's Grok-2 tiktoken tokenizer)",
}


def verify_engine_args(args: EngineArgs) -> None:
    """Checks that need only the arguments: every value pagedllm cannot honour is an error here, named, never
    silently ignored. (Checks that need the model or the device are in ``EngineConfig.build``.)"""
    if args.config_format not in ("auto", "hf"):
        raise ValueError(f"config_format={args.config_format!r} is not supported (Mistral's params.json is not read);"
                         " use 'auto' or 'hf' with the checkpoint's config.json." if args.config_format == "mistral"
                         else f"config_format must be 'auto', 'hf' or 'mistral', got {args.config_format!r}.")
    if args.safetensors_load_strategy not in SAFETENSORS_LOAD_STRATEGIES:
        raise ValueError(f"safetensors_load_strategy must be one of {SAFETENSORS_LOAD_STRATEGIES}, got "
                         f"{args.safetensors_load_strategy!r}" + (" (vLLM's torchao strategy is for torchao "
                                                                  "checkpoints, which pagedllm does not load)."
                                                                  if args.safetensors_load_strategy == "torchao"
                                                                  else "."))
    workers = args.max_parallel_loading_workers
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"max_parallel_loading_workers must be a positive integer or None, got {workers!r}.")
    location = args.pt_load_map_location
    if not (isinstance(location, str) or (isinstance(location, dict)
                                          and all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in location.items()))):
        raise ValueError(f"pt_load_map_location must be a device string or a dict of device strings, got "
                         f"{location!r}.")
    if args.model_impl not in ("auto", "vllm"):
        raise ValueError("model_impl='transformers' (vLLM's Transformers backend for architectures it lacks) is not "
                         "supported: pagedllm runs its own implementation of each supported architecture "
                         "(model_impl='auto' or 'vllm')." if args.model_impl == "transformers"
                         else f"model_impl must be 'auto', 'vllm' or 'transformers', got {args.model_impl!r}.")
    if args.tokenizer_mode == "mistral":
        raise ValueError("tokenizer_mode='mistral' is not supported yet (no mistral_common tokenizer); "
                         "use 'auto', 'hf' or 'slow'.")
    # vLLM's "hf" (its HF tokenizer, fast when there is one) is what "auto" always is here: no mistral_common.
    if args.tokenizer_mode in _VLLM_TOKENIZER_MODES:
        raise ValueError(f"tokenizer_mode={args.tokenizer_mode!r} {_VLLM_TOKENIZER_MODES[args.tokenizer_mode]} is not "
                         f"supported: pagedllm loads the folder's HF tokenizer (tokenizer_mode 'auto', 'hf' or "
                         f"'slow').")
    if args.tokenizer_mode not in ("auto", "hf", "slow"):
        raise ValueError(f"tokenizer_mode must be 'auto', 'hf' or 'slow', got {args.tokenizer_mode!r}.")
    # Checks of one value each, here so that `pagedllm serve` fails before it starts an engine.
    if args.load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got {args.load_format!r}.")
    if args.block_size <= 0 or args.block_size & (args.block_size - 1):
        raise ValueError(f"block_size must be a positive power of two, got {args.block_size}.")
    if not 0.0 < args.gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {args.gpu_memory_utilization}.")
    if isinstance(args.optimization_level, bool) or args.optimization_level not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization_level must be one of 0, 1, 2, 3 (vLLM's -O0 .. -O3), got "
                         f"{args.optimization_level!r}.")
    if args.performance_mode != "balanced":
        raise ValueError(f"performance_mode={args.performance_mode!r} is not supported yet; use 'balanced' (the "
                         f"default), and tune with cudagraph_capture_sizes / max_num_seqs / max_num_batched_tokens."
                         if args.performance_mode in PERFORMANCE_MODES else
                         f"performance_mode must be one of {', '.join(map(repr, PERFORMANCE_MODES))}, got "
                         f"{args.performance_mode!r}.")
    if args.max_model_len is not None and args.max_model_len <= 0 and args.max_model_len != -1:
        raise ValueError(f"max_model_len must be positive, or -1 / 'auto' (the longest that fits in memory), got "
                         f"{args.max_model_len}.")
    if args.max_num_batched_tokens is not None and args.max_num_batched_tokens < 1:
        raise ValueError(f"max_num_batched_tokens must be >= 1, got {args.max_num_batched_tokens}.")
    if args.load_format == "bitsandbytes" and (args.quantization or "").lower() != "bitsandbytes":
        raise ValueError(f"BitsAndBytes load format only supports 'bitsandbytes' quantization, but got "
                         f"{args.quantization}.")
    if args.kv_offloading_backend != "native":
        raise ValueError(f"kv_offloading_backend={args.kv_offloading_backend!r} is not supported by pagedllm (LMCache is "
                         f"not integrated); use 'native', pagedllm's own CPU tier of the prefix cache."
                         if args.kv_offloading_backend == "lmcache" else
                         f"kv_offloading_backend must be 'native' or 'lmcache', got {args.kv_offloading_backend!r}.")
    if args.kv_transfer_config is not None:
        size = kv_transfer_offloading_gib(args.kv_transfer_config)
        if args.kv_offloading_size is None:       # given both, kv_offloading_size sets cpu_bytes_to_use, as vLLM's
            args.kv_offloading_size = size
    if args.kv_offloading_size is not None:
        if isinstance(args.kv_offloading_size, bool) or not args.kv_offloading_size > 0:
            raise ValueError(f"kv_offloading_size must be a positive number of GiB, got {args.kv_offloading_size!r}.")
        if not args.enable_prefix_caching:
            raise ValueError("kv_offloading_size is a CPU tier of the prefix cache: it needs enable_prefix_caching.")
    if args.swap_space is not None and args.swap_space < 0:
        raise ValueError(f"swap_space must be >= 0, got {args.swap_space}.")
    _verify_cpu_kv_memory(args)
    if args.preemption_mode not in (None, "swap", "recompute"):
        raise ValueError(f"preemption_mode must be 'swap', 'recompute' or None (by cost), "
                         f"got {args.preemption_mode!r}.")
    if args.preemption_mode == "swap" and not args.swap_space:
        raise ValueError("preemption_mode='swap' needs swap space: set swap_space (GiB of CPU memory per GPU) > 0.")
    if args.cpu_offload_gb < 0:
        raise ValueError(f"cpu_offload_gb must be >= 0, got {args.cpu_offload_gb}.")
    backend = args.distributed_executor_backend
    if backend == "external_launcher":
        raise ValueError("distributed_executor_backend='external_launcher' is not supported yet: external launchers "
                         "are not supported yet, only the in-process executor ('uni'), the multi-process one ('mp', "
                         "one worker process per rank on this host) and Ray ('ray', one actor per rank).")
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        raise ValueError("distributed_executor_backend='ray' needs Ray, which is not installed: "
                         "pip install 'pagedllm[ray]' (or pip install 'ray>=2.9').")
    if backend not in (None, "uni", "mp", "ray"):
        raise ValueError(f"distributed_executor_backend must be one of None, 'uni', 'mp', 'ray', "
                         f"'external_launcher', got {backend!r}.")
    if args.tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {args.tensor_parallel_size}.")
    if args.pipeline_parallel_size < 1:
        raise ValueError(f"pipeline_parallel_size must be >= 1, got {args.pipeline_parallel_size}.")
    if args.tensor_parallel_size > 1 and backend == "uni":
        raise ValueError(f"distributed_executor_backend='uni' runs the model in this process only: it needs "
                         f"tensor_parallel_size=1 (got {args.tensor_parallel_size}); use 'mp'.")
    if args.pipeline_parallel_size > 1 and backend == "uni":
        raise ValueError(f"distributed_executor_backend='uni' runs the model in this process only: it needs "
                         f"pipeline_parallel_size=1 (got {args.pipeline_parallel_size}); use 'mp'.")
    if args.pipeline_parallel_size > 1 and args.async_scheduling:
        raise ValueError("async_scheduling is not supported with pipeline_parallel_size > 1 yet (the first stage "
                         "would need the last stage's sampled token before the host has it); leave it unset.")
    if args.data_parallel_size != 1:
        raise ValueError(f"data_parallel_size={args.data_parallel_size} is not supported yet; use 1 ("
                         f"{_DATA_PARALLEL_INSTEAD}).")
    if args.enable_expert_parallel:
        raise ValueError("enable_expert_parallel is not supported yet: mixture-of-experts layers are split by tensor "
                         "parallel (each rank holds a slice of every expert); leave it unset.")
    for name, choices in (("task", ("auto", "generate") + _EMBED_TASKS + _CLASSIFY_TASKS + _REWARD_TASKS),
                          ("runner", ("auto", "generate", "pooling"))):
        value = getattr(args, name)
        if value in _UNSUPPORTED_TASKS:
            raise ValueError(f"{name}={value!r}: transcription and draft models are not supported yet; use "
                             f"{name} in {choices}.")
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
    if args.convert in _UNSUPPORTED_CONVERT:
        raise ValueError(f"convert={args.convert!r} is not supported yet; use convert in {CONVERT_CHOICES}.")
    if args.convert not in CONVERT_CHOICES:
        raise ValueError(f"convert must be one of {CONVERT_CHOICES}, got {args.convert!r}.")
    requested = requested_runner(args)
    if requested is not None and (args.runner not in ("auto", requested)):
        raise ValueError(f"task={args.task!r} contradicts runner={args.runner!r}.")
    if args.convert in ("embed", "classify", "reward") and args.runner == "generate":
        raise ValueError(f"convert={args.convert!r} makes a pooling model: it contradicts runner='generate'.")
    if requested_convert(args) is None and args.task in _EMBED_TASKS + _CLASSIFY_TASKS + _REWARD_TASKS:
        raise ValueError(f"task={args.task!r} contradicts convert={args.convert!r}.")
    if args.kv_cache_dtype in _UNSUPPORTED_KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype={args.kv_cache_dtype!r} is not supported yet; use one of "
                         f"{', '.join(map(repr, KV_CACHE_DTYPES))}.")
    if args.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {', '.join(map(repr, KV_CACHE_DTYPES))}, "
                         f"got {args.kv_cache_dtype!r}.")
    if args.calculate_kv_scales and args.kv_cache_dtype.startswith("fp8"):
        raise ValueError(f"calculate_kv_scales=True is not supported yet with kv_cache_dtype={args.kv_cache_dtype!r} "
                         f"(scales computed from a warm-up batch): the FP8 KV cache is stored with k_scale = v_scale "
                         f"= 1.0, vLLM's scales without calibration; leave calculate_kv_scales unset (False).")
    if args.prefix_caching_hash_algo != "sha256":
        raise ValueError(f"prefix_caching_hash_algo={args.prefix_caching_hash_algo!r} is not supported yet; "
                         f"use 'sha256'.")
    _verify_lora_args(args)
    if args.scheduling_policy not in ("fcfs", "priority"):
        raise ValueError(f"scheduling_policy must be 'fcfs' or 'priority', got {args.scheduling_policy!r}.")
    if args.hf_overrides is not None and not (isinstance(args.hf_overrides, dict) or callable(args.hf_overrides)):
        raise ValueError(f"hf_overrides must be a dict of config fields or a function of the config, got "
                         f"{args.hf_overrides!r}.")
    if args.max_logprobs < -1:
        raise ValueError(f"max_logprobs must be -1 (no cap) or >= 0, got {args.max_logprobs}.")
    if not (args.hf_token is None or isinstance(args.hf_token, bool)
            or (isinstance(args.hf_token, str) and args.hf_token.strip())):
        raise ValueError("hf_token must be a token (a non-empty string), True (the saved login) or None.")
    if isinstance(args.ignore_patterns, str):
        args.ignore_patterns = [args.ignore_patterns]
    if args.ignore_patterns is not None and not (isinstance(args.ignore_patterns, (list, tuple))
                                                  and all(isinstance(p, str) for p in args.ignore_patterns)):
        raise ValueError(f"ignore_patterns must be a file pattern or a list of them, got {args.ignore_patterns!r}.")
    if not isinstance(args.worker_extension_cls, str):
        raise ValueError(f"worker_extension_cls must be the class's import path (module.Class), got "
                         f"{type(args.worker_extension_cls).__name__}.")
    if args.logprobs_mode not in LOGPROBS_MODES:
        raise ValueError(f"logprobs_mode must be one of {', '.join(LOGPROBS_MODES)}, got {args.logprobs_mode!r}.")
    if args.max_num_seqs is not None and args.max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {args.max_num_seqs}.")
    if args.num_gpu_blocks_override is not None and args.num_gpu_blocks_override < 1:
        raise ValueError(f"num_gpu_blocks_override must be >= 1 (a number of KV-cache blocks), got "
                         f"{args.num_gpu_blocks_override}.")
    if args.max_num_seqs_per_request is not None and args.max_num_seqs_per_request < 0:
        raise ValueError(f"max_num_seqs_per_request must be >= 0 (0: no cap), got {args.max_num_seqs_per_request}.")
    if args.long_prefill_token_threshold is not None and args.long_prefill_token_threshold < 0:
        raise ValueError(f"long_prefill_token_threshold must be >= 0 (0: no cap), got "
                         f"{args.long_prefill_token_threshold}.")
    if args.max_num_partial_prefills != 1:
        raise ValueError(f"max_num_partial_prefills is not supported yet (concurrent partial prefills); use 1 "
                         f"(got {args.max_num_partial_prefills}).")
    if args.stream_interval < 1:
        raise ValueError(f"stream_interval must be >= 1, got {args.stream_interval}.")
    if not 1 <= args.max_long_partial_prefills <= args.max_num_partial_prefills:     # vLLM's SchedulerConfig rule
        raise ValueError(f"max_long_partial_prefills ({args.max_long_partial_prefills}) must be >= 1 and <= "
                         f"max_num_partial_prefills ({args.max_num_partial_prefills}).")
    if args.speculative_config is not None:
        spec = speculative_settings(args.speculative_config)
        if args.enable_prompt_embeds:
            raise ValueError("enable_prompt_embeds is not supported with speculative_config yet by pagedllm (the "
                             "drafts are proposed from token ids); use one of them.")
        if args.logits_processors:       # (vLLM's rule and words)
            raise ValueError("Custom logits processors are not supported when speculative decoding is enabled.")
        if args.pipeline_parallel_size > 1:
            raise ValueError("speculative_config is not supported with pipeline_parallel_size > 1 yet by pagedllm; "
                             "use tensor_parallel_size, or leave speculative_config out.")
        draft_tp = spec.draft_tensor_parallel_size
        if draft_tp is not None and draft_tp != args.tensor_parallel_size:
            raise ValueError(f"speculative_config draft_tensor_parallel_size={draft_tp} is not supported yet by "
                             f"pagedllm with tensor_parallel_size={args.tensor_parallel_size}: the draft model runs "
                             f"split over the target's ranks; leave it out (or set it to "
                             f"{args.tensor_parallel_size}).")
        if args.async_scheduling:
            raise ValueError("async_scheduling is not supported with speculative_config yet by pagedllm (the "
                             "drafts are proposed from the tokens the host has); leave async_scheduling unset.")
        if args.logprobs_mode.startswith("processed"):
            raise ValueError(f"logprobs_mode={args.logprobs_mode!r} is not supported with speculative_config yet by "
                             f"pagedllm (verified drafts get raw values); use raw_logprobs or raw_logits.")
        args.speculative_config = spec
    if isinstance(args.structured_outputs_config, StructuredOutputsConfig):
        args.structured_outputs_config = dataclasses.asdict(args.structured_outputs_config)
    _verify_structured_outputs_config(args.structured_outputs_config)
    if args.limit_mm_per_prompt is not None and not (
            isinstance(args.limit_mm_per_prompt, dict) and all(isinstance(k, str) and isinstance(v, (int, dict))
                                                               for k, v in args.limit_mm_per_prompt.items())):
        raise ValueError(f"limit_mm_per_prompt must be a dict of modality -> count (e.g. {{'image': 0}}), got "
                         f"{args.limit_mm_per_prompt!r}.")
    if args.mm_processor_kwargs is not None and not (
            isinstance(args.mm_processor_kwargs, dict) and all(isinstance(k, str) for k in args.mm_processor_kwargs)):
        raise ValueError(f"mm_processor_kwargs must be a dict of the processor's settings (e.g. {{'max_pixels': "
                         f"1003520}}), got {args.mm_processor_kwargs!r}.")
    if not isinstance(args.allowed_local_media_path, str):
        raise ValueError(f"allowed_local_media_path must be a path string, got {args.allowed_local_media_path!r}.")
    if not isinstance(args.reasoning_parser, str):
        raise ValueError(f"reasoning_parser must be a string, got {args.reasoning_parser!r}.")
    if args.reasoning_parser:
        get_reasoning_parser(args.reasoning_parser)     # an unknown name fails here, naming the known ones
    reasoning_parser_name(args)
    profiler_settings(args.profiler_config)       # raises on what it cannot honour
    cuda_graph_sizes(args)                        # raises on what it cannot honour
    if not isinstance(args.generation_config, str):
        raise ValueError(f"generation_config must be 'auto' (the model's generation_config.json), 'vllm' (none) or "
                         f"a folder, got {args.generation_config!r}.")
    override = args.override_generation_config
    if override is not None:
        if not isinstance(override, dict):
            raise ValueError(f"override_generation_config must be a dict (JSON object), got {override!r}.")
        unused = sorted(set(override) - set(GENERATION_CONFIG_SAMPLING_KEYS) - {"do_sample"})
        if unused:
            raise ValueError(f"override_generation_config: {', '.join(unused)} is not a sampling default pagedllm "
                             f"reads; use {', '.join(GENERATION_CONFIG_SAMPLING_KEYS)} or do_sample (HF's names: "
                             f"max_new_tokens, not max_tokens).")
    if args.kv_cache_memory_gb is not None and args.kv_cache_memory_bytes is not None:
        raise ValueError("Give kv_cache_memory_gb or kv_cache_memory_bytes, not both.")
    for name in ("kv_cache_memory_gb", "kv_cache_memory_bytes"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}.")
    if args.disable_custom_kernels:
        if args.attention_backend == "triton":
            raise ValueError("attention_backend='triton' contradicts disable_custom_kernels=True (the Triton "
                             "attention kernels are pagedllm's own).")
        for name in ("triton_gemv", "pdl"):
            if getattr(args, name):
                raise ValueError(f"{name}=True contradicts disable_custom_kernels=True.")


# vLLM's LoRAConfig choices.
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LORA_DTYPES = ("auto", "float16", "bfloat16")


_GRAPH_SIZE_KEYS = ("cudagraph_capture_sizes", "max_cudagraph_capture_size")
# vLLM's compilation-config key for LoRA engines: capture each graph size with and without the adapters' deltas.
_SPECIALIZE_LORA_KEY = "cudagraph_specialize_lora"
# vLLM's compilation-config CUDAGraphMode: which steps replay a graph. pagedllm's two kinds map onto it: full graphs
# of decode-only steps (FULL_DECODE_ONLY) and piecewise graphs (attention eager) of the other steps, and of decode
# steps when there are no full ones (PIECEWISE). FULL_AND_PIECEWISE is both, pagedllm's (and vLLM's) default.
CUDAGRAPH_MODES = ("NONE", "PIECEWISE", "FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE")
_CUDAGRAPH_MODE_KEY = "cudagraph_mode"


def cudagraph_mode(args: EngineArgs) -> str | None:
    """compilation_config's ``cudagraph_mode`` (vLLM's CUDAGraphMode, by name, any case), None when not given.
    vLLM's FULL (full graphs of mixed steps too, which pagedllm's attention does not capture) is FULL_AND_PIECEWISE
    with a warning, as vLLM downgrades it for attention backends without full graphs of mixed batches."""
    cc = args.compilation_config
    value = cc.get(_CUDAGRAPH_MODE_KEY) if isinstance(cc, dict) else None
    if value is None:
        return None
    if isinstance(value, CUDAGraphMode):
        value = value.name
    mode = value.upper() if isinstance(value, str) else value
    if mode not in CUDAGRAPH_MODES:
        raise ValueError(f"compilation_config's {_CUDAGRAPH_MODE_KEY} must be one of {', '.join(CUDAGRAPH_MODES)}, "
                         f"got {value!r}.")
    return "FULL_AND_PIECEWISE" if mode == "FULL" else mode


def _cuda_graph_kinds(args: EngineArgs) -> tuple[bool, bool]:
    """(decode graphs, piecewise graphs) as compilation_config's cudagraph_mode and piecewise_cuda_graphs ask; a
    contradiction between the two is an error."""
    mode = cudagraph_mode(args)
    raw = args.compilation_config.get(_CUDAGRAPH_MODE_KEY) if mode is not None else None
    if raw is CUDAGraphMode.FULL or (isinstance(raw, str) and raw.upper() == "FULL"):
        logger.warning("compilation_config cudagraph_mode=FULL: pagedllm's attention captures full graphs of decode "
                       "steps only; running FULL_AND_PIECEWISE (piecewise graphs for steps with prompt tokens).")
    piecewise = _switch(args.piecewise_cuda_graphs, envs.PAGEDLLM_PIECEWISE_GRAPHS)
    if mode in (None, "NONE"):
        return True, piecewise
    wants_piecewise = mode != "FULL_DECODE_ONLY"
    if args.piecewise_cuda_graphs is not None and args.piecewise_cuda_graphs != wants_piecewise:
        raise ValueError(f"piecewise_cuda_graphs={args.piecewise_cuda_graphs} contradicts compilation_config "
                         f"cudagraph_mode={mode}; give one of the two.")
    return mode != "PIECEWISE", wants_piecewise


def cuda_graph_sizes(args: EngineArgs) -> tuple[list[int] | None, int | None]:
    """The CUDA-graph sizes asked for: (sorted sizes or None, the largest size or None), from the engine arguments
    or vLLM's compilation_config dict (its graph-size keys; torch.compile itself is not used here, so a mode or
    level other than 0 is an error, as is any other key). Raises ValueError on a bad or contradictory value."""
    given = {name: getattr(args, name) for name in _GRAPH_SIZE_KEYS}
    cc = args.compilation_config
    if cc not in (None, 0, {}):
        if not isinstance(cc, dict):
            raise ValueError(f"compilation_config is not supported yet: pagedllm does not use torch.compile (CUDA "
                             f"graphs are switched by enforce_eager and piecewise_cuda_graphs, sized by "
                             f"cudagraph_capture_sizes / max_cudagraph_capture_size); use None or 0, or a dict of "
                             f"those two keys (got {cc!r}). vLLM's optimization levels are optimization_level "
                             f"(-O0 .. -O3), not compilation_config.")
        known = _GRAPH_SIZE_KEYS + (_SPECIALIZE_LORA_KEY, _CUDAGRAPH_MODE_KEY)
        other = sorted(k for k in cc if k not in known and not (k in ("level", "mode") and cc[k] == 0))
        if other:
            raise ValueError(f"compilation_config is not supported yet beyond {', '.join(known)}: "
                             f"pagedllm does not use torch.compile (got {', '.join(map(str, other))}).")
        for name in _GRAPH_SIZE_KEYS:
            if name in cc and cc[name] is not None:
                if given[name] is not None and given[name] != cc[name]:
                    raise ValueError(f"{name} is given twice with different values: {given[name]!r} and "
                                     f"compilation_config's {cc[name]!r}.")
                given[name] = cc[name]
    sizes, largest = given["cudagraph_capture_sizes"], given["max_cudagraph_capture_size"]
    if sizes is not None:
        if isinstance(sizes, int) and not isinstance(sizes, bool):
            sizes = [sizes]
        if not isinstance(sizes, (list, tuple)) or not sizes or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes):
            raise ValueError(f"cudagraph_capture_sizes must be a non-empty list of positive integers, got "
                             f"{sizes!r}.")
        sizes = sorted(set(sizes))
    if largest is not None and (isinstance(largest, bool) or not isinstance(largest, int) or largest < 1):
        raise ValueError(f"max_cudagraph_capture_size must be a positive integer, got {largest!r}.")
    if sizes is not None and largest is not None and sizes[-1] != largest:
        raise ValueError(f"max_cudagraph_capture_size={largest} but cudagraph_capture_sizes goes up to {sizes[-1]}: "
                         f"give one of the two, or make the largest size the maximum (as vLLM requires).")
    if sizes is not None and largest is None:
        largest = sizes[-1]
    return sizes, largest


def num_experts(hf_config) -> int:
    """A mixture-of-experts config's expert count (Qwen's ``num_experts``, Mixtral's ``num_local_experts``); 0 for a
    dense model."""
    return int(getattr(hf_config, "num_experts", None) or getattr(hf_config, "num_local_experts", None) or 0)


def attention_shape(hf_config) -> tuple[int, int, int]:
    """The paged attention's ``(query heads, KV heads, head dim)``, the whole model's (before tensor parallel).
    Multi-head latent attention (DeepSeek-V2 / V3: ``kv_lora_rank`` in the config) caches the compressed latent: one
    KV head of ``kv_lora_rank + qk_rope_head_dim`` (576 for V2 / V3) that every query head attends, MQA-like, and
    that every tensor-parallel rank holds whole (model/models/deepseek.py)."""
    heads = hf_config.num_attention_heads
    if getattr(hf_config, "kv_lora_rank", None) is not None:
        return heads, 1, hf_config.kv_lora_rank + hf_config.qk_rope_head_dim
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    return heads, getattr(hf_config, "num_key_value_heads", None) or heads, head_dim


def cuda_graphs_off(args: EngineArgs, on_gpu: bool, pooling: bool, quant_config: Any = None) -> str | None:
    """Why this engine captures no CUDA graph, in words, or None where worker/model_runner.py captures them (the
    one rule both the runner and the graph-size check below follow). ``quant_config``: the resolved quantization
    (a format whose kernels cannot be captured says so)."""
    return ("this engine runs on the CPU" if not on_gpu else "enforce_eager=True" if args.enforce_eager
            else "optimization_level=0 (-O0)" if args.optimization_level == 0
            else "compilation_config cudagraph_mode=NONE" if cudagraph_mode(args) == "NONE"
            else "a pooling model runs eagerly" if pooling
            else "cpu_offload_gb streams weights eagerly" if args.cpu_offload_gb
            else quant_config.eager_reason() if quant_config is not None else None)


def cudagraph_specialize_lora(args: EngineArgs) -> bool | None:
    """compilation_config's ``cudagraph_specialize_lora`` (vLLM's; True there by default), None when not given."""
    cc = args.compilation_config
    value = cc.get(_SPECIALIZE_LORA_KEY) if isinstance(cc, dict) else None
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"compilation_config's {_SPECIALIZE_LORA_KEY} must be true or false, got {value!r}.")
    return value


def total_cpu_memory() -> int | None:
    """This host's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _verify_cpu_kv_memory(args: EngineArgs) -> None:
    """vLLM's check of the swap space against the host's memory (CacheConfig.verify_with_parallel_config): above 70%
    of it an error, above 40% a warning, instead of an allocator failure (or the host out of memory) at start-up; the
    swap space is per rank (tensor x pipeline parallel). The prefix cache's CPU tier (kv_offloading_size, over all
    ranks), which vLLM allocates without such a check, is an error only where it cannot fit (with the swap space, more
    than the host's memory), a warning above 70%."""
    swap_gib = (args.swap_space or 0) * args.tensor_parallel_size * args.pipeline_parallel_size
    tier_gib = args.kv_offloading_size or 0
    total = total_cpu_memory()
    if not (swap_gib or tier_gib) or not total:
        return
    total_gib = total / (1 << 30)
    if swap_gib:
        msg = f"{swap_gib:.2f} GiB out of the {total_gib:.2f} GiB total CPU memory is allocated for the swap space."
        if swap_gib > 0.7 * total_gib:
            raise ValueError("Too large swap space. " + msg)
        if swap_gib > 0.4 * total_gib:
            logger.warning("Possibly too large swap space. %s", msg)
    if tier_gib:
        usage = swap_gib + tier_gib
        msg = (f"{usage:.2f} GiB out of the {total_gib:.2f} GiB total CPU memory is allocated for the prefix cache's "
               f"CPU tier (kv_offloading_size){' and the swap space' if swap_gib else ''}.")
        if usage > total_gib:
            raise ValueError("Too large kv_offloading_size. " + msg)
        if usage > 0.7 * total_gib:
            logger.warning("Possibly too large kv_offloading_size. %s", msg)


def verify_graph_sizes(args: EngineArgs, on_gpu: bool, runner_type: str, quant_config: Any = None) -> None:
    """CUDA-graph settings are honoured only where graphs are captured: elsewhere they are an error that says why,
    not a setting that does nothing (checked again once the quantization is resolved)."""
    sizes, largest = cuda_graph_sizes(args)
    specialize = cudagraph_specialize_lora(args)
    if specialize is not None and not args.enable_lora:
        raise ValueError(f"compilation_config's {_SPECIALIZE_LORA_KEY} only applies with enable_lora=True; leave it "
                         f"unset.")
    mode = cudagraph_mode(args)
    if largest is None and specialize is None and mode in (None, "NONE"):
        return
    asked = ("cudagraph_capture_sizes" if sizes is not None else "max_cudagraph_capture_size" if largest is not None
             else f"compilation_config's {_SPECIALIZE_LORA_KEY}" if specialize is not None
             else f"compilation_config's {_CUDAGRAPH_MODE_KEY}={mode}")
    why = cuda_graphs_off(args, on_gpu, runner_type == "pooling", quant_config)
    if why:
        raise ValueError(f"{asked}: no CUDA graphs are captured here ({why}); leave it unset.")


def _verify_lora_args(args: EngineArgs) -> None:
    if isinstance(args.lora_dtype, torch.dtype):      # vLLM takes a torch.dtype too
        args.lora_dtype = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(args.lora_dtype,
                                                                                     str(args.lora_dtype))
    if args.max_lora_rank not in MAX_LORA_RANKS:
        raise ValueError(f"max_lora_rank ({args.max_lora_rank}) must be one of {MAX_LORA_RANKS}.")
    if args.max_loras < 1:
        raise ValueError(f"max_loras ({args.max_loras}) must be >= 1.")
    if args.max_cpu_loras is not None and args.max_cpu_loras < args.max_loras:
        raise ValueError(f"max_cpu_loras ({args.max_cpu_loras}) must be >= max_loras ({args.max_loras})")
    if args.lora_dtype not in LORA_DTYPES:
        raise ValueError(f"lora_dtype must be one of {LORA_DTYPES}, got {args.lora_dtype!r}.")
    if args.enable_lora_bias:
        raise ValueError("enable_lora_bias=True is not supported yet by pagedllm (LoRA biases); adapters with "
                         "bias='none' run without it.")
    if not args.enable_lora:
        for name in ("max_loras", "max_lora_rank", "max_cpu_loras", "lora_dtype", "fully_sharded_loras"):
            if getattr(args, name) != getattr(EngineArgs, name):
                raise ValueError(f"{name} only applies with enable_lora=True (got {name}={getattr(args, name)!r}).")
        return
    if args.fully_sharded_loras and args.tensor_parallel_size > 1:
        raise ValueError("fully_sharded_loras=True is not supported yet by pagedllm: with tensor parallel an "
                         "adapter's B is cut like column-parallel weights and its A like row-parallel ones (vLLM's "
                         "default); leave it False.")


_STRUCTURED_OUTPUTS_BACKENDS = ("auto", "xgrammar")
_STRUCTURED_OUTPUTS_FLAGS = ("disable_fallback", "disable_any_whitespace", "disable_additional_properties")


def _verify_structured_outputs_config(config: dict | None) -> None:
    if config is None:
        return
    if not isinstance(config, dict):
        raise ValueError(f"structured_outputs_config must be a dict (JSON object) or a StructuredOutputsConfig, got "
                         f"{type(config).__name__}.")
    for key, value in config.items():
        if key == "backend":
            if value not in _STRUCTURED_OUTPUTS_BACKENDS:
                raise ValueError(f"structured_outputs_config backend {value!r} is not supported: pagedllm's "
                                 f"structured output runs on xgrammar ('auto' or 'xgrammar').")
        elif key in _STRUCTURED_OUTPUTS_FLAGS:
            if not isinstance(value, bool):
                raise ValueError(f"structured_outputs_config {key} must be true or false, got {value!r}.")
        elif key == "reasoning_parser":
            if not isinstance(value, str):
                raise ValueError(f"structured_outputs_config reasoning_parser must be a string, got {value!r}.")
            if value:
                get_reasoning_parser(value)
        elif key == "enable_in_reasoning":
            if not isinstance(value, bool):
                raise ValueError(f"structured_outputs_config {key} must be true or false, got {value!r}.")
        elif key == "reasoning_parser_plugin":
            if value:
                raise ValueError("structured_outputs_config reasoning_parser_plugin is not supported (no plugin "
                                 "parsers); use a built-in --reasoning-parser.")
        else:
            raise ValueError(f"structured_outputs_config has no field {key!r}; pagedllm takes backend, "
                             f"{', '.join(_STRUCTURED_OUTPUTS_FLAGS)}, reasoning_parser, enable_in_reasoning.")


class CUDAGraphMode(enum.Enum):
    """vLLM's CUDAGraphMode (``from vllm.config import CUDAGraphMode``): compilation_config's cudagraph_mode by
    member as by name (cudagraph_mode() reads the name)."""
    NONE = "NONE"
    PIECEWISE = "PIECEWISE"
    FULL = "FULL"
    FULL_DECODE_ONLY = "FULL_DECODE_ONLY"
    FULL_AND_PIECEWISE = "FULL_AND_PIECEWISE"


class CompilationConfig(dict):
    """vLLM's ``CompilationConfig`` (``from vllm.config import CompilationConfig``;
    ``LLM(compilation_config=CompilationConfig(cudagraph_capture_sizes=[1, 2, 4]))``): its keyword arguments, kept as
    the dict compilation_config takes, so the engine checks them as it checks the dict (what pagedllm cannot honour,
    a torch.compile mode or pass, fails there naming it)."""

    def __init__(self, **fields: Any) -> None:
        super().__init__(fields)


@dataclass
class StructuredOutputsConfig:
    """vLLM's ``StructuredOutputsConfig`` (``from vllm.config import ...``; ``LLM(structured_outputs_config=...)``):
    the engine's structured-output settings, checked as it is built. The engine reads it as the dict of its fields
    (a dict or ``--structured-outputs-config`` JSON gives the same)."""
    backend: str = "auto"
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    reasoning_parser: str = ""
    reasoning_parser_plugin: str = ""
    enable_in_reasoning: bool = False

    def __post_init__(self):
        _verify_structured_outputs_config(dataclasses.asdict(self))


def reasoning_parser_name(args: EngineArgs) -> str:
    """The engine's reasoning parser: reasoning_parser, else structured_outputs_config's ("" for none). vLLM copies
    the first into the second; two different names are an error here rather than one silently winning."""
    own = args.reasoning_parser or ""
    nested = (args.structured_outputs_config or {}).get("reasoning_parser") or ""
    if own and nested and own != nested:
        raise ValueError(f"reasoning_parser={own!r} and structured_outputs_config reasoning_parser={nested!r} "
                         f"differ; give one of them.")
    return own or nested


def requested_runner(args: EngineArgs) -> str | None:
    """"generate" or "pooling" when runner / task / convert name one, else None (the checkpoint decides)."""
    if args.task in _EMBED_TASKS + _CLASSIFY_TASKS + _REWARD_TASKS or args.convert in ("embed", "classify", "reward"):
        return "pooling"
    if args.task == "generate":
        return "generate"
    return None if args.runner == "auto" else args.runner


def requested_convert(args: EngineArgs) -> str | None:
    """"embed" or "classify" when task / convert name one (vLLM maps task embed -> convert embed, classify and
    score -> convert classify); "auto" for neither; None when task and convert disagree."""
    from_task = "embed" if args.task in _EMBED_TASKS else "classify" if args.task in _CLASSIFY_TASKS else \
        "reward" if args.task in _REWARD_TASKS else "auto"
    convert = args.convert if args.convert != "none" else "auto"
    if from_task != "auto" and convert not in ("auto", from_task):
        return None
    return convert if convert != "auto" else from_task


def _resolve_runner(args: EngineArgs, model: "ResolvedModel") -> str:
    runner = args.runner if args.runner != "auto" else requested_runner(args)
    arch = ", ".join(getattr(model.hf_config, "architectures", None) or ["?"])
    convert = requested_convert(args)
    if convert == "classify" and not model.is_classifier:
        raise ValueError(f"convert='classify' (task='classify' / 'score') needs a sequence-classification "
                         f"checkpoint (*ForSequenceClassification); this model ({arch}) has none, and converting a "
                         f"model into a classifier with a new head is not supported yet. A causal LM whose answer "
                         f"tokens are the classes (Qwen3-Reranker's recipe) converts with hf_overrides="
                         f"{{'classifier_from_token': ['no', 'yes'], 'method': 'from_2_way_softmax'}}.")
    if convert == "reward" and not model.is_token_classifier:
        raise ValueError(f"convert='reward' runs a reward checkpoint (Qwen2ForRewardModel, "
                         f"Qwen2ForProcessRewardModel, a *ForTokenClassification); this model ({arch}) is none, and "
                         f"converting a model into a reward model (its hidden states as rewards) is not supported "
                         f"yet. A *ForSequenceClassification reward model scores with LLM.classify().")
    if convert == "embed" and model.is_classifier:
        raise ValueError(f"This model ({arch}) is a sequence classifier: converting it into an embedding model "
                         f"(convert='embed', task='embed') is not supported yet; use LLM.classify() / LLM.score() "
                         f"(runner='pooling').")
    if runner is None:
        return model.default_runner
    if runner == "generate" and not model.can_generate:
        kind = ("a sequence classifier" if model.is_classifier else "an encoder or a bare decoder")
        use = ("classify with it" if model.is_classifier else "embed with it")
        raise ValueError(f"This model ({arch}) has no language-model head ({kind}): it cannot generate text. Use "
                         f"runner='pooling' (--runner pooling) to {use}.")
    return runner


def json_arg(text: str) -> Any:
    """A JSON flag's value (--limit-mm-per-prompt '{"image": 1}'). Not JSON: an argparse error that says so, and for
    the KEY=VALUE form older vLLM took ('image=1'; vLLM 0.24 refuses it too) the JSON to give instead."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    pairs = [item.partition("=") for item in str(text).split(",")]
    if all(key.strip() and eq and value.strip() for key, eq, value in pairs):
        def value_of(v: str) -> Any:
            try:
                return json.loads(v)
            except json.JSONDecodeError:
                return v
        as_json = json.dumps({key.strip(): value_of(value.strip()) for key, _, value in pairs})
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON: older vLLM's KEY=VALUE form is not accepted (vLLM "
                                         f"0.24 refuses it too); give JSON: '{as_json}'.")
    raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON; give a JSON object, e.g. '{{\"key\": 1}}'.")


def _none_for_optional_flags(group) -> None:
    """vLLM's optional_type: an engine flag whose field may be None takes "None" (or "") for None (its help lists
    None among the choices: --preemption-mode {recompute,swap,None}); here "None" was an invalid int, an unknown
    quantization method, or a tokenizer named "None"."""
    optional = {f.name for f in dataclasses.fields(EngineArgs) if "None" in str(f.type) and "bool" not in str(f.type)}
    for action in group._group_actions:
        if action.dest not in optional or action.nargs is not None:      # lists and switches: as they are
            continue
        convert = action.type or str

        def parse(text: str, convert=convert) -> Any:
            return None if text in ("", "None") else convert(text)
        parse.__name__ = getattr(convert, "__name__", "value")       # argparse's "invalid int value" names it
        action.type = parse
        if action.choices is not None:
            action.choices = [*action.choices, None]


def attention_backend_name(name: Any) -> Any:
    """pagedllm's name for vLLM's attention backend names (TRITON_ATTN is 'triton'; any case); one of vLLM's backends
    that pagedllm lacks is a ValueError that says what to use. Other names (pagedllm's own, registered ones) as
    given."""
    if not isinstance(name, str) or name.upper() not in _VLLM_ATTENTION_BACKENDS.keys() | \
            _VLLM_ATTENTION_BACKENDS_NOT_SUPPORTED:
        return name
    if name.upper() in _VLLM_ATTENTION_BACKENDS:
        return _VLLM_ATTENTION_BACKENDS[name.upper()]
    raise ValueError(f"attention_backend={name!r} is a vLLM attention backend that pagedllm does not have; use "
                     f"'triton' (pagedllm's Triton kernels, as vLLM's TRITON_ATTN) or 'torch' (PyTorch, any device).")


def _backend_of_attention_config(config: Any, backend: str | None) -> str | None:
    """attention_backend from vLLM's attention_config ({"backend": "TRITON_ATTN"}); other keys, or a backend that
    contradicts attention_backend, are a ValueError."""
    if not isinstance(config, dict):
        raise ValueError(f"attention_config must be a dict (JSON object) of vLLM's AttentionConfig fields, got "
                         f"{config!r}.")
    other = sorted(k for k in config if k != "backend")
    if other:
        raise ValueError(f"attention_config: {', '.join(map(str, other))} is not supported (it tunes vLLM's "
                         f"FlashAttention / FlashInfer kernels, which pagedllm does not have); only backend is.")
    given = attention_backend_name(config.get("backend"))
    if given is not None and backend is not None and given != backend:
        raise ValueError(f"attention_config backend {config['backend']!r} contradicts attention_backend={backend!r}; "
                         f"give one of the two.")
    return given if given is not None else backend


def _attention_backend_flag(text: str) -> str:
    try:
        return attention_backend_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _optimization_level_flag(text: str) -> int:
    """-O's value: a level; a compilation config (-O '{...}', vLLM's form before 0.12) says where it goes now."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an optimization level (0-3): -O is --optimization-level (vLLM 0.12 on); give a "
            f"compilation config as -cc / --compilation-config JSON.") from None


def _json_or_str(text: str) -> str | dict:
    """A JSON object ('{"cuda:1": "cuda:0"}') or the text itself ('cpu')."""
    text = str(text).strip()
    return json.loads(text) if text.startswith("{") else text


def _json_or_int(text: str) -> int | dict:
    """--compilation-config 0 / -cc '{"mode": 0}' (vLLM's forms: a mode number or the JSON config)."""
    text = str(text).strip()
    return int(text) if text.lstrip("-").isdigit() else json.loads(text)


def normalize_cli_flags(argv: Sequence[str]) -> list[str]:
    """``--max_model_len 2048`` and ``--max_model_len=2048`` as ``--max-model-len`` (vLLM's FlexibleArgumentParser):
    tutorials spell flags both ways. Values are left alone, and everything after ``--``. A JSON flag's dotted keys
    (vLLM's too): ``--limit-mm-per-prompt.image 2``, ``--hf-overrides.text_config.num_hidden_layers 2``,
    ``-cc.mode 0`` (or ``-O.mode 0``), ``--speculative-config.method ngram``; ``KEY+ v`` appends to a list
    (``KEY+=a,b`` two items); they are merged into the same flag's JSON given on the line, over its keys."""
    out: list[str] = []
    dotted: dict[str, dict] = {}
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out.extend(argv[i:])
            break
        if arg.startswith(("-O.", "-cc.")):      # vLLM's short forms of the compilation config's dotted keys
            arg = "--compilation-config" + arg[arg.index("."):]
        if arg.startswith("--") and "_" in arg.partition("=")[0].partition(".")[0]:
            key, eq, value = arg.partition("=")
            base, dot, rest = key.partition(".")
            arg = base.replace("_", "-") + dot + rest + eq + value
        flag, eq, value = arg.partition("=")
        if flag.startswith("--") and "." in flag and flag.partition(".")[0] in _DOTTED_CONFIG_FLAGS:
            if not eq and i + 1 < len(argv):
                i += 1
                value = argv[i]
            base, _, path = flag.partition(".")
            _set_dotted(dotted.setdefault(base, {}), path, value)
            i += 1
            continue
        out.append(arg)
        i += 1
    for base, fields in dotted.items():
        given: dict = {}
        kept: list[str] = []
        j = 0
        while j < len(out) and out[j] != "--":      # the flag's own JSON on the line: the dotted keys go over it
            flag, eq, value = out[j].partition("=")
            if flag == base or (base == "--compilation-config" and flag == "-cc"):
                if not eq and j + 1 < len(out):
                    j += 1
                    value = out[j]
                try:
                    loaded = json.loads(value)
                except json.JSONDecodeError:
                    loaded = None
                if not isinstance(loaded, dict):
                    raise ValueError(f"{base} {value!r} cannot be combined with {base}.KEY flags: give it as a JSON "
                                     f"object, or use only the dotted keys.")
                given = loaded
            else:
                kept.append(out[j])
            j += 1
        out = kept + out[j:]
        out[len(out) if "--" not in out else out.index("--"):0] = [base, json.dumps(_merged(given, fields))]
    return out


def _set_dotted(target: dict, path: str, text: str) -> None:
    """One ``--flag.a.b VALUE``: ``target["a"]["b"]`` = the value as JSON, else the text; ``a.b+``: appended (a
    ``+=`` value's comma-separated items each)."""
    append = path.endswith("+")
    keys = [k.replace("-", "_") for k in path.rstrip("+").split(".")]
    if not all(keys):
        raise ValueError(f"Malformed dotted config flag key {path!r} (expected --flag.key VALUE).")
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ValueError(f"Dotted config flag key {path!r}: {key!r} is already given a value, not an object.")

    def parse(item: str) -> Any:
        try:
            return json.loads(item)
        except json.JSONDecodeError:
            return item
    if append:
        items = target.setdefault(keys[-1], [])
        if not isinstance(items, list):
            raise ValueError(f"Dotted config flag key {path!r}: {keys[-1]!r} is already given a value, not a list.")
        items.extend(parse(item) for item in text.split(","))
    else:
        target[keys[-1]] = parse(text)


def _merged(base: dict, over: dict) -> dict:
    """``base`` with ``over``'s keys on top, nested objects merged key by key."""
    merged = dict(base)
    for key, value in over.items():
        merged[key] = (_merged(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict)
                       else value)
    return merged


# The engine flags under vLLM's group titles (its config classes), so `serve --help=ModelConfig` shows what vLLM's
# does; pagedllm's own kernel and CPU switches have a group of their own. A flag in no list stays in "EngineArgs".
ENGINE_FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "ModelConfig": ("model", "runner", "convert", "task", "tokenizer", "tokenizer_mode", "trust_remote_code", "dtype",
                    "seed", "hf_config_path", "allowed_local_media_path", "revision", "code_revision",
                    "tokenizer_revision", "max_model_len", "quantization", "enforce_eager", "max_logprobs",
                    "logprobs_mode", "disable_sliding_window", "disable_cascade_attn", "skip_tokenizer_init",
                    "enable_prompt_embeds", "config_format", "hf_token", "hf_overrides", "pooler_config",
                    "logits_processors", "generation_config", "override_generation_config", "model_impl",
                    "enable_sleep_mode"),
    "LoadConfig": ("load_format", "download_dir", "safetensors_load_strategy", "ignore_patterns", "use_tqdm_on_load",
                   "pt_load_map_location"),
    "AttentionConfig": ("attention_backend", "attention_config"),
    "StructuredOutputsConfig": ("reasoning_parser",),
    "ParallelConfig": ("distributed_executor_backend", "pipeline_parallel_size", "tensor_parallel_size",
                       "data_parallel_size", "enable_expert_parallel", "max_parallel_loading_workers",
                       "disable_custom_all_reduce", "worker_extension_cls"),
    "CacheConfig": ("block_size", "gpu_memory_utilization", "kv_cache_memory_bytes", "kv_cache_memory_gb",
                    "swap_space", "preemption_mode", "kv_cache_dtype", "calculate_kv_scales", "num_gpu_blocks_override",
                    "enable_prefix_caching", "prefix_caching_hash_algo", "cpu_offload_gb", "kv_offloading_size",
                    "kv_offloading_backend"),
    "KVTransferConfig": ("kv_transfer_config",),
    "MultiModalConfig": ("limit_mm_per_prompt", "mm_processor_kwargs"),
    "LoRAConfig": ("enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras", "lora_dtype", "enable_lora_bias",
                   "fully_sharded_loras"),
    "SchedulerConfig": ("max_num_batched_tokens", "max_num_seqs", "max_num_partial_prefills",
                        "max_long_partial_prefills", "long_prefill_token_threshold", "max_num_seqs_per_request",
                        "scheduling_policy", "enable_chunked_prefill", "disable_chunked_mm_input", "async_scheduling",
                        "stream_interval"),
    "CompilationConfig": ("cudagraph_capture_sizes", "max_cudagraph_capture_size"),
    "VllmConfig": ("speculative_config", "compilation_config", "optimization_level", "performance_mode",
                   "structured_outputs_config", "profiler_config"),
    "DeviceConfig": ("device",),
    "pagedllm": ("disable_custom_kernels", "triton_gemv", "pdl", "piecewise_cuda_graphs", "cpu_onednn", "cpu_threads"),
    "ObservabilityConfig": ("disable_log_stats",),
}


def _split_into_config_groups(parser: argparse.ArgumentParser, group) -> None:
    """Move the engine flags of ``group`` into groups titled as vLLM's (ENGINE_FLAG_GROUPS), in that order."""
    group_of = {dest: title for title, dests in ENGINE_FLAG_GROUPS.items() for dest in dests}
    by_title: dict[str, list[argparse.Action]] = {}
    for action in group._group_actions:
        by_title.setdefault(group_of.get(action.dest, "EngineArgs"), []).append(action)
    parser._action_groups.remove(group)
    for title in [*ENGINE_FLAG_GROUPS, "EngineArgs"]:
        if title in by_title:
            new_group = parser.add_argument_group(title)
            new_group._group_actions.extend(by_title[title])


# The JSON-object flags that take vLLM's dotted keys (--limit-mm-per-prompt.image 2).
_DOTTED_CONFIG_FLAGS = ("--structured-outputs-config", "--pooler-config", "--limit-mm-per-prompt",
                        "--compilation-config", "--speculative-config", "--hf-overrides",
                        "--override-generation-config", "--profiler-config", "--default-chat-template-kwargs",
                        "--attention-config", "--kv-transfer-config")


class FlexibleArgumentParser(argparse.ArgumentParser):
    """The parser of every pagedllm command: flags in snake_case are accepted as their kebab-case names; a vLLM
    engine flag pagedllm lacks is named as such among the unrecognized arguments."""

    help_keyword: str | None = None     # vLLM's --help=<keyword> given to this command

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        if args is None:
            args = sys.argv[1:]
        try:
            args = normalize_cli_flags(args)
        except ValueError as e:          # a malformed dotted config key: a usage error, as argparse's own
            self.error(str(e))
        if self._subparsers is None:     # a command's own parser: --help=KEYWORD is --help showing what matches
            keywords = [a.partition("=")[2] for a in args if a.startswith("--help=")]
            if keywords:
                self.help_keyword = keywords[-1]
                args = ["--help" if a.startswith("--help=") else a for a in args]
        if self._subparsers is None and "--config" not in self._option_string_actions:
            args = self._with_config_file(args)
        return super().parse_known_args(args, namespace)

    def _with_config_file(self, args: list[str]) -> list[str]:
        """vLLM's ``--config FILE``: the YAML file's ``key: value`` pairs become flags, placed before the command
        line's own so that a flag given on both wins from the command line (argparse keeps the last)."""
        where = [i for i, a in enumerate(args) if a == "--config" or a.startswith("--config=")]
        if not where:
            return args
        if len(where) > 1:
            self.error("--config given more than once.")
        i = where[0]
        if args[i] == "--config" and (i + 1 == len(args) or args[i + 1].startswith("-")):
            self.error("--config needs the path of a YAML file.")
        path = args[i + 1] if args[i] == "--config" else args[i].partition("=")[2]
        rest = args[:i] + args[i + (2 if args[i] == "--config" else 1):]
        import yaml
        try:
            with open(path) as f:
                config = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as e:
            self.error(f"--config {path}: {e}")
        if not isinstance(config, dict):
            self.error(f"--config {path}: the file must be a YAML mapping of flag names to values.")
        flags: list[str] = []
        for key, value in config.items():
            flag = "--" + str(key).replace("_", "-")
            action = self._option_string_actions.get(flag)
            if isinstance(value, bool) and action is not None and action.nargs == 0:
                if value:
                    flags.append(flag)
                elif "--no-" + flag[2:] in self._option_string_actions:
                    flags.append("--no-" + flag[2:])
            elif isinstance(value, list):
                flags += [flag, *(json.dumps(v) if isinstance(v, dict) else str(v) for v in value)]
            elif value is not None:
                flags += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
        first_flag = next((j for j, a in enumerate(rest) if a.startswith("-")), len(rest))
        return rest[:first_flag] + normalize_cli_flags(flags) + rest[first_flag:]

    def format_help(self) -> str:
        """vLLM's ``--help=KEYWORD``: ``all`` (everything), a group's title (``ModelConfig``, ``Frontend``; any case),
        else the flags whose names contain the keyword (``max-model-len``, ``max``; ``_`` or ``-``). ``listgroup``
        lists the groups (older vLLM's spelling), ``page`` is everything (no pager)."""
        keyword = (self.help_keyword or "").lower().replace("_", "-")
        if not keyword or keyword in ("all", "page"):
            return super().format_help()
        groups = [g for g in self._action_groups if g.title and g._group_actions and g.title != "positional arguments"]
        if keyword == "listgroup":
            return "Available argument groups:\n" + "".join(f"  - {g.title}\n" for g in groups)
        formatter = self._get_formatter()
        group = next((g for g in groups if g.title.lower() == keyword), None)
        if group is not None:
            formatter.start_section(group.title)
            formatter.add_text(group.description)
            formatter.add_arguments(group._group_actions)
            formatter.end_section()
            return formatter.format_help()
        matched = [a for g in self._action_groups for a in g._group_actions
                   if any(keyword in opt.lower() for opt in a.option_strings)]
        if matched:
            formatter.start_section(f"Arguments matching '{keyword}'")
            formatter.add_arguments(matched)
            formatter.end_section()
        else:
            formatter.add_text(f"No group or arguments matching '{keyword}'.\nUse '--help=listgroup' to see the "
                               "groups or '--help=all' to see all the arguments.")
        return formatter.format_help()

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            message = f"unrecognized arguments: {' '.join(extras)}"
            flags = [a.partition("=")[0] for a in extras if a.startswith("--")]
            # a dotted key (--kernel-config.enable_flashinfer_autotune) is its flag's
            names = [f[2:].partition(".")[0].replace("-", "_") for f in flags]
            self.error(message + _vllm_args_note(flags, names, "flag"))
        return namespace


def parse_human_readable_int(value: int | str, allow_auto: bool = True) -> int:
    """vLLM's human-readable integers (``--max-model-len 32k``): a plain integer, or a number with a decimal suffix
    k / m / g (x 1000, 1000^2, 1000^3: '25.6k' = 25600) or a binary one K / M / G (x 1024, 1024^2, 1024^3; whole
    numbers only: '32K' = 32768). "auto" is -1 when ``allow_auto`` (max_model_len's)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected an integer or a string like '32k', got {value!r}")
    if isinstance(value, int):
        return value
    text = value.strip()
    if allow_auto and text.lower() == "auto":
        return -1
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgKMG])", text)
    if match is None:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer or a number with a suffix k/m/g (x 1000) or K/M/G (x 1024), "
                             f"got {value!r}") from None
    number, suffix = match.groups()
    if suffix.islower():
        return int(float(number) * 1000 ** ("kmg".index(suffix) + 1))
    if "." in number:
        raise ValueError(f"a binary suffix ({suffix}) takes a whole number, got {value!r}; did you mean "
                         f"{number}{suffix.lower()}?")
    return int(number) * 1024 ** ("KMG".index(suffix) + 1)


def _parse_len(text: str) -> int:
    """``--max-model-len``'s type: parse_human_readable_int, its error as argparse's."""
    try:
        return parse_human_readable_int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _weights_per_token(hf) -> float:
    """Roughly how many weights each token of a step multiplies through: every layer's attention projections and
    MLP (a mixture of experts: its routed experts per token and its shared experts); embeddings and the LM head
    (which runs on the sampled rows only) left out. From the config alone, for sizing defaults."""
    text = getattr(hf, "text_config", None) or hf
    get = lambda name, default=0: getattr(text, name, None) or default      # noqa: E731
    # (ChatGLM's config names: num_layers, multi_query_group_num, ffn_hidden_size.)
    hidden, layers = get("hidden_size"), get("num_hidden_layers") or get("num_layers")
    heads = get("num_attention_heads", 1)
    kv_heads = get("num_key_value_heads") or get("multi_query_group_num", heads)
    head_dim = get("head_dim", hidden // max(heads, 1))
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    routed = get("num_experts_per_tok")
    if routed and (get("num_local_experts") or get("num_experts") or get("n_routed_experts")):
        per_expert = get("moe_intermediate_size") or get("intermediate_size", 4 * hidden)
        shared = get("n_shared_experts") * per_expert + get("shared_expert_intermediate_size")
        mlp = 3 * hidden * (routed * per_expert + shared)
    else:
        mlp = 3 * hidden * (get("intermediate_size") or get("ffn_hidden_size", 4 * hidden))
    return float(layers * (attention + mlp))


# A served step's prompt work: tokens x weights per token (above) at most this, ~32 TFLOP (~45 ms of an H100's
# bf16 GEMMs). Measured on an H100 (docs/perf.md, session 37), serve_workload.py at 100 streams, two runs each:
# Qwen2.5-7B (6.5 G weights a token) at 2048 tokens a step 8,805 / 8,805 tok/s, ITL P99 27.7 / 28.9 ms, against
# 8,569 / 8,242 tok/s, 36.2 / 39.7 ms at vLLM's 8192; Qwen2.5-1.5B (1.3 G) the other way: 8192 15,550-17,355 tok/s
# against 14,635-15,690 at 2048. A big step stalls every running stream for its whole prefill; a small model's
# 8192-token step is short, and more, smaller steps cost it more host time than it saves.
_SERVED_STEP_WORK = 1.6e13


def served_tokens_per_step(hf, tensor_parallel_size: int = 1) -> int:
    """The served default of max_num_batched_tokens on a GPU: the largest power of two from 2048 (vLLM's floor)
    to 8192 (vLLM's served value on big GPUs) whose prompt work stays under _SERVED_STEP_WORK per GPU (tensor
    parallel splits each token's weights)."""
    per_gpu = _weights_per_token(hf) / max(1, tensor_parallel_size)
    tokens = 8192
    while tokens > 2048 and tokens * per_gpu > _SERVED_STEP_WORK:
        tokens //= 2
    return tokens


def _human_int(text: str) -> int:
    """The type of vLLM's other human-readable flags (--max-num-batched-tokens 8k, --kv-cache-memory-bytes 4G)."""
    try:
        return parse_human_readable_int(text, allow_auto=False)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


@dataclass
class ResolvedModel:
    """Where the model's files are, after hub download / GGUF conversion (see model/loader.py)."""
    model_dir: str                 # folder with config.json (+ weights unless dummy)
    hf_config: Any                 # transformers.PretrainedConfig
    tokenizer_path: str | None     # folder/id the tokenizer loads from
    gguf_file: str | None = None   # original .gguf file, when the model came from one
    generation_config: dict = field(default_factory=dict)
    # What the checkpoint is for when runner/task are "auto": "pooling" for encoders and sentence-transformers
    # checkpoints (modules.json), else "generate"; encoders have no language-model head (can_generate False).
    default_runner: str = "generate"
    can_generate: bool = True
    # sentence-transformers' Transformer config (``sentence_config``: sentence_bert_config.json, or an older name):
    # its max_seq_length is the longest input it embeds, so the derived max_model_len (as vLLM).
    max_seq_length: int | None = None
    sentence_config: str | None = None
    # sentence-transformers' do_lower_case (the same file): text inputs are lower-cased before tokenizing, as its
    # Transformer module and vLLM do.
    do_lower_case: bool = False
    # A *ForSequenceClassification checkpoint: its pooler runs the classification head (classify; score when it
    # has one label: a cross-encoder).
    is_classifier: bool = False
    # A head on every token (*ForTokenClassification, Qwen2ForRewardModel): token_classify only (LLM.reward).
    is_token_classifier: bool = False
    # The width of an embedding where sentence-transformers Dense modules project the pooled hidden state (their
    # last out_features); None: the hidden size.
    embedding_size: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    """vLLM's ``llm.llm_engine.model_config``, read-only: the resolved model facts scripts written for vLLM read
    (``max_model_len``, ``dtype``, ``hf_config``, ``get_vocab_size()``, ...)."""
    model: str
    tokenizer: str | None
    served_model_name: str
    max_model_len: int
    dtype: torch.dtype
    hf_config: Any
    runner_type: str
    seed: int | None
    max_logprobs: int
    trust_remote_code: bool
    quantization: str | None
    generation_config: str

    @property
    def hf_text_config(self) -> Any:
        return getattr(self.hf_config, "text_config", None) or self.hf_config

    def get_vocab_size(self) -> int:
        return self.hf_text_config.vocab_size

    def get_hidden_size(self) -> int:
        return self.hf_text_config.hidden_size

    def get_num_layers(self, parallel_config: "ParallelConfig | None" = None) -> int:
        """The model's layers (vLLM passes ``parallel_config`` for a pipeline stage's share: with pipeline
        parallelism the stages' split is not told here, a ValueError)."""
        if parallel_config is not None and parallel_config.pipeline_parallel_size > 1:
            raise ValueError("get_num_layers(parallel_config) with pipeline_parallel_size > 1: a stage's layer count "
                             "is not exposed; call get_num_layers() for the model's.")
        config = self.hf_text_config
        return getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers")

    @property
    def architectures(self) -> list[str]:
        return list(getattr(self.hf_config, "architectures", None) or [])

    # vLLM's KV-cache shape getters (scripts size caches with them); MLA models cache one latent head.
    def get_head_size(self) -> int:
        return attention_shape(self.hf_text_config)[2]

    def get_total_num_kv_heads(self) -> int:
        return attention_shape(self.hf_text_config)[1]

    def get_num_kv_heads(self, parallel_config: "ParallelConfig") -> int:
        """KV heads per tensor-parallel rank (at least 1: fewer heads than ranks are replicated)."""
        return max(1, self.get_total_num_kv_heads() // parallel_config.tensor_parallel_size)

    def get_num_attention_heads(self, parallel_config: "ParallelConfig") -> int:
        return self.hf_text_config.num_attention_heads // parallel_config.tensor_parallel_size


@dataclass(frozen=True)
class SchedulerConfig:
    """vLLM's ``vllm_config.scheduler_config``, read-only: the batch limits custom logits processors and scripts read
    (``max_num_seqs`` sizes a processor's per-row state)."""
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool
    async_scheduling: bool
    policy: str
    long_prefill_token_threshold: int


@dataclass(frozen=True)
class CacheConfig:
    """vLLM's ``vllm_config.cache_config``, read-only. ``num_gpu_blocks`` is the KV cache's block count once the
    engine has sized it (None before), on the CPU too, as vLLM's CPU backend reports it; ``num_cpu_blocks`` the
    swap space's."""
    block_size: int
    gpu_memory_utilization: float
    cache_dtype: str
    enable_prefix_caching: bool
    swap_space: float | None
    cpu_offload_gb: float
    kv_cache_memory_bytes: int | None
    calculate_kv_scales: bool
    num_gpu_blocks: int | None
    num_cpu_blocks: int | None
    # vLLM's CacheConfig fields as given (labels of cache_config_info too): the prefix cache's CPU tier in GiB over
    # all ranks (kv_offloading_size, or a kv_transfer_config OffloadingConnector's cpu_bytes_to_use) and its backend.
    num_gpu_blocks_override: int | None = None
    prefix_caching_hash_algo: str = "sha256"
    kv_offloading_size: float | None = None
    kv_offloading_backend: str = "native"


@dataclass(frozen=True)
class ParallelConfig:
    """vLLM's ``vllm_config.parallel_config``, read-only."""
    tensor_parallel_size: int
    pipeline_parallel_size: int
    data_parallel_size: int
    world_size: int
    distributed_executor_backend: str


def _verify_pipeline_parallel(args: EngineArgs, hf, device: torch.device) -> None:
    """Enough devices for every rank, and a layer for every pipeline stage."""
    tp_size, pp_size = args.tensor_parallel_size, args.pipeline_parallel_size
    world_size = tp_size * pp_size
    multi_gpu = device.type == "cuda" and world_size > 1
    if multi_gpu and envs.PAGEDLLM_TEST_SHARE_ONE_GPU:
        # Test-only: every rank on cuda:0 over gloo, whose collectives a CUDA graph cannot capture.
        if not (args.enforce_eager or args.optimization_level == 0):
            raise ValueError("PAGEDLLM_TEST_SHARE_ONE_GPU=1 (test only: every rank on cuda:0 over gloo) needs "
                             "enforce_eager=True: gloo's collectives cannot be captured in CUDA graphs.")
    elif multi_gpu and args.distributed_executor_backend != "ray" and world_size > torch.cuda.device_count():
        # (Ray: the ranks may sit on other machines; the Ray executor checks the cluster's GPUs instead.)
        raise ValueError(f"World size ({world_size} = tensor_parallel_size {tp_size} x pipeline_parallel_size "
                         f"{pp_size}) is larger than the number of available GPUs ({torch.cuda.device_count()}): "
                         f"every rank needs a GPU of its own.")
    layers = getattr(hf, "num_hidden_layers", None)
    if pp_size > 1 and layers is not None:
        # Before any worker starts: every stage needs a layer, and a PAGEDLLM_PP_LAYER_PARTITION /
        # VLLM_PP_LAYER_PARTITION must fit the model (each stage reads it again when it builds its layers).
        pp_layer_range(layers, 0, pp_size)


def pp_layer_range(num_layers: int, pp_rank: int, pp_size: int, partition: str | None = None) -> tuple[int, int]:
    """[start, end) of the decoder layers that pipeline stage ``pp_rank`` of ``pp_size`` holds.

    vLLM's rule: ``num_layers // pp_size`` each, and the remainder one more each on the stages just before the last
    (the last stage also runs the final norm and the LM head). ``partition`` (PAGEDLLM_PP_LAYER_PARTITION, else
    vLLM's VLLM_PP_LAYER_PARTITION; e.g. "3,5") gives each stage's count explicitly. Here, below the distributed
    layer, so the config can check a partition before any worker starts (parallel_state.get_pp_layer_range)."""
    if pp_size == 1:
        return 0, num_layers
    name = "PAGEDLLM_PP_LAYER_PARTITION"
    if partition is None:
        from pagedllm import envs
        partition = envs.PAGEDLLM_PP_LAYER_PARTITION
        if not partition:
            name, partition = "VLLM_PP_LAYER_PARTITION", envs.VLLM_PP_LAYER_PARTITION    # vLLM's name
    if partition:
        try:
            counts = [int(x) for x in partition.split(",")]
        except ValueError:
            counts = []
        if len(counts) != pp_size or sum(counts) != num_layers or min(counts) < 1:
            raise ValueError(f"{name}={partition!r} must list {pp_size} positive layer counts "
                             f"(one per pipeline stage) summing to num_hidden_layers ({num_layers}).")
    else:
        if num_layers < pp_size:
            raise ValueError(f"num_hidden_layers ({num_layers}) must be >= pipeline_parallel_size ({pp_size}): "
                             f"every pipeline stage needs at least one layer.")
        counts = [num_layers // pp_size] * pp_size
        for i in range(2, num_layers % pp_size + 2):
            counts[-i] += 1
    start = sum(counts[:pp_rank])
    return start, start + counts[pp_rank]


def verify_tensor_parallel(size: int, hf) -> None:
    """Tensor parallel splits heads, KV heads and the MLP evenly over the ranks (vLLM's wording); the vocabulary is
    padded to equal blocks where the ranks do not divide it (VocabParallelEmbedding), as vLLM pads it."""
    if size == 1:
        return
    heads = getattr(hf, "num_attention_heads", None)
    if heads is None:
        return      # not a decoder with heads: the loader rejects it by its architecture
    if heads % size:
        raise ValueError(f"Total number of attention heads ({heads}) must be divisible by tensor parallel size "
                         f"({size}).")
    _, kv_heads, _ = attention_shape(hf)
    if kv_heads >= size and kv_heads % size:
        raise ValueError(f"Total number of key-value heads ({kv_heads}) must be divisible by tensor parallel size "
                         f"({size}).")
    if kv_heads < size and size % kv_heads:
        raise ValueError(f"Tensor parallel size ({size}) must be divisible by the total number of key-value heads "
                         f"({kv_heads}) when it is larger.")
    intermediate = getattr(hf, "intermediate_size", 0) or 0
    if intermediate % size:
        raise ValueError(f"intermediate_size ({intermediate}) must be divisible by tensor parallel size ({size}).")


@dataclass
class EngineConfig:
    args: EngineArgs
    model: ResolvedModel
    dtype: torch.dtype
    device: torch.device
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    attention_backend: str
    # Kernel and graph switches, resolved from the arguments and their PAGEDLLM_* defaults (envs.py).
    triton_gemv: bool = True
    pdl: bool = True
    # Which CUDA graphs are captured (where any are): full graphs of decode-only steps, piecewise graphs of the
    # other steps (and of decode steps without full graphs); compilation_config's cudagraph_mode picks them.
    decode_cuda_graphs: bool = True
    piecewise_cuda_graphs: bool = True
    # enable_lora: each graph size also captured without the adapters' deltas (compilation_config's
    # cudagraph_specialize_lora, True unless it says false, as vLLM's default).
    cudagraph_specialize_lora: bool = True
    cpu_onednn: bool = True
    # torch's intra-op threads in the worker on the CPU (ModelRunner sets them); None on the GPU: torch's default.
    cpu_threads: int | None = None
    # vLLM's VLLM_CPU_OMP_THREADS_BIND as CPU ids, one tuple per rank (rank = pp_rank * tp_size + tp_rank): the
    # runner binds its process to them and, where cpu_threads_from_bind, runs one thread per CPU. None: no binding.
    cpu_bind: tuple[tuple[int, ...], ...] | None = None
    cpu_threads_from_bind: bool = False
    # The KV cache's size when it is given (kv_cache_memory_gb/_bytes; always on the CPU); None on the GPU means
    # what gpu_memory_utilization leaves after the profiling forward.
    kv_cache_memory_bytes: int | None = None
    # Where that size came from, in words for the start-up log ("kv_cache_memory_gb=2", "the CPU default of 4 GiB").
    kv_cache_memory_source: str | None = None
    # "generate" or "pooling": a pooling engine runs each prompt whole in one step (no chunked prefill: an encoder
    # attends both ways, and mean pooling needs every hidden state), with no prefix caching and no sampling.
    runner_type: str = "generate"
    enable_chunked_prefill: bool = True
    # The parsed QuantizationConfig (pagedllm/model/quantization) of the quantization argument and the checkpoint,
    # set by the engine layer (create_engine_config); None: dense weights.
    quant_config: Any = None
    # speculative_config method "draft_model": the draft's ResolvedModel (set by create_engine_config); None otherwise.
    draft_model: Any = None
    # dtype="float16" on the CPU: the weights are held in fp16 (fbgemm-packed, half fp32's bytes to read per token)
    # and everything is computed in ``dtype`` (float32); pagedllm/model/quantization/cpu_fp16.py.
    cpu_fp16_weights: bool = False
    # Fairness caps of the scheduler, resolved (0: no cap): tokens of one prompt per step, sequences of one request.
    long_prefill_token_threshold: int = 0
    max_num_seqs_per_request: int = 0
    # The KV cache's blocks and the swap space's, set by the engine core once it has sized them (cache_config).
    num_gpu_blocks: int | None = None
    num_cpu_blocks: int | None = None

    @property
    def is_pooling(self) -> bool:
        return self.runner_type == "pooling"

    @property
    def default_token_pooling_type(self) -> str:
        """The per-token tasks' pooling without a pooler_config saying: vLLM's STEP for process reward models (all
        rows until step_tag_id is set), else ALL."""
        return _default_token_pooling_type(self.hf_config)

    @property
    def token_pooling_type(self) -> str:
        """The per-token tasks' pooling: pooler_config's, else the model's default."""
        user = self.args.pooler_config
        return user.tok_pooling_type if user is not None and user.tok_pooling_type else \
            self.default_token_pooling_type

    @property
    def token_row_width(self) -> int:
        """The columns of a per-token pooling row (what returned_token_ids index): the labels of a model with a
        head, else the hidden size."""
        return _token_row_width(self.model)

    def verify_dimensions(self, params: PoolingParams) -> None:
        """A request's ``dimensions``: a Matryoshka model's, one it was trained for, within its embedding width."""
        _verify_dimensions(params, self.model, self.served_model_name)

    @property
    def pooling_tasks(self) -> tuple[str, ...]:
        """The pooling tasks this engine runs (vLLM's supported tasks): an embedder's, or a sequence classifier's,
        which scores pairs only with one label (a cross-encoder, as vLLM)."""
        if not self.is_pooling:
            return ()
        if self.model.is_token_classifier:
            return ("token_classify",)
        if self.model.is_classifier:
            return (("classify", "score") if getattr(self.hf_config, "num_labels", 0) == 1 else ("classify",)) + \
                ("token_classify",)
        return ("embed", "encode", "score", "token_embed")

    @property
    def supported_tasks(self) -> tuple[str, ...]:
        """vLLM's ``get_supported_tasks()``: ("generate",) for a generative model, else its pooling tasks."""
        return self.pooling_tasks if self.is_pooling else ("generate",)

    @property
    def pooling_task(self) -> str | None:
        """pooler_config's task: the model's default pooling task (None: the model's own)."""
        pooler = self.args.pooler_config
        return pooler.task if pooler is not None else None

    @property
    def late_interaction(self) -> bool:
        """Scoring by ColBERT's MaxSim over token embeddings (vLLM's late interaction): pooler_config task
        token_embed."""
        return self.pooling_task == "token_embed"

    def verify_pooling_task(self, task: str | None) -> None:
        """vLLM's errors for a pooling task this model does not run (None: the model's own)."""
        if task is None or task in self.pooling_tasks:
            return
        if self.model.is_token_classifier:
            raise ValueError(f"Task {task} is not supported by this model: it has a head on every token (a token "
                             f"classifier or reward model); use LLM.reward() or LLM.encode(pooling_task="
                             f"'token_classify') (/pooling).")
        if task == "score":
            raise ValueError("Scoring API is only enabled for num_labels == 1.")
        if task == "token_embed":
            raise ValueError("Task token_embed is not supported by this model: it is a sequence classification "
                             "model; use pooling_task='token_classify' for its head on every token.")
        if task == "token_classify":
            raise ValueError("Task token_classify is not supported by this model: it is an embedding model (no "
                             "classification head); use pooling_task='token_embed' for per-token embeddings.")
        if self.model.is_classifier:
            api = {"embed": "Embedding API", "encode": "LLM.encode() without pooling_task='classify'"}.get(task, task)
            raise ValueError(f"{api} is not supported by this model: it is a sequence classification model; use "
                             f"LLM.classify() (/classify) or, with one label, LLM.score() (/score, /rerank).")
        raise ValueError("Classification API is not supported by this model: it is an embedding model; use "
                         "LLM.embed() (/v1/embeddings) or LLM.score() (/score, /rerank), or a "
                         "*ForSequenceClassification checkpoint to classify.")

    @property
    def async_scheduling(self) -> bool:
        flag = self.args.async_scheduling
        if self.is_pooling:      # a pooling request ends with its one step: nothing to overlap with
            return False
        if self.args.pipeline_parallel_size > 1:     # the stages overlap by the engine core's batch queue instead
            return False
        if self.args.speculative_config is not None:    # drafts are proposed from the host's tokens
            return False
        return self.device.type == "cuda" if flag is None else bool(flag)

    def verify_priority(self, priority: int) -> None:
        """A request's priority orders the queue only under scheduling_policy='priority' (vLLM's rule): under
        'fcfs' a non-zero priority is an error, so the scheduler's (priority, arrival) order is arrival order."""
        if priority != 0 and self.args.scheduling_policy != "priority":
            raise ValueError(f"Got priority {priority} but Priority scheduling is not enabled "
                             f"(scheduling_policy='priority' enables it).")

    @property
    def tensor_parallel_size(self) -> int:
        return self.args.tensor_parallel_size

    @property
    def pipeline_parallel_size(self) -> int:
        return self.args.pipeline_parallel_size

    @property
    def world_size(self) -> int:
        return self.args.tensor_parallel_size * self.args.pipeline_parallel_size

    @property
    def executor_backend(self) -> str:
        """"uni" (the model in this process), "mp" (a worker process per rank: tensor x pipeline parallel; the
        default when there are several) or "ray" (a Ray actor per rank, asked for; one actor at size 1, as vLLM)."""
        if self.args.distributed_executor_backend == "ray":
            return "ray"
        return "mp" if self.world_size > 1 else (self.args.distributed_executor_backend or "uni")

    @property
    def hf_config(self):
        return self.model.hf_config

    @property
    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
                               max_model_len=self.max_model_len, enable_chunked_prefill=self.enable_chunked_prefill,
                               async_scheduling=self.async_scheduling, policy=self.args.scheduling_policy,
                               long_prefill_token_threshold=self.long_prefill_token_threshold)

    @property
    def cache_config(self) -> CacheConfig:
        args = self.args
        return CacheConfig(block_size=self.block_size, gpu_memory_utilization=args.gpu_memory_utilization,
                           cache_dtype=args.kv_cache_dtype,
                           enable_prefix_caching=bool(args.enable_prefix_caching) and not self.is_pooling,
                           swap_space=args.swap_space, cpu_offload_gb=args.cpu_offload_gb,
                           kv_cache_memory_bytes=self.kv_cache_memory_bytes,
                           calculate_kv_scales=bool(args.calculate_kv_scales), num_gpu_blocks=self.num_gpu_blocks,
                           num_cpu_blocks=self.num_cpu_blocks, num_gpu_blocks_override=args.num_gpu_blocks_override,
                           prefix_caching_hash_algo=args.prefix_caching_hash_algo,
                           kv_offloading_size=args.kv_offloading_size,
                           kv_offloading_backend=args.kv_offloading_backend)

    @property
    def speculative_config(self) -> "SpeculativeConfig | None":
        """vLLM's ``vllm_config.speculative_config``: the speculation the engine runs (method, num_speculative_tokens,
        prompt_lookup_min / _max, model, ...), None without."""
        spec = self.args.speculative_config
        return speculative_settings(spec) if spec is not None else None

    @property
    def parallel_config(self) -> ParallelConfig:
        return ParallelConfig(tensor_parallel_size=self.tensor_parallel_size,
                              pipeline_parallel_size=self.pipeline_parallel_size, data_parallel_size=1,
                              world_size=self.world_size, distributed_executor_backend=self.executor_backend)

    @property
    def model_config(self) -> ModelConfig:
        args = self.args
        quant = getattr(self.quant_config, "name", None) if self.quant_config is not None else args.quantization
        if self.quant_config is not None and not self.quant_config.is_checkpoint_method:
            quant = "gguf" if self.model.gguf_file is not None else None
        return ModelConfig(model=args.model, tokenizer=args.tokenizer or args.model,
                           served_model_name=self.served_model_name, max_model_len=self.max_model_len,
                           dtype=self.dtype, hf_config=self.hf_config, runner_type=self.runner_type, seed=args.seed,
                           max_logprobs=args.max_logprobs, trust_remote_code=args.trust_remote_code,
                           quantization=quant, generation_config=args.generation_config)

    @property
    def served_model_name(self) -> str:
        name = self.args.served_model_name
        if isinstance(name, (list, tuple)):
            return name[0] if name else self.args.model
        return name or self.args.model

    @classmethod
    def build(cls, args: EngineArgs, model: ResolvedModel) -> "EngineConfig":
        verify_engine_args(args)
        hf = model.hf_config
        # The method's name is checked against the quantization registry (pagedllm/model/quantization) and the
        # checkpoint's quantization_config by the engine layer (engine/core.py create_engine_config): config imports
        # nothing above it.
        for name in ("quantization", "load_format"):
            if getattr(args, name) == "gguf" and model.gguf_file is None:
                raise ValueError(f"{name}='gguf' needs a .gguf model file; {args.model!r} is not one.")
        device = _pick_device(args.device)
        dtype = _pick_dtype(args.dtype, hf, device)
        _verify_pipeline_parallel(args, hf, device)
        verify_tensor_parallel(args.tensor_parallel_size, hf)
        if args.cpu_offload_gb and device.type != "cuda":
            raise ValueError(f"cpu_offload_gb={args.cpu_offload_gb} offloads weights from a GPU to CPU memory; on "
                             f"the {device.type} device the weights are in CPU memory already: use 0.")
        if device.type == "cpu" and args.gpu_memory_utilization != EngineArgs.gpu_memory_utilization:
            logger.warning("gpu_memory_utilization=%s has no effect on the CPU (as in vLLM); the CPU KV cache's size "
                           "is kv_cache_memory_gb (default VLLM_CPU_KVCACHE_SPACE / PAGEDLLM_CPU_KVCACHE_SPACE GiB, "
                           "else %g GiB).", args.gpu_memory_utilization, DEFAULT_CPU_KV_CACHE_GB)

        runner_type = _resolve_runner(args, model)
        if args.pooler_config is not None:
            _verify_pooler_config(args.pooler_config, runner_type, model, args.served_model_name or args.model)
        verify_rope_type(hf)
        derived_len, derived_from = _derived_max_model_len(hf)
        if runner_type == "pooling" and model.max_seq_length and model.max_seq_length < derived_len:
            derived_len = model.max_seq_length
            derived_from = f"max_seq_length={derived_len} in {model.sentence_config}"
        if args.max_model_len in (None, -1):     # -1 ('auto'): cut to what the KV cache holds once sized (core.py)
            max_model_len = derived_len
        else:
            max_model_len = args.max_model_len      # an int: EngineArgs parses "32k" and friends
            if max_model_len > derived_len:
                _verify_long_max_model_len(max_model_len, derived_len, derived_from, hf)
        max_model_len = _sliding_window_len(args, hf, max_model_len)
        max_model_len = _longrope_len(args, hf, max_model_len)
        chunked = args.enable_chunked_prefill and runner_type == "generate"

        on_gpu = device.type == "cuda"
        # vLLM's defaults on GPUs of 70 GiB or more: 1024 sequences for the LLM class and the server, its generic
        # SchedulerConfig 128 (and 2048 tokens per step, below) for any other usage context. On the CPU vLLM's CPU
        # table, per rank (tensor x pipeline parallel): 256 sequences and 4096 tokens per step for the LLM class,
        # 128 and 2048 behind the server.
        usage_context = UsageContext.parse(args.usage_context)
        tabled_context = usage_context in (UsageContext.LLM_CLASS, UsageContext.OPENAI_API_SERVER)
        world_size = args.tensor_parallel_size * args.pipeline_parallel_size
        if args.max_num_seqs is not None:
            max_num_seqs = args.max_num_seqs
        elif on_gpu or not tabled_context:
            max_num_seqs = 1024 if on_gpu and tabled_context else 128
        else:
            max_num_seqs = (256 if usage_context == UsageContext.LLM_CLASS else 128) * world_size
        verify_graph_sizes(args, on_gpu, runner_type)
        graph_kinds = _cuda_graph_kinds(args)
        if args.max_num_batched_tokens is not None:
            max_num_batched_tokens = int(args.max_num_batched_tokens)
            if not chunked and max_num_batched_tokens < max_model_len:
                why = "a pooling model runs each prompt in one step" if runner_type == "pooling" else \
                    "chunked prefill is disabled"
                raise ValueError(
                    f"max_num_batched_tokens ({max_num_batched_tokens}) is smaller than max_model_len "
                    f"({max_model_len}) while {why}.")
        else:
            # vLLM's defaults for GPUs of 70 GiB or more: 16384 tokens per step offline, 8192 behind the server,
            # where smaller prefill chunks keep the running streams' inter-token latency down. Behind the server
            # ours follows the model's size (served_tokens_per_step).
            if on_gpu and tabled_context:
                max_num_batched_tokens = (served_tokens_per_step(hf, args.tensor_parallel_size)
                                          if usage_context == UsageContext.OPENAI_API_SERVER else 16384)
            elif tabled_context:
                max_num_batched_tokens = (4096 if usage_context == UsageContext.LLM_CLASS else 2048) * world_size
            else:
                max_num_batched_tokens = 2048
            if not chunked:
                max_num_batched_tokens = max(max_num_batched_tokens, max_model_len)
        # vLLM's rule: a step holds at least one token of each running sequence. max_num_seqs left unset follows a
        # smaller max_num_batched_tokens; both given the other way round is its error.
        if args.max_num_seqs is None:
            max_num_seqs = min(max_num_seqs, max_num_batched_tokens)
        elif args.max_num_batched_tokens is not None and max_num_batched_tokens < max_num_seqs:
            raise ValueError(f"max_num_batched_tokens ({max_num_batched_tokens}) must be greater than or equal to "
                             f"max_num_seqs ({max_num_seqs}).")

        # The name is checked against the attention-backend registry (pagedllm/attention/registry.py, which may
        # hold backends registered at run time) by the engine layer (engine/core.py create_engine_config), before
        # the model loads: config imports nothing above it.
        custom_kernels = not args.disable_custom_kernels
        backend = args.attention_backend or ("triton" if on_gpu and custom_kernels else "torch")

        if args.kv_cache_memory_bytes is not None:
            kv_cache_memory_bytes = int(args.kv_cache_memory_bytes)
            kv_cache_memory_source = f"kv_cache_memory_bytes={kv_cache_memory_bytes}"
        elif args.kv_cache_memory_gb is not None:
            kv_cache_memory_bytes = int(args.kv_cache_memory_gb * (1 << 30))
            kv_cache_memory_source = f"kv_cache_memory_gb={args.kv_cache_memory_gb}"
        elif not on_gpu:   # vLLM's CPU backend reads VLLM_CPU_KVCACHE_SPACE (GiB); ours is the same knob
            name, gb = next(((name, gb) for name in ("PAGEDLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_KVCACHE_SPACE")
                             if (gb := getattr(envs, name)) is not None), (None, None))
            if gb is not None and gb <= 0:     # as kv_cache_memory_gb; vLLM's 0 GiB cache fails at its start too
                raise ValueError(f"{name}={gb:g}: the CPU KV cache's size in GiB must be positive (unset: "
                                 f"{DEFAULT_CPU_KV_CACHE_GB:g} GiB).")
            kv_cache_memory_bytes = int((DEFAULT_CPU_KV_CACHE_GB if gb is None else gb) * (1 << 30))
            kv_cache_memory_source = (f"the CPU default of {DEFAULT_CPU_KV_CACHE_GB:g} GiB" if gb is None else
                                      f"{name}={gb:g}")
        else:
            kv_cache_memory_bytes = kv_cache_memory_source = None
        cpu_bind = _cpu_bind(args, device)
        cpu_threads, cpu_threads_from_bind = _pick_cpu_threads(args, device, cpu_bind)
        served = usage_context == UsageContext.OPENAI_API_SERVER
        long_prefill = args.long_prefill_token_threshold
        if long_prefill is None:
            long_prefill = SERVER_CPU_LONG_PREFILL_TOKEN_THRESHOLD if served and not on_gpu and chunked else 0
        seqs_per_request = args.max_num_seqs_per_request
        if seqs_per_request is None:
            seqs_per_request = max(1, max_num_seqs // 16) if served else 0
        config = cls(args=args, model=model, dtype=dtype, device=device, max_model_len=max_model_len,
                     max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                     long_prefill_token_threshold=long_prefill, max_num_seqs_per_request=seqs_per_request,
                     block_size=args.block_size, attention_backend=backend,
                     triton_gemv=custom_kernels and _switch(args.triton_gemv, envs.PAGEDLLM_TRITON_GEMV),
                     pdl=custom_kernels and _switch(args.pdl, envs.PAGEDLLM_PDL),
                     decode_cuda_graphs=graph_kinds[0], piecewise_cuda_graphs=graph_kinds[1],
                     cudagraph_specialize_lora=cudagraph_specialize_lora(args) is not False,
                     cpu_onednn=_switch(args.cpu_onednn, envs.PAGEDLLM_CPU_ONEDNN),
                     kv_cache_memory_bytes=kv_cache_memory_bytes, kv_cache_memory_source=kv_cache_memory_source,
                     runner_type=runner_type,
                     enable_chunked_prefill=chunked, cpu_threads=cpu_threads, cpu_bind=cpu_bind,
                     cpu_threads_from_bind=cpu_threads_from_bind,
                     cpu_fp16_weights=_cpu_fp16_weights(args, device))
        task = config.pooling_task
        if task is not None and task not in config.pooling_tasks:
            raise ValueError(f"pooler_config task: Unsupported task: {task!r} Supported tasks: {config.pooling_tasks}")
        return config


def _verify_pooler_config(pooler: PoolerConfig, runner_type: str, model: ResolvedModel, model_name) -> None:
    """Each field the user set must apply to this model (the poolers honour it), else an error that names it."""
    if runner_type != "pooling":
        raise ValueError("pooler_config applies to pooling models only (runner='pooling': embedding, classification "
                         "and reward models); this model runs as a generative model.")
    hf = model.hf_config
    embedder = not (model.is_classifier or model.is_token_classifier)
    if pooler.dimensions is not None:
        if not embedder:
            raise ValueError("pooler_config dimensions applies to embedding models only (Matryoshka truncation); "
                             "this is a classification / reward model.")
        _verify_dimensions(PoolingParams(dimensions=pooler.dimensions), model,
                           model_name[0] if isinstance(model_name, list) else model_name)
    if pooler.enable_chunked_processing and not embedder:
        raise ValueError("pooler_config enable_chunked_processing applies to embedding models only (the server's "
                         "/v1/embeddings); this is a classification / reward model.")
    for field_name in ("logit_mean", "logit_sigma"):
        if getattr(pooler, field_name) is not None and not model.is_classifier:
            raise ValueError(f"pooler_config {field_name} applies to sequence classification models only (the "
                             f"classify / score logits); this model has no sequence classification head.")
    if model.is_token_classifier and pooler.seq_pooling_type is not None:
        raise ValueError(f"pooler_config pooling_type={pooler.seq_pooling_type!r} pools a sequence into one "
                         f"vector; this model has a head on every token (token_classify): use ALL or STEP.")
    token_type = pooler.tok_pooling_type or _default_token_pooling_type(hf)
    for field_name in ("step_tag_id", "returned_token_ids"):
        if getattr(pooler, field_name) is not None and token_type != "STEP":
            raise ValueError(f"pooler_config {field_name} applies to STEP pooling only: set pooling_type='STEP' "
                             f"(process reward models use it by default).")
    check_returned_token_ids(pooler.returned_token_ids, _token_row_width(model), where="pooler_config ")


def _token_row_width(model: ResolvedModel) -> int:
    if model.is_classifier or model.is_token_classifier:
        return int(getattr(model.hf_config, "num_labels", 0))
    return int(model.embedding_size or model.hf_config.hidden_size)


def _verify_dimensions(params: PoolingParams, model: ResolvedModel, model_name: str) -> None:
    hf = model.hf_config
    matryoshka = getattr(hf, "matryoshka_dimensions", None)
    params.verify_dimensions(int(model.embedding_size or hf.hidden_size), matryoshka,
                             bool(getattr(hf, "is_matryoshka", False) or matryoshka), model_name)


def _default_token_pooling_type(hf_config) -> str:
    archs = getattr(hf_config, "architectures", None) or ()
    return "STEP" if any(a in STEP_POOLING_ARCHITECTURES for a in archs) else "ALL"


def _cpu_bind(args: EngineArgs, device: torch.device) -> tuple[tuple[int, ...], ...] | None:
    """vLLM's VLLM_CPU_OMP_THREADS_BIND: CPU id lists ("0-31", "0,2,4-7"), one per rank separated by '|', each
    rank's process bound to its CPUs. "auto" / "nobind" / unset: None (no binding). ValueError for a list that does
    not parse, names CPUs this process may not run on, or has a count of lists other than the ranks'. vLLM's CPU
    worker does the same binding (with one OpenMP thread pinned per CPU); here the process's affinity is set and
    OpenMP's threads are left to the kernel's scheduler within it. Other vLLM CPU switches pagedllm lacks are named."""
    if device.type != "cpu":
        return None
    if envs.VLLM_CPU_SGL_KERNEL:
        logger.warning("VLLM_CPU_SGL_KERNEL is set: vLLM's AMX small-batch kernels (sgl-kernel) are not part of "
                       "pagedllm, so it has no effect here; CPU linears run through oneDNN (cpu_onednn).")
    if (envs.VLLM_CPU_MOE_PREPACK or "0").lower() not in ("0", "false", "no", "off"):
        logger.warning("VLLM_CPU_MOE_PREPACK=%s has no effect: pagedllm does not run MoE layers through IPEX, whose "
                       "weight prepacking it switches.", envs.VLLM_CPU_MOE_PREPACK)
    value = envs.VLLM_CPU_OMP_THREADS_BIND
    if value is None or value in ("auto", "nobind"):
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError(f"VLLM_CPU_OMP_THREADS_BIND={value!r}: binding threads to CPUs needs Linux "
                         f"(os.sched_setaffinity); use 'nobind' or cpu_threads.")
    ranks = args.tensor_parallel_size * args.pipeline_parallel_size
    lists = value.split("|")
    if len(lists) != ranks:
        raise ValueError(f"VLLM_CPU_OMP_THREADS_BIND={value!r} gives {len(lists)} CPU list(s) for {ranks} rank(s) "
                         f"(tensor x pipeline parallel): give one per rank, separated by '|', or 'auto' / 'nobind'.")
    allowed = envs.allowed_cores()
    bind = []
    for part in lists:
        ids: list[int] = []
        try:
            for item in part.split(","):
                first, _, last = item.strip().partition("-")
                ids.extend(range(int(first), int(last or first) + 1))
        except ValueError:
            raise ValueError(f"VLLM_CPU_OMP_THREADS_BIND={value!r}: {part!r} is not a list of CPU ids such as "
                             f"'0-3' or '0,2,4-7' (or use 'auto' / 'nobind').") from None
        if not ids or sorted(set(ids)) != sorted(ids):
            raise ValueError(f"VLLM_CPU_OMP_THREADS_BIND={value!r}: {part!r} names no CPU or one CPU twice.")
        if not set(ids) <= allowed:
            raise ValueError(f"VLLM_CPU_OMP_THREADS_BIND={value!r} names CPU(s) {sorted(set(ids) - allowed)} this "
                             f"process may not run on (its CPUs: {sorted(allowed)}).")
        bind.append(tuple(ids))
    return tuple(bind)


def _pick_cpu_threads(args: EngineArgs, device: torch.device,
                      cpu_bind: tuple[tuple[int, ...], ...] | None = None) -> tuple[int | None, bool]:
    """The CPU engine's torch thread count (each rank's) and whether each rank takes it from its
    VLLM_CPU_OMP_THREADS_BIND list: cpu_threads, else PAGEDLLM_CPU_THREADS, else one thread per CPU of the bind
    list (vLLM's CPU worker sets its threads so, whatever OMP_NUM_THREADS says), else OMP_NUM_THREADS, else the
    cores this process may run on (docs/perf.md, issue 19, has the measurements behind the default) shared out
    among the tensor x pipeline parallel ranks, as vLLM's CPU backend gives each rank cores of its own (every rank
    on every core made the ranks' OpenMP threads wait on each other, docs/perf.md, session 39), less
    VLLM_CPU_NUM_OF_RESERVED_CPU of each share (vLLM's cores left to other processes under 'auto' binding)."""
    given = [(name, value) for name, value in (("cpu_threads", args.cpu_threads),
                                               ("PAGEDLLM_CPU_THREADS", envs.PAGEDLLM_CPU_THREADS),
                                               ("OMP_NUM_THREADS", envs.OMP_NUM_THREADS)) if value is not None]
    if given and int(given[0][1]) < 1:
        raise ValueError(f"{given[0][0]} must be >= 1, got {given[0][1]}.")
    if device.type != "cpu":
        if args.cpu_threads is not None:
            logger.warning("cpu_threads=%s has no effect on the GPU.", args.cpu_threads)
        return None, False
    if envs.openmp_passive_missed:
        logger.warning("torch was imported before pagedllm, so OpenMP threads spin-wait (torch's policy): on a busy "
                       "machine that can make generation several times slower. Import pagedllm first, or set "
                       "OMP_WAIT_POLICY=PASSIVE before starting Python.")
    if given and given[0][0] != "OMP_NUM_THREADS":
        return int(given[0][1]), False
    if cpu_bind is not None:
        return len(cpu_bind[0]), True
    if given:
        return int(given[0][1]), False
    share = max(1, len(envs.allowed_cores()) // (args.tensor_parallel_size * args.pipeline_parallel_size))
    reserved = envs.VLLM_CPU_NUM_OF_RESERVED_CPU
    if reserved is None or envs.VLLM_CPU_OMP_THREADS_BIND == "nobind":
        return share, False
    if not 0 <= reserved < share:
        raise ValueError(f"VLLM_CPU_NUM_OF_RESERVED_CPU ({reserved}) must be >= 0 and less than the {share} "
                         f"core(s) of each rank's share.")
    return share - reserved, False


def _switch(arg: bool | None, env_default: bool) -> bool:
    """An on/off engine argument: its value when given, else its environment variable's."""
    return env_default if arg is None else bool(arg)


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available.")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}.")
    return torch.device(name)


def _pick_dtype(name: str, hf_config, device: torch.device) -> torch.dtype:
    if name != "auto":
        if name not in _DTYPES:
            raise ValueError(f"Unknown dtype {name!r}; choose from auto, {', '.join(_DTYPES)}.")
        dtype = _DTYPES[name]
        if device.type == "cpu" and dtype == torch.float16:
            # CPUs have no native fp16 arithmetic: fp16 asked for means fp16 weights computed in float32
            # (_cpu_fp16_weights; vLLM's CPU backend turns it into bfloat16 instead).
            return torch.float32
        if device.type == "cpu" and dtype == torch.bfloat16 and not _cpu_has_native_bf16():
            # Without AVX512-BF16 / AMX every bf16 GEMM converts to fp32 and back (docs/perf.md).
            logger.warning("dtype=bfloat16 on a CPU without native bf16 (no AVX512-BF16 or AMX): it runs slower "
                           "than float32 here and its output differs from HF transformers' fp32; dtype='auto' "
                           "gives float32.")
        return dtype
    config_dtype = getattr(hf_config, "dtype", None)  # transformers 5 name (torch_dtype is deprecated)
    if isinstance(config_dtype, str):
        config_dtype = _DTYPES.get(config_dtype, torch.float32)
    if device.type == "cpu":
        # float32 on every CPU (issue 19), also for bf16 checkpoints: greedy output then equals HF transformers'
        # fp32 token for token and does not depend on the batch a request lands in. bfloat16 was the default on
        # CPUs with native bf16 (as in vLLM's CPU backend) and is faster there (+39% at batch 1 on an AVX512-BF16
        # EPYC, docs/perf.md), but differed from HF on 4 of 8 reference prompts and changed 15 of 96 concurrent
        # streams' greedy text with the batch: it is dtype="bfloat16", asked for.
        return torch.float32
    if config_dtype in (None, torch.float32):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return config_dtype


def _cpu_fp16_weights(args: EngineArgs, device: torch.device) -> bool:
    """True for dtype="float16" on the CPU: every linear weight, the embedding and the LM head held in fp16 and
    multiplied by fbgemm's fp16-weight GEMM in float32 (2-4x faster than oneDNN fp32 at batch 1 on a 2-core AVX2
    EPYC: it reads half the bytes, docs/perf.md). ValueError where that cannot run."""
    if device.type != "cpu" or _DTYPES.get(args.dtype) != torch.float16:
        return False
    engines = _quantized_engines()
    if "fbgemm" not in engines:
        raise ValueError(f"dtype={args.dtype!r} on the CPU keeps the weights in fp16 through fbgemm's fp16 GEMM, "
                         f"which this torch build lacks (torch.backends.quantized.supported_engines = {engines}); "
                         f"use dtype='float32' or 'bfloat16'.")
    if args.quantization not in (None, "gguf"):     # a GGUF file is dequantized at load on the CPU
        raise ValueError(f"dtype={args.dtype!r} on the CPU (fp16 weights) cannot be combined with "
                         f"quantization={args.quantization!r}: the weights are either quantized or fp16; use "
                         f"dtype='float32' with a quantization method.")
    return True


def _quantized_engines() -> list[str]:
    return list(torch.backends.quantized.supported_engines)


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _derived_max_model_len(hf_config) -> tuple[int, str]:
    """The model's own context length and where it comes from (for messages)."""
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length"):
        value = getattr(hf_config, key, None)
        if isinstance(value, int) and value > 0:
            source = f"{key}={value} in model's config.json"
            if getattr(hf_config, "model_type", None) in ("roberta", "xlm-roberta"):
                # RoBERTa's positions start after the padding index: 514 position embeddings hold 512 tokens.
                return value - (getattr(hf_config, "pad_token_id", None) or 0) - 1, source
            return _rope_scaled_len(hf_config, value, source)
    return 2048, "no context length in model's config.json: 2048"


def rope_parameters(hf_config, layer_type: str | None = None) -> dict:
    """The config's rotary parameters (transformers 5's ``rope_parameters``, or the older ``rope_scaling``); for a
    model whose layer types rotate differently (Gemma 3: ``{"sliding_attention": {...}, "full_attention": {...}}``),
    those of ``layer_type``."""
    params = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    if isinstance(params, dict) and layer_type is not None and isinstance(params.get(layer_type), dict):
        return params[layer_type]
    return params


def verify_rope_type(hf_config) -> None:
    """A rope type the rotary layer cannot apply is an error naming it (vLLM's "Unknown RoPE scaling type"), never
    the default rotation in its place: the types are transformers' (the rotary layer takes its frequencies from
    ``ROPE_INIT_FUNCTIONS``) and "default" (mrope is the default rotation for text-only positions)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    params = rope_parameters(hf_config)
    if not isinstance(params, dict):
        return
    per_layer = [p for p in params.values() if isinstance(p, dict)]     # Gemma 3: one dict per layer type
    for rope in per_layer or [params]:
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "mrope", *ROPE_INIT_FUNCTIONS):
            raise ValueError(f"Unknown RoPE scaling type {rope_type!r} (the config's rope_parameters / rope_scaling, "
                             f"or hf_overrides); supported: 'default', {', '.join(map(repr, ROPE_INIT_FUNCTIONS))}.")


def _rope_scaled_len(hf_config, length: int, source: str) -> tuple[int, str]:
    """A rope scaling's factor stretches the context (vLLM's rule: yarn from its original_max_position_embeddings;
    llama3 and longrope models state their scaled length in max_position_embeddings already)."""
    rope = rope_parameters(hf_config)
    rope_type = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None
    factor = rope.get("factor") if isinstance(rope, dict) else None
    if rope_type in (None, "default", "su", "longrope", "llama3", "mrope") or not factor:
        return length, source
    if rope_type == "yarn" and rope.get("original_max_position_embeddings"):
        length = int(rope["original_max_position_embeddings"])
        source = f"original_max_position_embeddings={length}"
    return int(length * factor), f"{source} x {rope_type} rope scaling factor {factor:g}"


# Architectures whose positions are a learned table (no position past its last row exists): a max_model_len above
# the derived one is an error for them even with PAGEDLLM_ALLOW_LONG_MAX_MODEL_LEN.
_ABSOLUTE_POSITION_MODEL_TYPES = ("opt", "gpt2", "gpt_bigcode", "bert", "roberta", "xlm-roberta")


def sliding_window(hf_config) -> int | None:
    """The attention window of the checkpoint's windowed layers as HF transformers applies it (each token sees
    itself and the window - 1 before it), or None when every layer attends to the whole sequence: Mistral's
    ``sliding_window``; Qwen2 / Qwen3 only with ``use_sliding_window`` (``layer_types`` naming windowed layers)."""
    window = getattr(hf_config, "sliding_window", None)
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        return None
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types is not None:
        return window if "sliding_attention" in layer_types else None
    return None if getattr(hf_config, "use_sliding_window", True) is False else window


def _capped_len(args: EngineArgs, max_model_len: int, cap: int | None, longer: str, cut: str) -> int:
    """max_model_len where pagedllm runs the model as the model is only up to ``cap`` tokens: cut to ``cap`` with the
    warning ``cut`` when it was not asked for, the error ``max_model_len=N {longer}`` when a longer one was."""
    if cap is None or max_model_len <= cap:
        return max_model_len
    if args.max_model_len not in (None, -1):
        raise ValueError(f"max_model_len={max_model_len} {longer}")
    logger.warning(cut)
    return cap


def _sliding_window_len(args: EngineArgs, hf_config, max_model_len: int) -> int:
    """``disable_sliding_window`` (vLLM's): the model's windowed layers attend to the whole context instead, which
    equals the model only up to the window, so max_model_len is capped there (logged; a longer one asked for is an
    error). Without it the layers attend through their window (layer_sliding_windows) and nothing is capped."""
    if not args.disable_sliding_window:
        return max_model_len
    window = sliding_window(hf_config)
    return _capped_len(
        args, max_model_len, window,
        f"is longer than this model's sliding attention window (sliding_window={window} in its config.json), and "
        f"disable_sliding_window=True runs full attention, which past {window} tokens would not be the model's. Use "
        f"max_model_len <= {window}, or leave disable_sliding_window off.",
        f"disable_sliding_window=True: this model's windowed layers attend to the whole context, so max_model_len "
        f"is {window} (sliding_window in its config.json), where full attention equals the window's.")


def layer_sliding_windows(hf_config, num_layers: int, disabled: bool = False) -> list[int]:
    """Each decoder layer's attention window as HF applies it (a token sees itself and the window - 1 keys before
    it), 0 for full attention: every layer for Mistral's ``sliding_window``, the ``layer_types`` marked
    "sliding_attention" where the config has them (Gemma 2, Qwen2 with use_sliding_window). ``disabled``
    (disable_sliding_window): all 0."""
    window = None if disabled else sliding_window(hf_config)
    if window is None:
        return [0] * num_layers
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types is None:
        return [window] * num_layers
    return [window if kind == "sliding_attention" else 0 for kind in layer_types[:num_layers]]


def _longrope_len(args: EngineArgs, hf_config, max_model_len: int) -> int:
    """LongRoPE (Phi-3.5 / Phi-4-mini): HF rotates with the short factors while a sequence is within
    original_max_position_embeddings and switches every position to the long ones once it is longer, a switch that
    depends on the sequence's length, not the position's. pagedllm's rotary table is per position and uses the short
    factors: equal to the model up to that length. So max_model_len is capped there (logged), and a longer one asked
    for explicitly is an error."""
    params = rope_parameters(hf_config)
    if not isinstance(params, dict) or params.get("rope_type", params.get("type")) != "longrope":
        return max_model_len
    original = params.get("original_max_position_embeddings") or getattr(hf_config,
                                                                           "original_max_position_embeddings", None)
    return _capped_len(
        args, max_model_len, original,
        f"is longer than this model's original context (original_max_position_embeddings={original}), and pagedllm "
        f"does not support LongRoPE's long factors yet (their switch depends on each sequence's length). Use "
        f"max_model_len <= {original}.",
        f"This model's rotary embedding is LongRoPE; pagedllm rotates with its short factors only, so max_model_len "
        f"is {original} (original_max_position_embeddings), where they are the model's.")


def _verify_long_max_model_len(max_model_len: int, derived_len: int, derived_from: str, hf_config) -> None:
    """max_model_len above the model's own length: vLLM's error, unless VLLM_ALLOW_LONG_MAX_MODEL_LEN (or ours)
    allows it for a rotary-position model (the rotary tables are built for max_model_len; the output past the
    trained length is the user's risk, as in vLLM)."""
    message = f"User-specified max_model_len ({max_model_len}) is greater than the derived max_model_len " \
              f"({derived_from})."
    if not (envs.PAGEDLLM_ALLOW_LONG_MAX_MODEL_LEN or envs.VLLM_ALLOW_LONG_MAX_MODEL_LEN):
        raise ValueError(f"{message} To allow overriding this maximum, set the env var "
                         f"VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 (or PAGEDLLM_ALLOW_LONG_MAX_MODEL_LEN=1). It must be used "
                         f"with extreme caution: the model was not trained on positions past {derived_len}.")
    model_type = getattr(hf_config, "model_type", None)
    positions = _derived_max_model_len(hf_config)[0]    # above sentence-transformers' max_seq_length, maybe
    if model_type in _ABSOLUTE_POSITION_MODEL_TYPES and max_model_len > positions:
        raise ValueError(f"{message} The {model_type} architecture has learned absolute position embeddings, "
                         f"{positions} of them: no position past them exists, whatever "
                         f"VLLM_ALLOW_LONG_MAX_MODEL_LEN says.")
    logger.warning("%s Make sure the value is correct and within the model context size "
                   "(VLLM_ALLOW_LONG_MAX_MODEL_LEN is set).", message)


@dataclass(frozen=True)
class ProfilerSettings:
    """Where and how the workers' torch.profiler traces are written (vLLM's ProfilerConfig, its torch profiler)."""
    torch_profiler_dir: str
    torch_profiler_with_stack: bool = True
    torch_profiler_with_flops: bool = False
    torch_profiler_use_gzip: bool = True
    torch_profiler_dump_cuda_time_total: bool = True    # also a table of the ops' times, profiler_out_<rank>.txt
    torch_profiler_record_shapes: bool = False
    torch_profiler_with_memory: bool = False


# vLLM ProfilerConfig keys that pagedllm does not act on, with the values that mean "off" there.
_PROFILER_KEYS_OFF = {"ignore_frontend": (False, True), "delay_iterations": (0,), "max_iterations": (0,)}


def _config_dict(value: "dict | str", name: str, vllm_class: str) -> dict:
    """A config argument given as a dict or its JSON (as vLLM's ``--x-config`` flags take it), as a new dict."""
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict (vLLM's {vllm_class} fields), got {type(value).__name__}.")
    return dict(value)


# vLLM's connectors that offload KV blocks to CPU memory (its kv_offloading_size picks the first; the second with
# VLLM_USE_SIMPLE_KV_OFFLOAD): pagedllm's CPU tier of the prefix cache plays their part.
_CPU_OFFLOADING_CONNECTORS = ("OffloadingConnector", "SimpleCPUOffloadConnector")
# KVTransferConfig fields for moving KV between instances (disaggregated prefill); vLLM's offloading connectors do
# not read them either, so any value is taken.
_KV_TRANSFER_TRANSPORT_KEYS = ("engine_id", "kv_buffer_device", "kv_buffer_size", "kv_rank", "kv_parallel_size",
                               "kv_ip", "kv_port", "enable_permute_local_kv", "kv_load_failure_policy")


def kv_transfer_offloading_gib(kv_transfer_config: dict | str) -> float:
    """The CPU tier's size in GiB (what kv_offloading_size takes) that ``kv_transfer_config`` (vLLM's KVTransferConfig
    as a dict or its JSON) asks for: its native CPU offloading connector with ``cpu_bytes_to_use`` (in all, over the
    ranks). Other connectors and keys pagedllm cannot honour are ValueErrors naming them."""
    cfg = _config_dict(kv_transfer_config, "kv_transfer_config", "KVTransferConfig")
    connector, role = cfg.pop("kv_connector", None), cfg.pop("kv_role", None)
    if connector not in _CPU_OFFLOADING_CONNECTORS:
        raise ValueError(f"kv_transfer_config kv_connector={connector!r} is not supported by pagedllm: only vLLM's "
                         f"native CPU offloading ({', '.join(map(repr, _CPU_OFFLOADING_CONNECTORS))}, the prefix "
                         f"cache's CPU tier, also kv_offloading_size) is; disaggregated prefill (NixlConnector, "
                         f"P2pNcclConnector, MooncakeConnector, ...), LMCache and MultiConnector are not integrated.")
    if role != "kv_both":
        raise ValueError(f"kv_transfer_config kv_role must be 'kv_both' for {connector} (it stores and loads its own "
                         f"blocks), got {role!r}.")
    for key in _KV_TRANSFER_TRANSPORT_KEYS:
        cfg.pop(key, None)
    extra = cfg.pop("kv_connector_extra_config", None) or {}
    if cfg:
        raise ValueError(f"kv_transfer_config has unknown or unsupported key(s) {sorted(cfg)} (e.g. "
                         f"kv_connector_module_path: pagedllm loads no connector module).")
    if not isinstance(extra, dict):
        raise ValueError(f"kv_transfer_config kv_connector_extra_config must be a dict, got {type(extra).__name__}.")
    extra = dict(extra)
    if extra.pop("eviction_policy", "lru") != "lru":
        raise ValueError("kv_connector_extra_config eviction_policy: pagedllm's CPU tier evicts the least recently "
                         "used blocks only ('lru').")
    size = extra.pop("cpu_bytes_to_use", None)
    if "num_cpu_blocks" in extra:
        raise ValueError("kv_connector_extra_config num_cpu_blocks (vLLM 0.11-0.13's form) is not supported: give "
                         "cpu_bytes_to_use (bytes of CPU memory, as vLLM's now), or kv_offloading_size in GiB.")
    if extra:
        raise ValueError(f"kv_connector_extra_config key(s) {sorted(extra)} are not supported by pagedllm's CPU tier; "
                         f"it takes cpu_bytes_to_use (and eviction_policy 'lru').")
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not size > 0:
        raise ValueError(f"kv_connector_extra_config cpu_bytes_to_use must be a positive number of bytes (the CPU "
                         f"memory for offloaded KV blocks), got {size!r}.")
    return size / (1 << 30)


def profiler_settings(profiler_config: dict | str | None) -> ProfilerSettings | None:
    """The profiler the engine was started with: ``profiler_config`` (vLLM's ProfilerConfig as a dict or its JSON)
    when given, else ``VLLM_TORCH_PROFILER_DIR`` / ``PAGEDLLM_TORCH_PROFILER_DIR``; None: no profiler. A key or
    value pagedllm cannot honour is a ValueError naming it."""
    if profiler_config is None:
        folder = envs.torch_profiler_dir()
        return ProfilerSettings(folder, torch_profiler_with_stack=envs.torch_profiler_with_stack()) if folder else None
    cfg = _config_dict(profiler_config, "profiler_config", "ProfilerConfig")
    kind = cfg.pop("profiler", "none")
    for key, off in _PROFILER_KEYS_OFF.items():
        if key in cfg and cfg.pop(key) not in off:
            raise ValueError(f"profiler_config {key!r} is not supported yet by pagedllm; leave it out.")
    known = {f.name for f in dataclasses.fields(ProfilerSettings)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"profiler_config has unknown key(s) {unknown}; pagedllm takes 'profiler' and "
                         f"{sorted(known | set(_PROFILER_KEYS_OFF))}.")
    if kind in (None, "none"):
        return None
    if kind != "torch":
        raise ValueError(f"profiler_config profiler={kind!r} is not supported yet by pagedllm; use 'torch' (a "
                         f"torch.profiler trace, CUDA kernels included on a GPU).")
    for key, value in cfg.items():
        if key != "torch_profiler_dir" and not isinstance(value, bool):
            raise ValueError(f"profiler_config {key!r} must be true or false, got {value!r}.")
    folder = cfg.pop("torch_profiler_dir", None) or envs.torch_profiler_dir()
    if not folder or not isinstance(folder, str):
        raise ValueError("profiler_config with profiler='torch' needs 'torch_profiler_dir', the folder for the "
                         "traces.")
    return ProfilerSettings(os.path.abspath(os.path.expanduser(folder)), **cfg)


# ---- speculative decoding ------------------------------------------------------------------------------------------
# vLLM's SpeculativeConfig methods that pagedllm does not run yet (each needs a draft model or extra heads).
_SPEC_METHODS_NOT_SUPPORTED = ("eagle", "eagle3", "medusa", "mlp_speculator", "mtp", "suffix",
                               "ngram_gpu", "custom_class", "extract_hidden_states", "dflash", "dspark")
# Keys of vLLM's SpeculativeConfig accepted with the ngram method when they keep their "off" values.
_SPEC_KEYS_OFF = {"enforce_eager": (None, False, True), "disable_padded_drafter_batch": (False, True),
                  "draft_tensor_parallel_size": (None, 1), "max_model_len": (None,), "quantization": (None,),
                  "revision": (None,), "code_revision": (None,), "rejection_sample_method": ("standard",),
                  "draft_sample_method": ("greedy",), "parallel_drafting": (False,)}


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding as the engine runs it (vLLM's SpeculativeConfig): each step a running request proposes up
    to ``num_speculative_tokens`` tokens, the model verifies them in one forward pass and the rejection sampler keeps
    the prefix the model agrees with, plus one token of its own. "ngram": the tokens that followed an earlier
    occurrence of its last ``prompt_lookup_min``..``prompt_lookup_max`` tokens (engine/spec_decode.py);
    "draft_model": a small model sharing the tokenizer, greedy, run by the worker (worker/draft_model.py)."""
    method: str
    num_speculative_tokens: int
    prompt_lookup_min: int = 0
    prompt_lookup_max: int = 0
    model: str | None = None        # draft_model: the draft's id or folder
    draft_tensor_parallel_size: int | None = None     # draft_model: None or the target's (checked with the engine's)
    # draft_model: vLLM's speculative max_model_len, the draft's length limit; None or the target's max_model_len (a
    # smaller one, where vLLM stops drafting for longer sequences, is an error at start-up: not supported yet).
    max_model_len: int | None = None


def speculative_settings(config: "dict | str | SpeculativeConfig") -> SpeculativeConfig:
    """``speculative_config`` (a dict or its JSON) checked with vLLM's rules and defaults; a method or key pagedllm
    cannot honour is a ValueError naming it."""
    if isinstance(config, SpeculativeConfig):
        return config
    cfg = _config_dict(config, "speculative_config", "SpeculativeConfig")
    method, model = cfg.pop("method", None), cfg.pop("model", None)
    if method is None:                     # vLLM infers it from the model: "[ngram]", else a draft model
        method = "ngram" if model in ("ngram", "[ngram]") else "draft_model"
    if method == "[ngram]":
        method = "ngram"
    if method == "draft_model" and isinstance(model, str):
        method = _speculator_method(model) or method
    if method == "draft_model":
        return _draft_model_settings(model, cfg)
    if method != "ngram":
        if method in _SPEC_METHODS_NOT_SUPPORTED or method.endswith("_mtp"):
            raise ValueError(f"speculative_config method {method!r} is not supported by pagedllm yet; supported: "
                             f"'ngram' (prompt lookup), 'draft_model' (a small model sharing the tokenizer).")
        raise ValueError(f"speculative_config method must be one of 'ngram', 'draft_model', "
                         f"{', '.join(repr(m) for m in _SPEC_METHODS_NOT_SUPPORTED)}; got {method!r}.")
    if model not in (None, "ngram", "[ngram]"):
        raise ValueError(f"speculative_config method 'ngram' takes no model, got model={model!r}.")
    lo, hi = cfg.pop("prompt_lookup_min", None), cfg.pop("prompt_lookup_max", None)
    k = _speculative_tokens(cfg, "ngram", "'num_speculative_tokens', 'prompt_lookup_max', 'prompt_lookup_min'")
    for name, value in (("prompt_lookup_min", lo), ("prompt_lookup_max", hi)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"speculative_config {name} must be an integer >= 1, got {value!r}.")
    if lo is None and hi is None:          # vLLM's defaults
        lo = hi = 5
    elif lo is None:
        lo = hi
    elif hi is None:
        hi = lo
    if lo > hi:
        raise ValueError(f"prompt_lookup_min={lo} must be <= prompt_lookup_max={hi}")
    return SpeculativeConfig("ngram", k, lo, hi)


def _speculator_method(model: str) -> str | None:
    """The method vLLM detects from a draft checkpoint (its name, else its config's model_type) where it is no plain
    draft model: "eagle" / "eagle3" / "dflash" by name, "medusa" / "mlp_speculator" by model_type (read from a local
    folder only: nothing is downloaded here)."""
    name = model.lower()
    for part, method in (("eagle-", "eagle"), ("eagle3", "eagle3"), ("dflash", "dflash")):
        if part in name:
            return method
    path = os.path.join(os.path.expanduser(model), "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return model_type if model_type in ("medusa", "mlp_speculator") else None


def _speculative_tokens(cfg: dict, method: str, takes: str) -> int:
    """``num_speculative_tokens`` of a speculative_config's remaining keys, checked; keys left at their "off" values
    are dropped, any other key is an error."""
    k = cfg.pop("num_speculative_tokens", None)
    for key, off in _SPEC_KEYS_OFF.items():
        if key in cfg and cfg.pop(key) not in off:
            raise ValueError(f"speculative_config {key!r} is not supported yet by pagedllm with method {method!r}; "
                             f"leave it out.")
    if cfg:
        raise ValueError(f"speculative_config has unknown or unsupported key(s) {sorted(cfg)}; pagedllm takes "
                         f"'method', {takes} with method {method!r}.")
    if k is None:
        raise ValueError(f"speculative_config needs num_speculative_tokens (the tokens proposed per step) with "
                         f"method {method!r}.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"speculative_config num_speculative_tokens must be an integer >= 1, got {k!r}.")
    return k


def _draft_model_settings(model: str | None, cfg: dict) -> SpeculativeConfig:
    if not model or not isinstance(model, str):
        raise ValueError("speculative_config method 'draft_model' needs 'model', the draft model's id or folder.")
    draft_tp = cfg.pop("draft_tensor_parallel_size", None)
    max_len = cfg.pop("max_model_len", None)
    k = _speculative_tokens(cfg, "draft_model", "'model', 'num_speculative_tokens', 'draft_tensor_parallel_size', "
                                                "'max_model_len'")
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
        raise ValueError(f"speculative_config max_model_len must be an integer >= 1, got {max_len!r}.")
    if draft_tp is not None and (isinstance(draft_tp, bool) or not isinstance(draft_tp, int) or draft_tp < 1):
        raise ValueError(f"speculative_config draft_tensor_parallel_size must be an integer >= 1, got {draft_tp!r}.")
    return SpeculativeConfig("draft_model", k, model=model, draft_tensor_parallel_size=draft_tp, max_model_len=max_len)


# vLLM's name for the engine's whole configuration, for code written against it (a custom logits processor's
# ``__init__(self, vllm_config: VllmConfig, ...)``): pagedllm's EngineConfig.
VllmConfig = EngineConfig
