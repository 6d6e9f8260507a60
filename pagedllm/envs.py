"""Every environment variable pagedllm reads, in one place (as vLLM's ``vllm/envs.py``).

``from pagedllm import envs; envs.PAGEDLLM_CACHE_DIR`` reads the variable at that moment (module ``__getattr__``), so
a test's ``monkeypatch.setenv`` takes effect without reloading anything. No other module reads ``os.environ``
(tests/unit/test_envs.py checks that).

Switches of the GPU speed path (``PAGEDLLM_TRITON_GEMV``, ``PAGEDLLM_PDL``, ``PAGEDLLM_PIECEWISE_GRAPHS``,
``PAGEDLLM_CPU_ONEDNN``) are only the defaults of engine arguments of the same meaning (``--no-pdl`` etc.): the engine
arguments win, and ``EngineConfig.build`` reads these once. They stay as variables for A/B runs through harnesses
that fix the command line.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, Iterator


def _flag(name: str, default: bool) -> bool:
    """A yes/no switch. Off by default: on only for 1/true/yes/on. On by default (the A/B switches of the GPU speed
    path): off only for 0/false/no/off."""
    value = os.environ.get(name, "").strip().lower()
    if default:
        return value not in ("0", "false", "no", "off")
    return value in ("1", "true", "yes", "on")


def _optional_str(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _optional_float(name: str, what: str = "a number (GiB)") -> float | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name} must be {what}, got {value!r}.") from None


def _optional_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {value!r}.") from None


def allowed_cores() -> set[int]:
    """The CPUs this process may run on: its affinity mask (as a container or a binding limits it); all of
    os.cpu_count() where there is no mask (macOS, Windows)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return set(range(os.cpu_count() or 1))


def _default_compile_threads() -> int:
    """Usable cores (the affinity mask, as a container limits it), at most 16 (the H200 host's count, measured)."""
    return min(len(allowed_cores()), 16)


def _int_at_least(name: str, minimum: int, default: int, maximum: int | None = None) -> int:
    value = _optional_int(name)
    if value is None:
        return default
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}.")
    return value


def _seconds(name: str) -> float | None:
    return _optional_float(name, "a number of seconds")


def _interval_s(name: str) -> float | None:
    seconds = _seconds(name)
    if seconds is None:
        return None
    return seconds if seconds > 0 else 10.0      # vLLM's rule: not above 0 means its default


def _optional_seconds(name: str) -> float | None:
    seconds = _seconds(name)
    if seconds is not None and seconds <= 0:
        raise ValueError(f"{name} must be above 0 seconds, got {seconds!r}.")
    return seconds


