"""Engine arguments (vLLM's names) and the validated configuration built from them.

``EngineArgs`` is what a user passes (``LLM(**kwargs)``, ``pagedllm serve --flags``); ``EngineArgs.create_config()``
resolves the model, reads its HF config and checks every value, producing an ``EngineConfig`` that the rest of the
engine reads. All user-facing validation lives here.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

_DTYPES = {
    "float32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16,
}
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy", "pt")


@dataclass
class EngineArgs:
    model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    tokenizer: str | None = None
    tokenizer_mode: str = "auto"
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    revision: str | None = None
    tokenizer_revision: str | None = None
    download_dir: str | None = None
    load_format: str = "auto"
    use_tqdm_on_load: bool = True   # progress bars while weights load (vLLM's flag)
    dtype: str = "auto"
    quantization: str | None = None
    seed: int | None = 0
    max_model_len: int | None = None
    block_size: int = 16
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    # KV cache size in GiB when running on the CPU (vLLM's VLLM_CPU_KVCACHE_SPACE); None = 4 GiB capped by the
    # memory that max_num_seqs full-length sequences could ever need.
    kv_cache_memory_gb: float | None = None
    # Fixed number of KV blocks (overrides the memory-based sizing; used by tests and for reproducible runs).
    num_gpu_blocks_override: int | None = None
    swap_space: float = 4.0
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool = True
    max_logprobs: int = 20
    enforce_eager: bool = False
    # Schedule step N+1 while the device runs step N (None: on for CUDA, off on CPU where nothing overlaps).
    async_scheduling: bool | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    device: str = "auto"
    attention_backend: str | None = None
    disable_log_stats: bool = False
    served_model_name: list[str] | str | None = None
    generation_config: str = "auto"
    hf_overrides: dict | None = None
    # Who builds the engine, as vLLM's UsageContext: "llm_class" (offline LLM) or "openai_api_server" (serve). Not a
    # field (no LLM keyword, no flag): the server entrypoint sets it on its instance, and it picks defaults (the
    # server's prefill chunks are half the LLM class's).
    usage_context: ClassVar[str] = "llm_class"

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_kwargs(cls, model: str | None = None, **kwargs: Any) -> "EngineArgs":
        """Build from ``LLM(...)`` keyword arguments; an unknown keyword is an error that names it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in kwargs if k not in names)
        if unknown:
            raise TypeError(f"LLM got unexpected keyword argument(s): {', '.join(unknown)}")
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
        g.add_argument("--tokenizer-mode", type=str, default=d.tokenizer_mode, choices=["auto", "slow", "mistral"])
        g.add_argument("--skip-tokenizer-init", action="store_true",
                       help="Skip the tokenizer; prompts must then be token ids.")
        g.add_argument("--trust-remote-code", action="store_true", help="Trust remote code from the hub.")
        g.add_argument("--revision", type=str, default=None)
        g.add_argument("--tokenizer-revision", type=str, default=None)
        g.add_argument("--download-dir", type=str, default=None, help="Where to download and cache weights.")
        g.add_argument("--load-format", type=str, default=d.load_format, choices=list(LOAD_FORMATS))
        g.add_argument("--use-tqdm-on-load", action=argparse.BooleanOptionalAction, default=d.use_tqdm_on_load,
                       help="Show progress bars while loading weights.")
        g.add_argument("--dtype", type=str, default=d.dtype,
                       choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
        g.add_argument("--quantization", "-q", type=str, default=None, help="Quantization method (e.g. gguf).")
        g.add_argument("--seed", type=int, default=d.seed)
        g.add_argument("--max-model-len", type=_parse_len, default=None,
                       help="Model context length (prompt + output); accepts 2048, 2k, 1m.")
        g.add_argument("--block-size", type=int, default=d.block_size, choices=[8, 16, 32, 64, 128])
        g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                       default=d.enable_prefix_caching)
        g.add_argument("--gpu-memory-utilization", type=float, default=d.gpu_memory_utilization)
        g.add_argument("--kv-cache-memory-gb", type=float, default=None,
                       help="KV cache size in GiB on the CPU.")
        g.add_argument("--num-gpu-blocks-override", type=int, default=None)
        g.add_argument("--swap-space", type=float, default=d.swap_space)
        g.add_argument("--max-num-seqs", type=int, default=None)
        g.add_argument("--max-num-batched-tokens", type=int, default=None)
        g.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction,
                       default=d.enable_chunked_prefill)
        g.add_argument("--max-logprobs", type=int, default=d.max_logprobs)
        g.add_argument("--enforce-eager", action="store_true", help="Disable CUDA graphs.")
        g.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                       help="Overlap the host's scheduling and output processing with the GPU's step "
                            "(default: on with CUDA).")
        g.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
        g.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
        g.add_argument("--distributed-executor-backend", type=str, default=None, choices=["mp", "ray", "uni"])
        g.add_argument("--device", type=str, default=d.device, choices=["auto", "cpu", "cuda"])
        g.add_argument("--attention-backend", type=str, default=None, choices=["torch", "triton"])
        g.add_argument("--disable-log-stats", action="store_true")
        g.add_argument("--generation-config", type=str, default=d.generation_config,
                       help='"auto" (the model\'s generation_config.json), "vllm" (ignore it) or a folder.')
        return parser

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "EngineArgs":
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        return cls(**values)

    def create_config(self) -> "EngineConfig":
        from pagedllm.model.loader import resolve_model
        return EngineConfig.build(self, resolve_model(self))


def _parse_len(text: str) -> int:
    text = str(text).strip().lower()
    mult = 1
    if text.endswith("k"):
        mult, text = 1024, text[:-1]
    elif text.endswith("m"):
        mult, text = 1024 * 1024, text[:-1]
    return int(float(text) * mult)


