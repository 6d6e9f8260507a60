"""`pagedllm bench throughput`: offline throughput of one ``LLM.generate`` over all requests (vLLM's
benchmark_throughput), or of HF transformers ``generate`` in padded batches (``--backend hf``).

Every request uses SamplingParams(n, temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=its output length).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from pagedllm.bench.datasets import SampleRequest, add_dataset_args, sample_requests
from pagedllm.bench.offline import add_engine_args, create_llm, engine_kwargs, llm_tokenizer, sampling_params
from pagedllm.bench.utils import get_tokenizer, try_get_tokenizer, write_json

BACKENDS = ("pagedllm", "vllm", "hf")
HF_MAX_BATCH_TOKENS = 2048   # vLLM's rule: a padded HF batch holds at most this many prompt + output tokens


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--backend", type=str, default="pagedllm", choices=list(BACKENDS),
                        help="pagedllm (alias vllm): LLM.generate; hf: transformers generate in padded batches.")
    add_dataset_args(parser, default_dataset="sharegpt", with_random_lens=False)
    parser.add_argument("--dataset", type=str, default=None, help="Deprecated alias of --dataset-path.")
    parser.add_argument("--input-len", type=int, default=None, help="Input length of each random request.")
    parser.add_argument("--output-len", type=int, default=None,
                        help="Output length of each request (overrides the dataset's).")
    parser.add_argument("--prefix-len", type=int, default=0, help="Shared random prefix tokens (random dataset).")
    parser.add_argument("--random-range-ratio", type=float, default=0.0,
                        help="Random lengths are uniform in [len*(1-r), len*(1+r)].")
    parser.add_argument("--n", type=int, default=1, help="Sequences generated per prompt.")
    parser.add_argument("--num-prompts", type=int, default=1000, help="Number of prompts to process.")
    parser.add_argument("--hf-max-batch-size", type=int, default=None, help="Largest HF batch (hf backend only).")
    parser.add_argument("--output-json", type=str, default=None, help="Write the results to this JSON file.")
    parser.add_argument("--disable-detokenize", action="store_true", help="Do not detokenize the outputs.")
    parser.add_argument("--async-engine", action="store_true",
                        help="Add every request to an AsyncLLMEngine at once (the engine the server runs) instead of "
                             "one LLM.generate call.")
    parser.add_argument("--disable-frontend-multiprocessing", action="store_true",
                        help="With --async-engine: the engine core in a thread of this process, not its own process.")
    parser.add_argument("--lora-path", type=str, default=None,
                        help="A LoRA adapter (PEFT folder) for every request, under an id drawn per request from "
                             "1..max_loras (vLLM's: one adapter's weights, several adapters' slots); needs "
                             "--enable-lora.")
    parser.add_argument("--num-warmups", type=int, default=0,
                        help="Requests generated once before the timed run (first-call compile/caches).")
    parser.add_argument("--profile", action="store_true",
                        help="Run the engine's profiler (LLM.start_profile / stop_profile) over the timed run; needs "
                             "--profiler-config '{\"profiler\": \"torch\", \"torch_profiler_dir\": DIR}' or "
                             "VLLM_TORCH_PROFILER_DIR.")
    add_engine_args(parser)
    return parser


def validate_args(args: argparse.Namespace) -> None:
    if args.backend == "vllm":
        args.backend = "pagedllm"
    if args.dataset is not None:
        print("--dataset is deprecated; use --dataset-path.", file=sys.stderr)
        args.dataset_path = args.dataset_path or args.dataset
    if args.dataset_path is None and args.dataset_name == "sharegpt":
        print("When dataset path is not set, it will default to random dataset")
        args.dataset_name = "random"
    if args.dataset_name in ("json-schema", "regex", "choice"):
        raise ValueError(f"--dataset-name {args.dataset_name} is a structured-output dataset: `pagedllm bench serve` "
                         f"runs it (or benchmarks/benchmark_guided.py offline); bench throughput would drop its "
                         f"constraints.")
    if args.dataset_name == "random" and args.input_len is None:
        raise ValueError("input_len must be provided for a random dataset (--input-len).")
    if args.backend == "hf":
        if args.hf_max_batch_size is None:
            raise ValueError("HF max batch size is required for HF backend (--hf-max-batch-size).")
    elif args.hf_max_batch_size is not None:
        raise ValueError("HF max batch size is only for HF backend.")
    if args.backend == "hf" and args.profile:
        raise ValueError("--profile is not implemented for the hf backend (it runs the pagedllm engine's "
                         "profiler).")
    if args.backend == "hf" and (args.async_engine or args.disable_frontend_multiprocessing):
        raise ValueError("--async-engine and --disable-frontend-multiprocessing apply to the pagedllm (vllm) "
                         "backend, not hf.")
    if args.disable_frontend_multiprocessing and not args.async_engine:
        raise ValueError("--disable-frontend-multiprocessing applies with --async-engine.")
    if args.lora_path is not None:
        if args.backend == "hf":
            raise ValueError("--lora-path is for the pagedllm (vllm) backend, not hf.")
        if not args.enable_lora:
            raise ValueError("--lora-path needs --enable-lora (the engine's adapter slots).")
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}.")
    if args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}.")


def get_requests(args: argparse.Namespace, tokenizer) -> list[SampleRequest]:
    if args.dataset_name == "random":
        return sample_requests(args, tokenizer, args.num_prompts, input_len=args.input_len,
                               output_len=args.output_len if args.output_len is not None else 128,
                               range_ratio=args.random_range_ratio, prefix_len=args.prefix_len)
    return sample_requests(args, tokenizer, args.num_prompts, input_len=args.input_len, output_len=args.output_len)


def _requests_and_params(args: argparse.Namespace, tokenizer, **extra: Any) -> tuple[list, list, list]:
    """The sampled requests, their engine prompts and vLLM's throughput sampling (temperature 1, ignore_eos,
    max_tokens = the expected output length)."""
    if tokenizer is None and args.dataset_name == "sharegpt":
        tokenizer = try_get_tokenizer(args.tokenizer or args.model, args.trust_remote_code, required=True)
    requests = get_requests(args, tokenizer)
    params = [sampling_params(n=args.n, temperature=1.0, top_p=1.0, ignore_eos=True,
                              max_tokens=r.expected_output_len, detokenize=not args.disable_detokenize, **extra)
              for r in requests]
    return requests, [r.llm_prompt() for r in requests], params


def _lora_requests(args: argparse.Namespace, count: int) -> list | None:
    """``--lora-path``: one LoRARequest a request, its id drawn from 1..max_loras with ``--seed`` (vLLM's
    benchmark does the same: every id names the same weights, so the run exercises several adapters' slots)."""
    if args.lora_path is None:
        return None
    import random

    from pagedllm.lora.request import LoRARequest
    rng = random.Random(args.seed)
    ids = [rng.randint(1, max(1, args.max_loras)) for _ in range(count)]
    return [LoRARequest(f"lora-{i}", i, args.lora_path) for i in ids]


def run_pagedllm_async(args: argparse.Namespace) -> dict[str, Any]:
    """vLLM's --async-engine: every request added to an AsyncLLMEngine at once, timed until the last one ends."""
    import asyncio

    from pagedllm.config import EngineArgs
    from pagedllm.engine.async_engine import AsyncLLMEngine
    from pagedllm.sampling_params import RequestOutputKind
    engine = AsyncLLMEngine.from_engine_args(EngineArgs(**engine_kwargs(args)), log_requests=False,
                                             engine_process=not args.disable_frontend_multiprocessing)
    try:
        requests, prompts, params = _requests_and_params(args, engine.tokenizer,
                                                         output_kind=RequestOutputKind.FINAL_ONLY)

        loras = _lora_requests(args, len(prompts)) or [None] * len(prompts)

        async def generate(tag: str, count: int) -> list:
            streams = [await engine.add_request(f"{tag}{i}", prompts[i], params[i], lora_request=loras[i])
                       for i in range(count)]
            finals = []
            for stream in streams:
                async for out in stream:
                    if out.finished:
                        finals.append(out)
            return finals

        if args.num_warmups > 0:
            asyncio.run(generate("warmup-", min(args.num_warmups, len(prompts))))
        async def timed_run() -> list:
            if args.profile:
                await engine.start_profile()
            finals = await generate("", len(prompts))
            if args.profile:
                await engine.stop_profile()
            return finals

        start = time.perf_counter()
        outputs = asyncio.run(timed_run())
        elapsed = time.perf_counter() - start
    finally:
        engine.shutdown()
    return {"elapsed_time": elapsed, "num_requests": len(requests),
            "total_prompt_tokens": sum(len(o.prompt_token_ids or []) for o in outputs),
            "total_output_tokens": sum(len(c.token_ids) for o in outputs for c in o.outputs)}


def run_pagedllm(args: argparse.Namespace) -> dict[str, Any]:
    if args.async_engine:
        return run_pagedllm_async(args)
    llm = create_llm(engine_kwargs(args))
    requests, prompts, params = _requests_and_params(args, llm_tokenizer(llm))
    loras = _lora_requests(args, len(prompts))
    if args.num_warmups > 0:
        k = min(args.num_warmups, len(prompts))
        llm.generate(prompts[:k], params[:k], use_tqdm=False, lora_request=loras and loras[:k])
    start = time.perf_counter()
    if args.profile:
        llm.start_profile()
    outputs = llm.generate(prompts, params, use_tqdm=True, lora_request=loras)
    if args.profile:
        llm.stop_profile()
    elapsed = time.perf_counter() - start
    prompt_tokens = sum(len(o.prompt_token_ids or []) for o in outputs)
    output_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {"elapsed_time": elapsed, "num_requests": len(requests), "total_prompt_tokens": prompt_tokens,
            "total_output_tokens": output_tokens}


def _hf_dtype(name: str, on_cuda: bool):
    import torch
    table = {"half": torch.float16, "float16": torch.float16, "bfloat16": torch.bfloat16,
             "float": torch.float32, "float32": torch.float32}
    if name in table:
        return table[name]
    return torch.float16 if on_cuda else torch.float32   # vLLM's HF baseline runs fp16 on the GPU


def load_hf_model(model: str, dtype_name: str, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForCausalLM
    from pagedllm.bench.utils import resolve_hf_source
    source = resolve_hf_source(model)
    if source is None:
        raise OSError(f"Cannot find model {model!r} for the HF backend.")
    path, gguf_file = source
    on_cuda = torch.cuda.is_available()
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"   # renamed in transformers 4.56
    kwargs: dict[str, Any] = {dtype_key: _hf_dtype(dtype_name, on_cuda), "trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    hf_model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return hf_model.to("cuda" if on_cuda else "cpu").eval()


def _hf_batches(requests: list[SampleRequest], max_batch_size: int) -> list[list[SampleRequest]]:
    """Consecutive requests grouped while the batch is below max size and its padded prompt + output lengths stay
    within 2048 tokens (vLLM's rule)."""
    batches, batch = [], []
    max_prompt = max_output = 0
    for i, req in enumerate(requests):
        batch.append(req)
        max_prompt, max_output = max(max_prompt, req.prompt_len), max(max_output, req.expected_output_len)
        if len(batch) < max_batch_size and i != len(requests) - 1:
            nxt = requests[i + 1]
            if max(max_prompt, nxt.prompt_len) + max(max_output, nxt.expected_output_len) <= HF_MAX_BATCH_TOKENS:
                continue
        batches.append(batch)
        batch, max_prompt, max_output = [], 0, 0
    return batches


def run_hf(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from tqdm import tqdm
    tokenizer = get_tokenizer(args.tokenizer or args.model, trust_remote_code=args.trust_remote_code)
    requests = get_requests(args, tokenizer)
    model = load_hf_model(args.model, args.dtype, args.trust_remote_code)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = _hf_batches(requests, args.hf_max_batch_size)

    def run_batch(batch: list[SampleRequest]) -> None:
        ids = [r.prompt_token_ids if r.prompt_token_ids is not None
               else tokenizer(r.prompt_text).input_ids for r in batch]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):   # left padding, as decoder-only generation needs
            input_ids[row, width - len(x):] = torch.tensor(x, dtype=torch.long)
            mask[row, width - len(x):] = 1
        max_new = max(r.expected_output_len for r in batch)
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                 temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=args.n,
                                 max_new_tokens=max_new, min_new_tokens=max_new, use_cache=True,
                                 pad_token_id=pad_id)
        if not args.disable_detokenize:
            tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)

    if args.num_warmups > 0:
        run_batch(requests[:min(args.num_warmups, len(requests), args.hf_max_batch_size)])
    pbar = tqdm(total=len(requests))
    start = time.perf_counter()
    for batch in batches:
        run_batch(batch)
        pbar.update(len(batch))
    elapsed = time.perf_counter() - start
    pbar.close()
    return {"elapsed_time": elapsed, "num_requests": len(requests),
            "total_prompt_tokens": sum(r.prompt_len for r in requests),
            "total_output_tokens": sum(r.expected_output_len for r in requests) * args.n}


def main(args: argparse.Namespace) -> dict[str, Any]:
    validate_args(args)
    run = run_hf if args.backend == "hf" else run_pagedllm
    stats = run(args)
    elapsed = stats["elapsed_time"]
    total_tokens = stats["total_prompt_tokens"] + stats["total_output_tokens"]
    print(f"Throughput: {stats['num_requests'] / elapsed:.2f} requests/s, {total_tokens / elapsed:.2f} total tokens/s, "
          f"{stats['total_output_tokens'] / elapsed:.2f} output tokens/s")
    print(f"Total num prompt tokens:  {stats['total_prompt_tokens']}")
    print(f"Total num output tokens:  {stats['total_output_tokens']}")
    results = {
        "elapsed_time": elapsed,
        "num_requests": stats["num_requests"],
        "total_num_tokens": total_tokens,
        "requests_per_second": stats["num_requests"] / elapsed,
        "tokens_per_second": total_tokens / elapsed,
        "total_prompt_tokens": stats["total_prompt_tokens"],
        "total_output_tokens": stats["total_output_tokens"],
        "output_tokens_per_second": stats["total_output_tokens"] / elapsed,
        "backend": args.backend,
        "model": args.model,
    }
    if args.output_json:
        write_json(args.output_json, results)
    return results