# name -> (reader, what it does and its default)
_VARIABLES: dict[str, tuple[Callable[[], Any], str]] = {
    # ---- model loading -----------------------------------------------------------------------------------------
    "PAGEDLLM_USE_MODELSCOPE": (
        lambda: _flag("PAGEDLLM_USE_MODELSCOPE", default=False),
        "1: download hub models from ModelScope instead of the Hugging Face hub. Default off."),
    "PAGEDLLM_CACHE_DIR": (
        lambda: os.environ.get("PAGEDLLM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pagedllm"),
        "Where converted GGUF metadata (config.json, tokenizer) is cached. Default ~/.cache/pagedllm."),
    "PAGEDLLM_ALLOW_LONG_MAX_MODEL_LEN": (
        lambda: _flag("PAGEDLLM_ALLOW_LONG_MAX_MODEL_LEN", default=False),
        "1: a max_model_len above the model's own context length (max_position_embeddings) is a warning instead of "
        "an error, for rotary-position models (learned position tables cannot grow). Default off."),
    "VLLM_ALLOW_LONG_MAX_MODEL_LEN": (
        lambda: _flag("VLLM_ALLOW_LONG_MAX_MODEL_LEN", default=False),
        "vLLM's name for PAGEDLLM_ALLOW_LONG_MAX_MODEL_LEN; either one allows it. Default off."),
    "PAGEDLLM_PP_LAYER_PARTITION": (
        lambda: _optional_str("PAGEDLLM_PP_LAYER_PARTITION"),
        "Pipeline parallel: decoder layers per stage, comma-separated (e.g. \"3,5\"; vLLM's VLLM_PP_LAYER_PARTITION). "
        "Default unset: an even split, the remainder on the stages before the last."),
    "VLLM_PP_LAYER_PARTITION": (
        lambda: _optional_str("VLLM_PP_LAYER_PARTITION"),
        "vLLM's name for PAGEDLLM_PP_LAYER_PARTITION, read when that one is unset."),
    "PAGEDLLM_RAY_PLACEMENT_STRATEGY": (
        lambda: os.environ.get("PAGEDLLM_RAY_PLACEMENT_STRATEGY", "").strip().upper() or "STRICT_PACK",
        "distributed_executor_backend='ray': the placement group's strategy. STRICT_PACK (default) puts every rank "
        "on one node; PACK lets the ranks spread over several nodes when one is not enough (multi-node); SPREAD / "
        "STRICT_SPREAD spread them over as many nodes as possible / one node per rank."),
    "PAGEDLLM_RAY_PLACEMENT_TIMEOUT_S": (
        lambda: float(os.environ.get("PAGEDLLM_RAY_PLACEMENT_TIMEOUT_S", "").strip() or 60.0),
        "distributed_executor_backend='ray': seconds to wait for the cluster to grant the placement group (one "
        "bundle per rank) before failing with the resources it lacks. Default 60."),
    "VLLM_HOST_IP": (
        lambda: _optional_str("VLLM_HOST_IP"),
        "distributed_executor_backend='ray': this node's address for the ranks' rendezvous, as vLLM reads it (set "
        "it where `ray start` runs when Ray's node address is not the one the other nodes reach; each node its own, "
        "so it is never forwarded from the driver). Default unset: Ray's node address."),
    "CUDA_VISIBLE_DEVICES": (
        lambda: _optional_str("CUDA_VISIBLE_DEVICES"),
        "CUDA's own list of the devices a process sees. Read by the Ray executor's actors to find, among the devices "
        "they see, the GPU Ray gave them. Default unset: every device."),
    "PAGEDLLM_CUSTOM_ALL_REDUCE_KIB": (
        lambda: _int_at_least("PAGEDLLM_CUSTOM_ALL_REDUCE_KIB", 0, 0),
        "Tensor parallel on CUDA: all-reduces of up to this many KiB go through a one-shot kernel over symmetric "
        "memory (torch's, distributed/symm_mem_all_reduce.py) instead of NCCL; larger ones stay on NCCL. Default 0: "
        "all through NCCL (opt-in until measured on two GPUs, issue 21). disable_custom_all_reduce=True wins."),
    "PAGEDLLM_TEST_SHARE_ONE_GPU": (
        lambda: _flag("PAGEDLLM_TEST_SHARE_ONE_GPU", default=False),
        "TEST ONLY (tests/gpu/test_tensor_parallel_gpu.py): every tensor/pipeline-parallel rank on cuda:0 over gloo, "
        "so the CUDA rank path runs on a one-GPU machine (NCCL refuses two ranks on one device). Needs "
        "enforce_eager=True (gloo cannot be captured in CUDA graphs); slow (gloo copies CUDA tensors through the "
        "host). Never for serving. Default off."),
    # ---- defaults of engine arguments (the argument wins) ------------------------------------------------------
    "PAGEDLLM_TRITON_GEMV": (
        lambda: _flag("PAGEDLLM_TRITON_GEMV", default=True),
        "Default of triton_gemv / --[no-]triton-gemv: the Triton skinny GEMM for batch-1 GPU linears. Default on."),
    "PAGEDLLM_PDL": (
        lambda: _flag("PAGEDLLM_PDL", default=True),
        "Default of pdl / --[no-]pdl: programmatic dependent launch of our decode kernels (Hopper+). Default on."),
    "PAGEDLLM_PDL_EARLY_TRIGGER": (
        lambda: _flag("PAGEDLLM_PDL_EARLY_TRIGGER", default=True),
        "1: a PDL kernel lets the next one launch before it waits for its own predecessor, not after (kernels/"
        "pdl.py), so a dependent may start its constant loads up to two kernels early. Read when kernels/pdl.py is "
        "imported. Default on (H200, session 20: 1.5B bs1 +2.3%, AWQ 7B bs1 +2.1%, 7B bs1 +0.9%, ShareGPT level); "
        "0: trigger after the wait."),
    "PAGEDLLM_PIECEWISE_GRAPHS": (
        lambda: _flag("PAGEDLLM_PIECEWISE_GRAPHS", default=True),
        "Default of piecewise_cuda_graphs / --[no-]piecewise-cuda-graphs: CUDA graphs for steps with prompt "
        "tokens. Default on."),
    "PAGEDLLM_PIECEWISE_MAX_TOKENS": (
        lambda: _int_at_least("PAGEDLLM_PIECEWISE_MAX_TOKENS", 1, 512),
        "Largest step (tokens) that the piecewise CUDA graphs cover; larger steps run eagerly. Sizes above 512 go "
        "up in steps of 64 to 1024, 128 to 2048, 256 to 4096, 512 beyond (each costs capture time at start-up). "
        "Default 512 (vLLM's largest capture size too)."),
    "PAGEDLLM_PIECEWISE_SHARED_BUFFERS": (
        lambda: _flag("PAGEDLLM_PIECEWISE_SHARED_BUFFERS", default=True),
        "1 (default): the piecewise CUDA graphs hold each layer's query and attention output through borrowed views "
        "that do not keep their memory, so the graphs of every step size reuse the same pool blocks instead of "
        "keeping their own (served Qwen2.5-7B on an H100, session 39: pool 3.18 GiB at a 512-token cap without, "
        "0.94 GiB at a 2,048-token cap with, same tok/s; a 2,048 cap without ran out of memory). 0: each size keeps "
        "its own."),
    "PAGEDLLM_SKINNY_MAX_M": (
        lambda: _int_at_least("PAGEDLLM_SKINNY_MAX_M", 1, 128, maximum=128),     # the kernel's largest routed M
        "Largest decode batch (rows) that a GPU linear may send to the Triton skinny GEMM where it was measured faster "
        "(kernels/triton_gemv.py: bf16 up to 16 rows where it beat cuBLAS, FP8 weights with per-token fp8 "
        "activations up to 128 rows where that beat torch._scaled_mm); 1: batch 1 only, as before session 10 (an "
        "A/B switch, read when the model code is imported). Default 128."),
    "PAGEDLLM_GATE_UP_SILU": (
        lambda: _flag("PAGEDLLM_GATE_UP_SILU", default=True),
        "1: where a GPU MLP's gate_up projection takes the Triton skinny GEMM (decode steps of up to 16 requests), "
        "SiLU-and-mul runs in that kernel's epilogue (kernels/triton_gemv.skinny_linear_silu: the same bits, one "
        "kernel a layer less). 0 turns it off. Read when the model is built. Default on (H200, session 18, with "
        "PAGEDLLM_DECODE_ROPE_FUSED=3: 7B bs1 262.4 -> 267.9 tok/s, latency 8x1024x1024 4.446 -> 4.394 s, 1.5B bs1 "
        "725-744 -> 775-801)."),
    "PAGEDLLM_DECODE_ROPE_FUSED": (
        lambda: _int_at_least("PAGEDLLM_DECODE_ROPE_FUSED", 0, 3, maximum=3),
        "1: on the GPU, decode steps of at most 16 requests rotate Q / K and write the new K / V inside the "
        "decode-attention kernel (kernels/triton_attention.decode_rope_attention) instead of a rotary + KV-store "
        "kernel before it; the same values, one kernel a layer less. 2: that, and each split's first tile of older "
        "keys read before the kernel waits for the QKV projection. 3: that, with the new key and value joining the "
        "softmax from registers instead of from the cache, so the writer's first tile is read before the wait too "
        "(output equal up to rounding). 0: the two kernels. Read when the attention backend is built. Default 3 (H200, "
        "session 18, 7B bs1 262.4 -> 265.3 tok/s against 2; session 15: 2 took latency 8x1024x1024 4.607 -> 4.50 s; "
        "an A/B switch)."),
    "PAGEDLLM_MLA_PREFILL": (
        lambda: (_optional_str("PAGEDLLM_MLA_PREFILL") or "expanded").lower(),     # checked by the model
        "DeepSeek MLA (model/models/deepseek.py): how a step's prompt tokens attend. expanded: the prompt requests' "
        "latent (their cached context included) is expanded through kv_b_proj into per-head keys and values and "
        "attends at qk_head_dim / v_head_dim (vLLM's prefill form), unless the step's cached context is long "
        "against its new tokens (the expansion would cost more multiply-adds than the absorbed form's wider "
        "attention saves: speculative verifications, short chunks after long prefixes); on the GPU a cached context "
        "is expanded at most max_num_batched_tokens keys at a time (what the memory profile expanded), each chunk's "
        "attention merged with the new tokens' by log-sum-exp (vLLM's chunked context); absorbed: every "
        "token attends over the latent cache with kv_b_proj absorbed (session 35's form); expanded-always: expanded "
        "whatever the context (A/B runs and tests). Decode tokens always take the absorbed form. Read when the model "
        "is built. Default expanded."),
    "PAGEDLLM_COMPILE_THREADS": (
        lambda: _int_at_least("PAGEDLLM_COMPILE_THREADS", 0, _default_compile_threads()),
        "On the GPU, the start-up warm-up runs once dry and the Triton kernel variants it needs are built on this "
        "many threads before it runs for real (kernels/parallel_compile.py; what a cold Triton cache costs). "
        "Default: the usable CPU cores, at most 16; 0: built one by one inside the warm-up."),
    "PAGEDLLM_CAPTURE_WARMUP_EACH": (
        lambda: _flag("PAGEDLLM_CAPTURE_WARMUP_EACH", default=False),
        "1: two warm-up forwards before the capture of every CUDA-graph size (decode and piecewise), as before "
        "session 37; an A/B switch. Default: only before the first (largest) size of each capture loop; the others "
        "capture directly, and one that meets a Triton kernel variant not built yet is warmed up and captured again "
        "(worker/cuda_graphs.capture_after_warm_up; H100 cold start, docs/perf.md session 37: CUDA graphs 4.0-5.1 "
        "-> 1.7-2.3 s)."),
    "PAGEDLLM_TRITON_PREP": (
        lambda: _flag("PAGEDLLM_TRITON_PREP", default=True),
        "0: do not prepare Triton off the start-up's critical path (kernels/parallel_compile.py: its source hash and "
        "CUDA helper module on a thread while the config loads, the kernels' C launchers built on the compile "
        "threads; an A/B switch). Default on."),
    "PAGEDLLM_GC_FREEZE": (
        lambda: _flag("PAGEDLLM_GC_FREEZE", default=True),
        "0: leave the start-up heap of the engine-core, rank-worker and API-server processes to the garbage "
        "collector (pagedllm/gc_heap.py; an A/B switch). Default on: frozen."),
    "PAGEDLLM_CPU_ONEDNN": (
        lambda: _flag("PAGEDLLM_CPU_ONEDNN", default=True),
        "Default of cpu_onednn / --[no-]cpu-onednn: CPU linears through oneDNN with prepacked weights. Default on."),
    "PAGEDLLM_CPU_KVCACHE_SPACE": (
        lambda: _optional_float("PAGEDLLM_CPU_KVCACHE_SPACE"),
        "Default of kv_cache_memory_gb on the CPU (vLLM's VLLM_CPU_KVCACHE_SPACE), GiB. Unset: 4 GiB."),
    "VLLM_CPU_KVCACHE_SPACE": (
        lambda: _optional_float("VLLM_CPU_KVCACHE_SPACE"),
        "vLLM's name for PAGEDLLM_CPU_KVCACHE_SPACE, read when that one is unset."),
    "PAGEDLLM_CPU_THREADS": (
        lambda: _optional_int("PAGEDLLM_CPU_THREADS"),
        "Default of cpu_threads / --cpu-threads: torch's intra-op (OpenMP) threads of a CPU engine, a count for "
        "each rank (over VLLM_CPU_OMP_THREADS_BIND's one thread per CPU). Unset: that, else OMP_NUM_THREADS if "
        "set, else the number of cores this process may run on (os.sched_getaffinity) over the tensor x pipeline "
        "parallel ranks."),
    "VLLM_CPU_OMP_THREADS_BIND": (
        lambda: _optional_str("VLLM_CPU_OMP_THREADS_BIND"),
        "vLLM's CPU thread binding: CPU ids (\"0-31\", \"0,2,4-7\"), one list per tensor x pipeline parallel rank "
        "separated by '|' (\"0-31|32-63\"): each rank's process is bound to its CPUs (os.sched_setaffinity) and runs "
        "one torch thread per CPU unless cpu_threads / PAGEDLLM_CPU_THREADS give a count. \"auto\" (vLLM's default) "
        "and \"nobind\": no binding, the thread count as without the variable."),
    "VLLM_CPU_NUM_OF_RESERVED_CPU": (
        lambda: _optional_int("VLLM_CPU_NUM_OF_RESERVED_CPU"),
        "vLLM's: cores of each rank's share left to other processes when the thread count is the default (no "
        "count given, VLLM_CPU_OMP_THREADS_BIND unset or auto). Unset: 0."),
    "VLLM_CPU_SGL_KERNEL": (
        lambda: _flag("VLLM_CPU_SGL_KERNEL", default=False),
        "vLLM's AMX small-batch (sgl-kernel) linears and MoE on x86; pagedllm has no such kernels: set, a warning says "
        "so (its CPU linears are oneDNN's, cpu_onednn)."),
    "VLLM_CPU_MOE_PREPACK": (
        lambda: _optional_str("VLLM_CPU_MOE_PREPACK"),
        "vLLM's IPEX MoE weight prepacking switch; pagedllm does not use IPEX: 1 (asked for) logs a warning that it "
        "has no effect, 0 is what pagedllm does anyway."),
    # ---- OpenMP's own variables (read here; configure_openmp sets OMP_WAIT_POLICY) -------------------------------
    "OMP_NUM_THREADS": (
        lambda: _optional_int("OMP_NUM_THREADS"),
        "OpenMP's thread count; a CPU engine's default thread count when PAGEDLLM_CPU_THREADS is unset."),
    "OMP_WAIT_POLICY": (
        lambda: _optional_str("OMP_WAIT_POLICY"),
        "OpenMP's wait policy. Unset when pagedllm is imported (before torch): pagedllm sets PASSIVE, so idle "
        "OpenMP threads sleep instead of spinning on cores other processes need (configure_openmp)."),
    "GOMP_SPINCOUNT": (
        lambda: _optional_str("GOMP_SPINCOUNT"),
        "GNU OpenMP's spin count before an idle thread sleeps; when set, pagedllm leaves the wait policy alone."),
    # ---- engine process and logging ----------------------------------------------------------------------------
    "PAGEDLLM_STEP_TRACE": (
        lambda: os.environ.get("PAGEDLLM_STEP_TRACE", "").strip(),
        "A file: the served engine writes one JSON line per step there (benchmarks/serve_step_trace.py reads "
        "it). Default empty: no trace."),
    "PAGEDLLM_ENGINE_START_METHOD": (
        lambda: _optional_str("PAGEDLLM_ENGINE_START_METHOD"),
        "multiprocessing start method of the server's engine process (fork, spawn, forkserver). Default unset: "
        "the engine picks (fork unless CUDA is already initialised)."),
    "PAGEDLLM_EARLY_ENGINE": (
        lambda: _flag("PAGEDLLM_EARLY_ENGINE", default=True),
        "0: `pagedllm serve` starts its engine process after the server's own imports instead of first, from the "
        "command line (entrypoints/early_engine.py; an A/B switch of the start-up). Only where the engine process "
        "is spawned (a GPU host, or PAGEDLLM_ENGINE_START_METHOD=spawn). Default on."),
    "PAGEDLLM_LOGGING_LEVEL": (
        lambda: os.environ.get("PAGEDLLM_LOGGING_LEVEL", "").strip().upper() or "INFO",
        "Level of pagedllm's loggers (DEBUG, INFO, WARNING, ...). Default INFO."),
    "PAGEDLLM_CONFIGURE_LOGGING": (
        lambda: _flag("PAGEDLLM_CONFIGURE_LOGGING", default=True),
        "0: import pagedllm leaves logging alone (no handler on the pagedllm logger). Default on."),
    # ---- server and benchmarks ---------------------------------------------------------------------------------
    "PAGEDLLM_EVENT_LOOP": (
        lambda: os.environ.get("PAGEDLLM_EVENT_LOOP", "auto").strip().lower() or "auto",
        "asyncio: the server runs the standard asyncio loop even where uvloop is installed. Default auto."),
    "PAGEDLLM_API_KEY": (
        lambda: _optional_str("PAGEDLLM_API_KEY"),
        "Default of the server's --api-key. Default unset (no key)."),
    "VLLM_API_KEY": (
        lambda: _optional_str("VLLM_API_KEY"),
        "vLLM's name for PAGEDLLM_API_KEY, read when that one is unset."),
    "PAGEDLLM_SERVER_DEV_MODE": (
        lambda: _flag("PAGEDLLM_SERVER_DEV_MODE", default=False),
        "1: the server adds vLLM's development endpoints (POST /sleep, /wake_up, /collective_rpc, "
        "/reset_prefix_cache, /pause, /resume; GET /is_sleeping, /is_paused). Never expose them to users. Default "
        "off."),
    "VLLM_SERVER_DEV_MODE": (
        lambda: _flag("VLLM_SERVER_DEV_MODE", default=False),
        "vLLM's name for PAGEDLLM_SERVER_DEV_MODE; either one turns the endpoints on. Default off."),
    "PAGEDLLM_ALLOW_RUNTIME_LORA_UPDATING": (
        lambda: _flag("PAGEDLLM_ALLOW_RUNTIME_LORA_UPDATING", default=False),
        "1 / True: the server (with --enable-lora) adds vLLM's POST /v1/load_lora_adapter and "
        "/v1/unload_lora_adapter. Default off (the routes are absent: 404)."),
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": (
        lambda: _flag("VLLM_ALLOW_RUNTIME_LORA_UPDATING", default=False),
        "vLLM's name for PAGEDLLM_ALLOW_RUNTIME_LORA_UPDATING; either one turns the routes on. Default off."),
    "PAGEDLLM_ENABLE_RESPONSES_API_STORE": (
        lambda: _flag("PAGEDLLM_ENABLE_RESPONSES_API_STORE", default=False),
        "1: /v1/responses keeps responses sent with store (the default) in memory, never evicted (vLLM's store): GET "
        "/v1/responses/{id}, previous_response_id, background and cancel work. Default off (store comes back "
        "false; previous_response_id and background are refused)."),
    "VLLM_ENABLE_RESPONSES_API_STORE": (
        lambda: _flag("VLLM_ENABLE_RESPONSES_API_STORE", default=False),
        "vLLM's name for PAGEDLLM_ENABLE_RESPONSES_API_STORE; either one turns the store on. Default off."),
    "PAGEDLLM_LOG_STATS_INTERVAL": (
        lambda: _interval_s("PAGEDLLM_LOG_STATS_INTERVAL"),
        "Seconds between the engine's statistics lines ('Avg prompt throughput: ...'; server, AsyncLLMEngine, "
        "LLM(disable_log_stats=False)); vLLM's VLLM_LOG_STATS_INTERVAL. A value not above 0 means the default, 10."),
    "VLLM_LOG_STATS_INTERVAL": (
        lambda: _interval_s("VLLM_LOG_STATS_INTERVAL"),
        "vLLM's name for PAGEDLLM_LOG_STATS_INTERVAL, read when that one is unset."),
    "PAGEDLLM_IMAGE_FETCH_TIMEOUT": (
        lambda: _optional_seconds("PAGEDLLM_IMAGE_FETCH_TIMEOUT"),
        "Seconds the server waits for an http(s) image of a chat message (image_url); vLLM's "
        "VLLM_IMAGE_FETCH_TIMEOUT. Default 5."),
    "VLLM_IMAGE_FETCH_TIMEOUT": (
        lambda: _optional_seconds("VLLM_IMAGE_FETCH_TIMEOUT"),
        "vLLM's name for PAGEDLLM_IMAGE_FETCH_TIMEOUT, read when that one is unset."),
    "PAGEDLLM_TORCH_PROFILER_DIR": (
        lambda: _optional_str("PAGEDLLM_TORCH_PROFILER_DIR"),
        "A folder: LLM.start_profile() / stop_profile() (and the server's POST /start_profile, /stop_profile) record "
        "the engine's steps with torch.profiler and write a Chrome trace there (vLLM's VLLM_TORCH_PROFILER_DIR). "
        "Default unset: profiling is off and start_profile() is an error."),
    "VLLM_TORCH_PROFILER_DIR": (
        lambda: _optional_str("VLLM_TORCH_PROFILER_DIR"),
        "vLLM's name for PAGEDLLM_TORCH_PROFILER_DIR, read when that one is unset."),
    "OPENAI_API_KEY": (
        lambda: _optional_str("OPENAI_API_KEY"),
        "`pagedllm bench serve`, `pagedllm chat` and `pagedllm complete` send it as the Bearer token (chat and "
        "complete: unless --api-key is given). Default unset."),
    "HF_HUB_OFFLINE": (
        lambda: _flag("HF_HUB_OFFLINE", default=False),
        "huggingface_hub's own switch; the benchmarks read it to avoid downloads. Default off."),
    # ---- Triton ------------------------------------------------------------------------------------------------
    "TRITON_INTERPRET": (
        lambda: os.environ.get("TRITON_INTERPRET", "").strip() == "1",
        "Triton's interpreter (kernels run on the CPU): PDL is off, the skinny GEMM takes its interpreter path."),
}