@dataclass
class ResolvedModel:
    """Where the model's files are, after hub download / GGUF conversion (see model/loader.py)."""
    model_dir: str                 # folder with config.json (+ weights unless dummy)
    hf_config: Any                 # transformers.PretrainedConfig
    tokenizer_path: str | None     # folder/id the tokenizer loads from
    gguf_file: str | None = None   # original .gguf file, when the model came from one
    generation_config: dict = field(default_factory=dict)


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

    @property
    def async_scheduling(self) -> bool:
        flag = self.args.async_scheduling
        if flag is None and os.environ.get("PAGEDLLM_ASYNC_SCHEDULING", "").strip():
            flag = env_flag("PAGEDLLM_ASYNC_SCHEDULING")   # A/B runs through harnesses that fix the arguments
        return self.device.type == "cuda" if flag is None else bool(flag)

    @property
    def hf_config(self):
        return self.model.hf_config

    @property
    def served_model_name(self) -> str:
        name = self.args.served_model_name
        if isinstance(name, (list, tuple)):
            return name[0] if name else self.args.model
        return name or self.args.model

    @classmethod
    def build(cls, args: EngineArgs, model: ResolvedModel) -> "EngineConfig":
        hf = model.hf_config
        if args.tensor_parallel_size != 1 or args.pipeline_parallel_size != 1:
            raise NotImplementedError(
                "tensor_parallel_size/pipeline_parallel_size > 1 is not supported yet by pagedllm; use 1.")
        if args.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got {args.load_format!r}.")
        if args.quantization not in (None, "gguf"):
            raise ValueError(f"Unsupported quantization {args.quantization!r}; supported: gguf.")
        if args.block_size <= 0 or args.block_size & (args.block_size - 1):
            raise ValueError(f"block_size must be a positive power of two, got {args.block_size}.")
        if not 0.0 < args.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {args.gpu_memory_utilization}.")

        device = _pick_device(args.device)
        dtype = _pick_dtype(args.dtype, hf, device)

        derived_len = _derived_max_model_len(hf)
        if args.max_model_len is None:
            max_model_len = derived_len
        else:
            max_model_len = int(args.max_model_len)
            if max_model_len <= 0:
                raise ValueError(f"max_model_len must be positive, got {max_model_len}.")
            if max_model_len > derived_len:
                raise ValueError(
                    f"User-specified max_model_len ({max_model_len}) is greater than the derived max_model_len "
                    f"(max_position_embeddings={derived_len} in the model's config.json).")

        on_gpu = device.type == "cuda"
        max_num_seqs = args.max_num_seqs or (1024 if on_gpu else 256)
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}.")
        if args.max_num_batched_tokens is not None:
            max_num_batched_tokens = int(args.max_num_batched_tokens)
            if max_num_batched_tokens < 1:
                raise ValueError(f"max_num_batched_tokens must be >= 1, got {max_num_batched_tokens}.")
            if not args.enable_chunked_prefill and max_num_batched_tokens < max_model_len:
                raise ValueError(
                    f"max_num_batched_tokens ({max_num_batched_tokens}) is smaller than max_model_len "
                    f"({max_model_len}) while chunked prefill is disabled.")
        else:
            # vLLM's defaults for GPUs of 70 GiB or more: 16384 tokens per step offline, 8192 behind the server,
            # where smaller prefill chunks keep the running streams' inter-token latency down.
            if on_gpu:
                max_num_batched_tokens = 8192 if args.usage_context == "openai_api_server" else 16384
            else:
                max_num_batched_tokens = 2048
            if not args.enable_chunked_prefill:
                max_num_batched_tokens = max(max_num_batched_tokens, max_model_len)

        backend = args.attention_backend or ("triton" if on_gpu else "torch")
        if backend not in ("torch", "triton"):
            raise ValueError(f"attention_backend must be 'torch' or 'triton', got {backend!r}.")
        if backend == "triton" and not on_gpu:
            raise ValueError("attention_backend='triton' needs a CUDA device.")
        return cls(args=args, model=model, dtype=dtype, device=device, max_model_len=max_model_len,
                   max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                   block_size=args.block_size, attention_backend=backend)


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
            # fp16 matmuls on CPU are slow and lose precision; vLLM's CPU backend does the same.
            return torch.bfloat16
        return dtype
    config_dtype = getattr(hf_config, "dtype", None)  # transformers 5 name (torch_dtype is deprecated)
    if isinstance(config_dtype, str):
        config_dtype = _DTYPES.get(config_dtype, torch.float32)
    if device.type == "cpu":
        # As vLLM's CPU backend: bf16 where the CPU computes it natively (AVX512-BF16 / AMX), else fp32. With the
        # prepacked oneDNN GEMMs bf16 decodes SmolLM2 39-56% faster than fp32 on an AVX512-BF16 EPYC (docs/perf.md).
        # dtype="float32" gives the exact match with HF transformers' fp32.
        if config_dtype in (None, torch.float32, torch.float16, torch.bfloat16) and _cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if config_dtype in (None, torch.float32):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return config_dtype


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _derived_max_model_len(hf_config) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length"):
        value = getattr(hf_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def env_flag(name: str, default: bool = False) -> bool:
    """A yes/no switch from the environment. Off by default: on only for 1/true/yes/on. On by default (the A/B
    switches of the GPU speed path): off only for 0/false/no/off."""
    value = os.environ.get(name, "").strip().lower()
    if default:
        return value not in ("0", "false", "no", "off")
    return value in ("1", "true", "yes", "on")
