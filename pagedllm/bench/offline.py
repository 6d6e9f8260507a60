"""Pieces shared by the offline benchmarks (throughput, latency, prefix caching, long-document QA): engine flags,
building the ``LLM``, and timing one ``LLM.generate`` call with prefix caching on and off."""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any, Sequence

from pagedllm import envs


def add_engine_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every engine flag (``--model``, ``--dtype``, ``--enable-prefix-caching``, ...), as vLLM's benchmarks take."""
    from pagedllm.config import EngineArgs
    return EngineArgs.add_cli_args(parser)


def engine_kwargs(args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    from pagedllm.config import EngineArgs
    kwargs = dataclasses.asdict(EngineArgs.from_cli_args(args))
    kwargs.update(overrides)
    return kwargs


def create_llm(kwargs: dict[str, Any]):
    from pagedllm import LLM
    return LLM(**kwargs)


def sampling_params(**kwargs: Any):
    from pagedllm import SamplingParams
    return SamplingParams(**kwargs)


def llm_tokenizer(llm):
    """The engine's tokenizer, or None (``skip_tokenizer_init``)."""
    try:
        return llm.get_tokenizer()
    except Exception:
        return None


def count_tokens(outputs: Sequence[Any]) -> tuple[int, int, int | None]:
    """(prompt tokens, output tokens over all n samples, prefix-cache hit tokens or None if not reported)."""
    prompt = sum(len(o.prompt_token_ids or []) for o in outputs)
    generated = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    cached_values = [getattr(o, "num_cached_tokens", None) for o in outputs]
    cached = None if any(v is None for v in cached_values) else sum(cached_values)
    return prompt, generated, cached


def measure_generate(kwargs: dict[str, Any], prompts: list, sampling: dict[str, Any],
                     warmup_prompts: list | None = None) -> dict[str, Any]:
    """Build an LLM, run the warm-up prompts, then time one ``generate`` over ``prompts``.
    Module-level and argument-picklable so it can run in a spawned process."""
    llm = create_llm(kwargs)
    params = sampling_params(**sampling)
    if warmup_prompts:
        llm.generate(warmup_prompts, params, use_tqdm=False)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=True)
    elapsed = time.perf_counter() - start
    prompt_tokens, output_tokens, cached = count_tokens(outputs)
    return {"elapsed_time": elapsed, "num_requests": len(prompts), "prompt_tokens": prompt_tokens,
            "output_tokens": output_tokens, "cached_prompt_tokens": cached,
            "requests_per_second": len(prompts) / elapsed,
            "total_tokens_per_second": (prompt_tokens + output_tokens) / elapsed,
            "output_tokens_per_second": output_tokens / elapsed}


def _call_in_child(queue, fn, args) -> None:
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as exc:  # report it to the parent instead of dying silently
        import traceback
        queue.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"))


def call_in_fresh_process(fn, *args: Any, env: dict[str, str] | None = None) -> Any:
    """``fn(*args)`` (a module-level function) in a spawned process started with ``env`` over this environment;
    its result, or a RuntimeError with the child's error."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_call_in_child, args=(queue, fn, args))
    with envs.environment(env or {}):     # the spawned process starts with this process's environment
        proc.start()
    try:
        status, payload = queue.get()
    finally:
        proc.join()
    if status != "ok":
        raise RuntimeError(f"The benchmark process failed: {payload}")
    return payload


def measure_in_fresh_process(kwargs: dict[str, Any], prompts: list, sampling: dict[str, Any],
                             warmup_prompts: list | None = None) -> dict[str, Any]:
    """``measure_generate`` in a spawned process, so that each engine starts on a freshly freed device."""
    return call_in_fresh_process(measure_generate, kwargs, prompts, sampling, warmup_prompts)


def compare_prefix_caching(args: argparse.Namespace, prompts: list, sampling: dict[str, Any],
                           warmup_prompts: list | None, title: str) -> dict[str, Any]:
    """Time ``prompts`` with prefix caching off and on (or only the mode given by --[no-]enable-prefix-caching),
    print both and the speedup; returns the per-mode figures."""
    if args.enable_prefix_caching is None:
        modes = [False, True]
    else:
        modes = [bool(args.enable_prefix_caching)]
    results: dict[str, Any] = {}
    for enabled in modes:
        name = f"prefix_caching_{'on' if enabled else 'off'}"
        print(f"------ {title}: prefix caching {'ON' if enabled else 'OFF'} ------")
        kwargs = engine_kwargs(args, enable_prefix_caching=enabled)
        if len(modes) > 1:
            res = measure_in_fresh_process(kwargs, prompts, sampling, warmup_prompts)
        else:
            res = measure_generate(kwargs, prompts, sampling, warmup_prompts)
        print(f"cost time {res['elapsed_time']:.4f} s")
        results[name] = res
    print(format_prefix_caching_report(title, results))
    if "prefix_caching_on" in results and "prefix_caching_off" in results:
        results["speedup"] = (results["prefix_caching_off"]["elapsed_time"]
                              / results["prefix_caching_on"]["elapsed_time"])
    return results


def format_prefix_caching_report(title: str, results: dict[str, dict[str, Any]]) -> str:
    lines = ["{:=^80}".format(f" {title} Result "),
             f"{'mode':<20}{'time (s)':>10}{'req/s':>10}{'total tok/s':>14}{'output tok/s':>14}"
             f"{'cache hits':>12}"]
    for name in ("prefix_caching_off", "prefix_caching_on"):
        if name not in results:
            continue
        r = results[name]
        hits = "n/a"
        if r["cached_prompt_tokens"] is not None and r["prompt_tokens"]:
            hits = f"{100.0 * r['cached_prompt_tokens'] / r['prompt_tokens']:.1f}%"
        label = "prefix caching " + name.rsplit("_", 1)[1]
        lines.append(f"{label:<20}{r['elapsed_time']:>10.3f}{r['requests_per_second']:>10.2f}"
                     f"{r['total_tokens_per_second']:>14.2f}{r['output_tokens_per_second']:>14.2f}{hits:>12}")
    if "prefix_caching_on" in results and "prefix_caching_off" in results:
        speedup = results["prefix_caching_off"]["elapsed_time"] / results["prefix_caching_on"]["elapsed_time"]
        lines.append(f"Speedup with prefix caching: {speedup:.2f}x")
    lines.append("=" * 80)
    return "\n".join(lines)


def optional_prefix_caching_flag(parser: argparse.ArgumentParser) -> None:
    """Make --[no-]enable-prefix-caching default to None (= measure both modes) for the prefix-cache benchmarks."""
    parser.set_defaults(enable_prefix_caching=None)