def runtime_lora_updating() -> bool:
    """vLLM's runtime LoRA routes are on (PAGEDLLM_ALLOW_RUNTIME_LORA_UPDATING or VLLM_ALLOW_RUNTIME_LORA_UPDATING)."""
    return (_flag("PAGEDLLM_ALLOW_RUNTIME_LORA_UPDATING", default=False)
            or _flag("VLLM_ALLOW_RUNTIME_LORA_UPDATING", default=False))


def responses_api_store() -> bool:
    """vLLM's Responses API store is on (PAGEDLLM_ENABLE_RESPONSES_API_STORE or VLLM_ENABLE_RESPONSES_API_STORE)."""
    return (_flag("PAGEDLLM_ENABLE_RESPONSES_API_STORE", default=False)
            or _flag("VLLM_ENABLE_RESPONSES_API_STORE", default=False))


def server_dev_mode() -> bool:
    """vLLM's development endpoints are on (PAGEDLLM_SERVER_DEV_MODE or VLLM_SERVER_DEV_MODE)."""
    return _flag("PAGEDLLM_SERVER_DEV_MODE", default=False) or _flag("VLLM_SERVER_DEV_MODE", default=False)


def log_stats_interval() -> float:
    """Seconds between statistics lines: PAGEDLLM_LOG_STATS_INTERVAL, else VLLM_LOG_STATS_INTERVAL, else vLLM's 10."""
    for name in ("PAGEDLLM_LOG_STATS_INTERVAL", "VLLM_LOG_STATS_INTERVAL"):
        seconds = _interval_s(name)
        if seconds is not None:
            return seconds
    return 10.0


