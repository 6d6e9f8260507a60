"""pagedllm's logging: vLLM-style lines on the ``pagedllm`` logger, and the engine's start-up block.

``import pagedllm`` gives the ``pagedllm`` logger one handler (stdout, ``INFO 05-01 12:00:00 [file.py:42] message``)
at the level of ``PAGEDLLM_LOGGING_LEVEL`` (INFO by default), as vLLM does with its own logger. A user who wants it
quieter sets that variable or ``logging.getLogger("pagedllm").setLevel(logging.WARNING)``; the start-up block is
then not printed. ``PAGEDLLM_CONFIGURE_LOGGING=0`` leaves logging entirely to the application.
"""
from __future__ import annotations

import logging
import sys

from pagedllm import envs

_FORMAT = "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"
_DATEFMT = "%m-%d %H:%M:%S"


def configure_logging(level: int | str | None = None) -> None:
    """Give the ``pagedllm`` logger its handler (once) and a level (``level``, else PAGEDLLM_LOGGING_LEVEL)."""
    root = logging.getLogger("pagedllm")
    if level is None:
        level = str(envs.PAGEDLLM_LOGGING_LEVEL).upper()
    if not any(getattr(h, "_pagedllm", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt=_DATEFMT))
        handler._pagedllm = True   # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level)


def log_format() -> tuple[str, str] | None:
    """The format of our handler (a spawned engine-core process sets itself up the same way)."""
    for h in logging.getLogger("pagedllm").handlers:
        if h.formatter is not None:
            return h.formatter._fmt, h.formatter.datefmt
    return None


def log_engine_start(logger: logging.Logger, info: dict, total_seconds: float) -> None:
    """One INFO block when an engine has started: model, architecture, dtype, device, weights, KV cache and its
    concurrency at max_model_len, CUDA graphs, start-up time."""
    if not logger.isEnabledFor(logging.INFO):
        return
    config = info["config"]
    runner = info.get("runner", {})
    num_blocks = info["num_blocks"]
    tokens = num_blocks * config.block_size
    arch = ",".join(getattr(config.hf_config, "architectures", None) or ["?"])
    dtype = str(config.dtype).replace("torch.", "")
    if getattr(config, "cpu_fp16_weights", False):
        dtype = f"float16: CPU weights fp16 (fbgemm), compute {dtype}"
    if runner.get("kv_cache_needed", True):
        kv_line = (f"  KV cache     {num_blocks} blocks x {config.block_size} tokens = {tokens} tokens "
                   f"({runner.get('kv_cache_gib', 0.0):.2f} GiB); max concurrency at "
                   f"max_model_len={config.max_model_len}: {tokens / config.max_model_len:.2f}x")
        if runner.get("kv_cache_note"):
            kv_line += f"\n               {runner['kv_cache_note']}"
    else:
        kv_line = (f"  KV cache     none allocated: encoder-only model (attention within each step); "
                   f"{num_blocks} block ids of {config.block_size} tokens for the scheduler's bookkeeping")
    lines = [
        f"pagedllm engine ready in {total_seconds:.1f} s",
        f"  model        {config.args.model} ({arch}), runner {config.runner_type}",
        f"  device       {config.device} ({runner.get('device_name', config.device.type)}), dtype {dtype}, "
        f"attention {config.attention_backend}",
        f"  weights      {runner.get('weights_gib', 0.0):.2f} GiB"
        + (f" ({runner['quantization']})" if runner.get("quantization") else "")
        + f", loaded in {runner.get('load_seconds', 0.0):.1f} s",
        kv_line,
        f"  scheduling   max_num_seqs {config.max_num_seqs}, max_num_batched_tokens "
        f"{config.max_num_batched_tokens}{' (default)' if config.args.max_num_batched_tokens is None else ''}, "
        f"async {config.async_scheduling}, prefix caching "
        f"{config.args.enable_prefix_caching and not config.is_pooling}",
        f"  fairness     long_prefill_token_threshold {config.long_prefill_token_threshold or 'none'}, "
        f"max_num_seqs_per_request {config.max_num_seqs_per_request or 'none'}",
        f"  CUDA graphs  {runner.get('graphs', 'none')}",
    ]
    spec = config.args.speculative_config
    if spec is not None:     # config.SpeculativeConfig
        how = (f"ngram, prompt lookup {spec.prompt_lookup_min}..{spec.prompt_lookup_max} tokens"
               if spec.method == "ngram" else f"draft model {spec.model}")
        lines.insert(-1, f"  speculative  {how}, up to {spec.num_speculative_tokens} draft tokens per step "
                         f"(async scheduling off)")
    phases = info.get("startup_phases") or {}
    if phases:
        # Where the start-up went; "other" is what no phase covers (the front end's own work, an in-process
        # engine's config).
        timeline = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items())
        triton = runner.get("triton_startup")
        if triton:
            one_by_one, seconds, ahead, threads, ahead_seconds = triton
            built = [f"{one_by_one} kernel variants built one by one in {seconds:.1f} s"]
            if ahead:
                built.insert(0, f"{ahead} built or loaded ahead on {threads} threads in {ahead_seconds:.1f} s")
            timeline += f" (Triton: {', '.join(built)})"
        lines.append(f"  start-up     {timeline}; other {max(total_seconds - sum(phases.values()), 0.0):.1f} s")
    plan = runner.get("memory_plan") or []     # worker/memory_plan.py MemoryPlan.describe()
    if plan:
        lines.append(f"  memory plan  {plan[0]}")
        lines.extend(f"               {line}" for line in plan[1:])
    if "cpu_threads" in runner:
        bind = (f"bound to CPUs {runner['cpu_bind']} (VLLM_CPU_OMP_THREADS_BIND)" if runner.get("cpu_bind") else
                "no binding")
        lines.append(f"  CPU threads  {runner['cpu_threads']} torch threads a rank, {bind} (--cpu-threads / "
                     f"PAGEDLLM_CPU_THREADS); OpenMP wait: {runner.get('openmp_wait_policy', '?')}")
    logger.info("\n".join(lines))


_MAX_LOGGED_ID = 128


def printable_id(request_id: object, limit: int = _MAX_LOGGED_ID) -> str:
    """A client-supplied request id as it may appear in a log line: control characters (a newline would forge a log
    line) escaped, and cut to ``limit`` characters."""
    text = str(request_id)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."