def image_fetch_timeout_s() -> float:
    """Seconds to fetch an http(s) image: PAGEDLLM_IMAGE_FETCH_TIMEOUT, else VLLM_IMAGE_FETCH_TIMEOUT, else vLLM's 5."""
    for name in ("PAGEDLLM_IMAGE_FETCH_TIMEOUT", "VLLM_IMAGE_FETCH_TIMEOUT"):
        seconds = _optional_seconds(name)
        if seconds is not None:
            return seconds
    return 5.0


def torch_profiler_dir() -> str | None:
    """Where profiler traces go (PAGEDLLM_TORCH_PROFILER_DIR, else VLLM_TORCH_PROFILER_DIR), or None: no profiling."""
    return _optional_str("PAGEDLLM_TORCH_PROFILER_DIR") or _optional_str("VLLM_TORCH_PROFILER_DIR")


def torch_profiler_with_stack() -> bool:
    """vLLM's VLLM_TORCH_PROFILER_WITH_STACK (default on): Python stacks in the traces of the variable's profiler."""
    name = "PAGEDLLM_TORCH_PROFILER_WITH_STACK"
    return _flag(name if os.environ.get(name, "").strip() else "VLLM_TORCH_PROFILER_WITH_STACK", default=True)


def __getattr__(name: str) -> Any:
    if name in _VARIABLES:
        return _VARIABLES[name][0]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(_VARIABLES)


# What ``configure_openmp`` found or did, for the engine's start-up log (ModelRunner.startup_info).
openmp_wait_policy = "not configured (pagedllm.envs.configure_openmp was not called)"
# True when torch was imported before pagedllm and no policy was given: OpenMP threads spin-wait (config warns).
openmp_passive_missed = False


# What a rank started by Ray must share with the driver (worker/ray_executor.py): Ray starts its actors with the
# raylet's environment, not this process's. CUDA_VISIBLE_DEVICES is Ray's to set and never among them; a node's own
# address (VLLM_HOST_IP / VLLM_HOST_PORT) stays that node's, as vLLM leaves them out of what it copies.
FORWARDED_ENV_PREFIXES = ("PAGEDLLM_", "VLLM_", "NCCL_", "TORCH_", "GLOO_", "TRITON_", "HF_", "TRANSFORMERS_")
NOT_FORWARDED = ("VLLM_HOST_IP", "VLLM_HOST_PORT")


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables of ``environ`` (this process's environment) that every Ray rank gets as well."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_ENV_PREFIXES) and k not in NOT_FORWARDED}


@contextlib.contextmanager
def environment(overrides: dict[str, str]) -> Iterator[None]:
    """``overrides`` set in this process's environment while the block runs (a spawned process started in it
    inherits them), the previous values back after."""
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def configure_openmp() -> str:
    """Make idle OpenMP threads sleep instead of spin (OMP_WAIT_POLICY=PASSIVE) unless the user chose a policy.

    The OpenMP runtime reads its variables once, when it is loaded with torch: ``import pagedllm`` calls this
    first thing, so it only works if torch was not imported before pagedllm. Why: GNU OpenMP threads spin ~300k
    iterations at the end of every parallel region; with other processes on the same cores each of a step's ~1000
    small ops then waits for a descheduled spinning thread (SmolLM2, 60 greedy tokens on a busy 2-core machine:
    15-115 s spinning, 5-17 s with PASSIVE; issue 19, docs/perf.md). Returns (and keeps, in
    ``openmp_wait_policy``) a line saying what holds.
    """
    global openmp_wait_policy, openmp_passive_missed
    user_policy = _optional_str("OMP_WAIT_POLICY")
    user_spin = _optional_str("GOMP_SPINCOUNT")
    if user_policy or user_spin:
        chosen = ", ".join(f"{k}={v}" for k, v in (("OMP_WAIT_POLICY", user_policy), ("GOMP_SPINCOUNT", user_spin))
                           if v)
        openmp_wait_policy = f"{chosen} (from the environment)"
    elif "torch" in sys.modules:
        openmp_passive_missed = True
        openmp_wait_policy = ("OpenMP default (threads spin-wait): torch was imported before pagedllm, so "
                              "OMP_WAIT_POLICY=PASSIVE could not apply")
    else:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        openmp_wait_policy = "OMP_WAIT_POLICY=PASSIVE (set by pagedllm)"
    return openmp_wait_policy


REPORTED_ENV_PREFIXES = ("PAGEDLLM_", "VLLM_", "CUDA_", "NCCL_", "OMP_", "GOMP_", "TORCH_", "HF_", "TRANSFORMERS_",
                         "TRITON_")
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def reported_env() -> dict[str, str]:
    """The variables ``pagedllm collect-env`` reports: those whose prefix is in REPORTED_ENV_PREFIXES, the value of
    any that looks like a secret (``*KEY*``, ``*TOKEN*``, ...) replaced by "(hidden)"."""
    return {name: "(hidden)" if any(word in name for word in _SECRET_WORDS) else os.environ[name]
            for name in sorted(os.environ) if name.startswith(REPORTED_ENV_PREFIXES)}


def describe() -> str:
    """One line per variable: its name and what it does (for docs and ``--help`` texts)."""
    return "\n".join(f"{name}: {doc}" for name, (_, doc) in _VARIABLES.items())
