"""`pagedllm bench serve`: online serving benchmark of an OpenAI-compatible server (vLLM's benchmark_serving).

Requests are sent as a Poisson process (Gamma when --burstiness != 1; the run's send times scaled to end at
num_prompts / rate, as vLLM), at a rate that climbs (--ramp-up-strategy), or all at once (--request-rate inf), capped
at --max-concurrency in flight, each streamed; the result block, metric definitions and --save-result JSON follow
vLLM.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any, Sequence

import numpy as np

from pagedllm.bench.datasets import SampleRequest, add_dataset_args, sample_requests
from pagedllm.bench.metrics import (PERCENTILE_METRICS, QUEUE_METRICS, MetricStats, calculate_metrics,
                                    format_result_block, parse_goodput, probe_stats, summary_dict)
from pagedllm.bench.utils import TOKENIZER_MODES, append_json_line, parse_percentiles, try_get_tokenizer, write_json

# Sampling fields sent with every request when their flag is given (vLLM's bench serve flags, same names).
SAMPLING_FLAGS = ("top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty")
DETAILED_KEYS = ("input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors", "start_times")


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from pagedllm.bench.request_funcs import BACKENDS
    parser.add_argument("--backend", type=str, default="openai", choices=sorted(BACKENDS),
                        help="openai / vllm / pagedllm: /v1/completions; openai-chat: /v1/chat/completions; "
                             "openai-embeddings: /v1/embeddings (an embedding server; E2EL only).")
    parser.add_argument("--base-url", type=str, default=None, help="Server URL, e.g. http://127.0.0.1:8000 "
                        "(instead of --host/--port).")
    parser.add_argument("--insecure", action="store_true",
                        help="Do not verify the server's SSL certificate (an https server with a self-signed one).")
    parser.add_argument("--host", type=str, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--endpoint", type=str, default=None,
                        help="API path (default: /v1/completions, or /v1/chat/completions for openai-chat).")
    parser.add_argument("--header", nargs="*", default=None, metavar="KEY=VALUE",
                        help="Headers sent with every request (after the OPENAI_API_KEY bearer token, before the "
                             "x-request-id).")
    parser.add_argument("--request-id-prefix", type=str, default=f"bench-{uuid.uuid4().hex[:8]}-",
                        help="Request i of the run is sent with the header x-request-id: PREFIX + i.")
    parser.add_argument("--ready-check-timeout-sec", type=int, default=0,
                        help="Before the run, send the first request and retry it for up to this many seconds until "
                             "the server answers (a server still starting). 0 (vLLM's default since PR 30975): no "
                             "such extra request.")
    parser.add_argument("--model", type=str, default=None,
                        help="Model id (default: the first model the server lists at /v1/models: its root is the model "
                             "id and the tokenizer's, its id the name the requests send).")
    parser.add_argument("--served-model-name", type=str, default=None,
                        help="Model name sent in requests (default: --model).")
    parser.add_argument("--tokenizer", type=str, default=None, help="Tokenizer id or path (default: --model).")
    parser.add_argument("--tokenizer-mode", type=str, default="auto", choices=list(TOKENIZER_MODES),
                        help="auto / hf: the fast tokenizer when there is one; slow: the Python one.")
    parser.add_argument("--lora-modules", nargs="+", default=None, metavar="NAME",
                        help="LoRA adapters the server serves: each request names one of them as its model, chosen "
                             "as --lora-assignment says.")
    parser.add_argument("--lora-assignment", type=str, default="random", choices=["random", "round-robin"],
                        help="How requests get a --lora-modules adapter: random (seeded by --seed), or round-robin "
                             "(request i the (i mod N)-th).")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--skip-tokenizer-init", action="store_true",
                        help="Load no tokenizer: synthetic prompts go as token ids, output tokens come from usage.")
    add_dataset_args(parser, default_dataset="random")
    parser.add_argument("--num-prompts", type=int, default=1000, help="Number of prompts to process.")
    parser.add_argument("--input-len", type=int, default=None,
                        help="Input tokens per request of the random dataset (overrides --random-input-len).")
    parser.add_argument("--output-len", type=int, default=None,
                        help="Output tokens per request, whatever the dataset (overrides --random-output-len, "
                             "--sharegpt-output-len, --custom-output-len, ...).")
    parser.add_argument("--request-rate", type=float, default=float("inf"),
                        help="Requests per second (Poisson arrivals); inf sends all at once.")
    parser.add_argument("--ramp-up-strategy", type=str, default=None, choices=list(RAMP_UP_STRATEGIES),
                        help="Raise the request rate from --ramp-up-start-rps to --ramp-up-end-rps over the run "
                             "(instead of --request-rate).")
    parser.add_argument("--ramp-up-start-rps", type=int, default=None, help="Request rate at the start of a ramp-up.")
    parser.add_argument("--ramp-up-end-rps", type=int, default=None, help="Request rate at the end of a ramp-up.")
    parser.add_argument("--probe-request-rate", type=float, default=0.0,
                        help="If positive, send one-token 'Hi' probe requests at this rate (req/s) beside the "
                             "workload, outside --max-concurrency, and report their latency in their own section "
                             "(how the workload stalls an unrelated request).")
    parser.add_argument("--burstiness", type=float, default=1.0,
                        help="Gamma shape of the inter-arrival times: 1 = Poisson, <1 burstier, >1 more uniform.")
    parser.add_argument("--max-concurrency", type=int, default=None, help="Most requests in flight at once.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ignore-eos", action="store_true",
                        help="Send ignore_eos=true (fixed output lengths); always on with --dataset-name random.")
    parser.add_argument("--logprobs", type=int, default=None, help="Logprobs per output token to request.")
    parser.add_argument("--use-beam-search", action="store_true",
                        help="Accepted for vLLM's command lines, and without effect there too: vLLM's bench serve "
                             "no longer sends beam-search requests. A warning says so.")
    parser.add_argument("--temperature", type=float, default=None,
                        help="Sent when given; by default requests carry none and the server's default applies "
                             "(vLLM's bench serve since PR 32723; --temperature 0 for greedy).")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--min-p", type=float, default=None)
    parser.add_argument("--frequency-penalty", type=float, default=None)
    parser.add_argument("--presence-penalty", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--chat-template-kwargs", type=json.loads, default=None,
                        help="JSON keyword arguments for the chat template where the benchmark renders it itself "
                             "(custom, sonnet), e.g. '{\"enable_thinking\": false}'.")
    parser.add_argument("--extra-body", type=json.loads, default=None,
                        help="JSON object merged into every request body.")
    parser.add_argument("--num-warmups", type=int, default=0, help="Warm-up requests before the measured run.")
    parser.add_argument("--disable-tqdm", action="store_true", help="No progress bar.")
    parser.add_argument("--profile", action="store_true",
                        help="POST the server's /start_profile before the run and /stop_profile after it (vLLM's "
                             "profiler routes: a vLLM server started with a profiler config). pagedllm serve has no "
                             "profiler routes yet: the run goes on and a warning says so.")
    parser.add_argument("--percentile-metrics", type=str, default=None,
                        help='Comma-separated metrics to report percentiles of, from "ttft,tpot,itl,e2el" and, '
                             'with --max-concurrency, "client_queue_time" (arrival to send) and '
                             '"e2el_including_client_queue" (with a finite --request-rate) (default "ttft,tpot,itl"; '
                             '"e2el" for openai-embeddings).')
    parser.add_argument("--metric-percentiles", type=str, default="99",
                        help='Comma-separated percentiles, e.g. "25,50,75,99".')
    parser.add_argument("--goodput", nargs="+", default=None, metavar="KEY:MS",
                        help='SLOs as "KEY:VALUE" pairs in ms, keys ttft, tpot, e2el; reports request goodput.')
    parser.add_argument("--save-result", action="store_true", help="Write the result JSON.")
    parser.add_argument("--append-result", action="store_true",
                        help="Append the result JSON to the result file (one JSON object a line) instead of "
                             "overwriting it; implies saving.")
    parser.add_argument("--save-detailed", action="store_true",
                        help="Also store per-request arrays (input_lens, output_lens, ttfts, itls, ...).")
    parser.add_argument("--result-dir", type=str, default=None, help="Folder of the result JSON (default: cwd).")
    parser.add_argument("--result-filename", type=str, default=None,
                        help="File name (default: {label}-{rate}qps[-concurrency{N}]-{model}-{YYYYMMDD-HHMMSS}.json).")
    parser.add_argument("--metadata", nargs="*", default=None, metavar="KEY=VALUE",
                        help="Extra key=value pairs stored in the result JSON.")
    parser.add_argument("--label", type=str, default=None, help="Name of this run (default: the backend).")
    parser.add_argument("--plot-timeline", action="store_true",
                        help="Write an HTML timeline of the requests (TTFT, then each inter-token gap coloured by "
                             "--timeline-itl-thresholds) beside the result JSON, as <result>.timeline.html.")
    parser.add_argument("--timeline-itl-thresholds", type=str, default="25,50",
                        help="Two comma-separated ITL thresholds in ms for the timeline's colours (green below the "
                             "first, orange between, red above the second).")
    parser.add_argument("--plot-dataset-stats", action="store_true",
                        help="Write a PNG of the prompt / output token distributions beside the result JSON, as "
                             "<result>.dataset_stats.png.")
    parser.add_argument("--plot", type=str, default=None, metavar="FILE.png",
                        help="Draw TTFT/TPOT/ITL distributions and tokens/s over time into this PNG.")
    return parser


# ---- arrival schedule ---------------------------------------------------------------------------------------------
RAMP_UP_STRATEGIES = ("linear", "exponential")


def ramp_up_rates(num_requests: int, strategy: str, start_rps: float, end_rps: float) -> np.ndarray:
    """vLLM's --ramp-up-strategy: request i's rate goes from start_rps to end_rps with progress i / (n - 1),
    linearly or geometrically."""
    progress = np.arange(num_requests) / max(num_requests - 1, 1)
    if strategy == "linear":
        return start_rps + (end_rps - start_rps) * progress
    if strategy == "exponential":
        return start_rps * (end_rps / start_rps) ** progress
    raise ValueError(f"Unknown ramp-up strategy: {strategy}")


def request_intervals(num_requests: int, request_rate: float, burstiness: float = 1.0,
                      rng: np.random.Generator | None = None, rates: np.ndarray | None = None) -> np.ndarray:
    """Gap before each request (the first included; the send time of request i is the sum of gaps 0..i), as vLLM:
    Gamma(shape=burstiness, scale=1/(rate·burstiness)), so the mean gap is 1/rate and burstiness 1 is a Poisson
    process; burstiness inf gives even gaps of 1/rate. At one fixed rate the gaps are then scaled so that the last
    request goes out at num_requests / rate exactly (vLLM: a run's length no longer wanders by 1-2 % with the seed).
    ``rates``: a rate per request (a ramp-up), not scaled."""
    if not burstiness > 0:
        raise ValueError(f"burstiness must be positive, got {burstiness}.")
    per_request = rates if rates is not None else np.full(num_requests, float(request_rate))
    if num_requests and not (per_request > 0).all():
        raise ValueError(f"request rates must be positive, got {per_request.min()}.")
    rng = rng if rng is not None else np.random.default_rng(0)
    gaps = np.zeros(num_requests)
    finite = np.isfinite(per_request)
    if burstiness == float("inf"):
        gaps[finite] = 1.0 / per_request[finite]
    else:
        gaps[finite] = rng.gamma(shape=burstiness, scale=1.0 / (per_request[finite] * burstiness))
    total = gaps.sum()
    if rates is None and total > 0:
        gaps *= (num_requests / request_rate) / total
    return gaps


# ---- the run ------------------------------------------------------------------------------------------------------
READY_CHECK_RETRY_S = 5.0


async def wait_for_endpoint(request_func, request_input, session, timeout_s: float):
    """Send the test request until it succeeds or ``timeout_s`` has passed (vLLM's ready check: a server that is still
    loading refuses connections or answers 503), every READY_CHECK_RETRY_S; returns the last attempt's output."""
    deadline = time.monotonic() + timeout_s
    while True:
        output = await request_func(request_input, session)
        if output.success or time.monotonic() + READY_CHECK_RETRY_S > deadline:
            return output
        await asyncio.sleep(READY_CHECK_RETRY_S)


def _route_headers(extra_headers: dict[str, str] | None) -> dict[str, str]:
    """The headers of a request that is not a generation (/v1/models, the profiler routes): the API key and the
    --header pairs."""
    from pagedllm.bench.request_funcs import RequestFuncInput, _headers
    return _headers(RequestFuncInput(api_url="", model="", prompt="", prompt_len=0, output_len=0,
                                     extra_headers=extra_headers))


async def _post_profiler(session, url: str, headers: dict[str, str]) -> str | None:
    """POST a profiler route (vLLM's /start_profile, /stop_profile); None when it answered 200, else why not."""
    import aiohttp
    try:
        async with session.post(url, headers=headers) as resp:
            if resp.status == 200:
                return None
            return f"HTTP {resp.status} {resp.reason}"
    except aiohttp.ClientError as exc:
        return str(exc)


def _profiler_warning(route: str, why: str) -> str:
    return (f"WARNING: {route} failed ({why}): the server does not profile (vLLM serves it when started with a "
            f"profiler config; pagedllm serve has no profiler routes yet).")


async def _fetch_first_model(base_url: str, extra_headers: dict[str, str] | None = None,
                             insecure: bool = False) -> tuple[str, str]:
    """The first model of the server's /v1/models, as vLLM's bench serve reads it: (its id, the name requests
    send; its root, the served model's path: the model id, and the tokenizer's unless --tokenizer). A card without
    a root gives its id for both."""
    import aiohttp
    headers = _route_headers(extra_headers)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                         connector=aiohttp.TCPConnector(ssl=_ssl(insecure))) as session:
            async with session.get(base_url.rstrip("/") + "/v1/models", headers=headers) as resp:
                if resp.status != 200:
                    raise ValueError(f"GET {base_url}/v1/models answered HTTP {resp.status}; pass --model.")
                data = await resp.json()
    except aiohttp.ClientError as exc:
        raise ValueError(f"Cannot reach {base_url}/v1/models ({exc}); is the server running? (--model skips this "
                         "lookup)") from exc
    models = data.get("data") or []
    if not models:
        raise ValueError(f"The server at {base_url} lists no model; pass --model.")
    return models[0]["id"], models[0].get("root") or models[0]["id"]


def _ssl(insecure: bool) -> bool:
    """aiohttp's ssl argument: False skips certificate verification (--insecure: a self-signed server)."""
    return not insecure


def parse_key_values(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    """``["k=v", ...]`` (--header, --metadata) as a dict; an item without '=' names the flag."""
    pairs = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag} expects KEY=VALUE pairs, got {item!r}.")
        key, value = item.split("=", 1)
        pairs[key.strip()] = value.strip()
    return pairs


def _request_input(req: SampleRequest, index: int, *, api_url: str, model: str, chat: bool,
                   args: argparse.Namespace):
    from pagedllm.bench.request_funcs import POOLING_BACKENDS, RequestFuncInput
    common = dict(api_url=api_url, model=model, prompt_len=req.prompt_len,
                  extra_body={**(args.extra_body or {}), **(req.extra_body or {})} or None,
                  extra_headers=parse_key_values(args.header, "--header") or None,
                  request_id=f"{args.request_id_prefix}{index}")
    if args.backend in POOLING_BACKENDS:
        return RequestFuncInput(prompt=req.completion_prompt(), output_len=0, **common)
    sampling = {"temperature": args.temperature} if args.temperature is not None else {}
    for name in SAMPLING_FLAGS:
        if getattr(args, name) is not None:
            sampling[name] = getattr(args, name)
    return RequestFuncInput(prompt=req.chat_text() if chat else req.completion_prompt(),
                            output_len=req.expected_output_len, ignore_eos=args.ignore_eos, logprobs=args.logprobs,
                            sampling=sampling, **common)


async def run_benchmark(args: argparse.Namespace, requests: Sequence[SampleRequest], *, api_url: str, model: str,
                        base_url: str,
                        tokenizer, selected_metrics: Sequence[str], percentiles: Sequence[float],
                        goodput_slos: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send every request; returns (the vLLM result dict incl. per-request arrays, extra data for plotting)."""
    import aiohttp
    from pagedllm.bench.request_funcs import BACKENDS, CHAT_BACKENDS, POOLING_BACKENDS, REQUEST_TIMEOUT_S
    request_func = BACKENDS[args.backend][0]
    pooling = args.backend in POOLING_BACKENDS
    chat = args.backend in CHAT_BACKENDS
    inputs = [_request_input(r, i, api_url=api_url, model=model, chat=chat, args=args)
              for i, r in enumerate(requests)]
    test_input = replace(inputs[0], request_id=None)    # the test and warm-up requests carry no x-request-id (vLLM)
    if args.lora_modules:       # vLLM: each measured request names an adapter (the test request the base model)
        loras = args.lora_modules
        if args.lora_assignment == "round-robin":
            inputs = [replace(x, model=loras[i % len(loras)]) for i, x in enumerate(inputs)]
        else:
            inputs = [replace(x, model=random.choice(loras)) for x in inputs]

    connector = aiohttp.TCPConnector(limit=args.max_concurrency or 0, keepalive_timeout=60,
                                     ssl=_ssl(args.insecure))
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=True) as session:
        print("Starting initial single prompt test run...")
        if args.ready_check_timeout_sec > 0:
            test = await wait_for_endpoint(request_func, test_input, session, args.ready_check_timeout_sec)
            if not test.success:
                raise ValueError("Initial test run failed - Please make sure benchmark arguments are correctly "
                                 f"specified. Error: {test.error}")
            print("Initial test run completed.")
        else:
            print("Skipping endpoint ready check.")
        if args.num_warmups > 0:
            print(f"Warming up with {args.num_warmups} requests...")
            await asyncio.gather(*[request_func(test_input, session) for _ in range(args.num_warmups)])
            print("Warmup run completed.")
        print("Starting main benchmark run...")

        distribution = "Poisson process" if args.burstiness == 1.0 else "Gamma distribution"
        rates = None
        if args.ramp_up_strategy is not None:
            print(f"Traffic ramp-up strategy: {args.ramp_up_strategy}.")
            print(f"Will increase RPS from {args.ramp_up_start_rps} to {args.ramp_up_end_rps} RPS over the duration "
                  "of the benchmark.")
            rates = ramp_up_rates(len(inputs), args.ramp_up_strategy, args.ramp_up_start_rps, args.ramp_up_end_rps)
        else:
            print(f"Traffic request rate: {args.request_rate}")
        print(f"Burstiness factor: {args.burstiness} ({distribution})")
        print(f"Maximum request concurrency: {args.max_concurrency}")

        pbar = None
        if not args.disable_tqdm:
            from tqdm import tqdm
            pbar = tqdm(total=len(inputs))
        semaphore = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None

        async def send(request_input):
            arrival = time.perf_counter()
            if semaphore is None:
                out = await request_func(request_input, session)
            else:
                async with semaphore:
                    out = await request_func(request_input, session)
            out.client_queue_time = out.start_time - arrival     # vLLM's: the wait for a --max-concurrency slot
            if pbar is not None:
                pbar.update(1)
            return out

        profiler_headers = _route_headers(parse_key_values(args.header, "--header"))
        if args.profile:
            print("Starting profiler...")
            why = await _post_profiler(session, base_url + "/start_profile", profiler_headers)
            print("Profiler started" if why is None else _profiler_warning("/start_profile", why))
        probe_outputs: list = []
        probe_stop = asyncio.Event()

        async def probe_loop() -> None:
            # Its own session: the workload's connection limit (--max-concurrency) does not hold the probes back.
            probe_input = replace(test_input, prompt="Hi", prompt_len=1, output_len=1)
            async with aiohttp.ClientSession(timeout=timeout, trust_env=True,
                                             connector=aiohttp.TCPConnector(ssl=_ssl(args.insecure))) as probes:
                while not probe_stop.is_set():
                    probe_outputs.append(await request_func(probe_input, probes))
                    try:
                        await asyncio.wait_for(probe_stop.wait(), 1 / args.probe_request_rate)
                    except asyncio.TimeoutError:
                        pass

        probe_task = None
        if args.probe_request_rate > 0:
            print(f"Probe request rate: {args.probe_request_rate} req/s")
            probe_task = asyncio.create_task(probe_loop())

        gaps = request_intervals(len(inputs), args.request_rate, args.burstiness,
                                 np.random.default_rng(args.seed), rates=rates)
        arrival = np.cumsum(gaps)
        rps_change_events: list[dict[str, Any]] = []    # a ramp-up: when each whole RPS value was reached
        last_rps = -1
        if rates is not None:
            last_rps = args.ramp_up_start_rps
            rps_change_events.append({"rps": last_rps, "timestamp": datetime.now().isoformat()})
        start = time.perf_counter()
        tasks = []
        for i, (request_input, at) in enumerate(zip(inputs, arrival)):
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if rates is not None and int(rates[i]) > last_rps:
                stamp = datetime.now().isoformat()
                rps_change_events += [{"rps": rps, "timestamp": stamp} for rps in range(last_rps + 1,
                                                                                        int(rates[i]) + 1)]
                last_rps = int(rates[i])
            tasks.append(asyncio.create_task(send(request_input)))
        outputs = await asyncio.gather(*tasks)
        if probe_task is not None:
            probe_stop.set()
            await probe_task
        duration = time.perf_counter() - start
        if pbar is not None:
            pbar.close()
        if args.profile:
            print("Stopping profiler...")
            why = await _post_profiler(session, base_url + "/stop_profile", profiler_headers)
            print("Profiler stopped" if why is None else _profiler_warning("/stop_profile", why))

    metrics, output_lens = calculate_metrics([r.prompt_len for r in requests], outputs, duration, tokenizer,
                                             percentiles, goodput_slos)
    if args.max_concurrency is not None:     # vLLM's client-side queueing statistics (successful requests)
        done = [o for o in outputs if o.success]
        metrics.stats["client_queue_time"] = MetricStats.of([o.client_queue_time for o in done], percentiles)
        if args.request_rate != float("inf"):
            metrics.stats["e2el_including_client_queue"] = MetricStats.of(
                [o.latency + o.client_queue_time for o in done], percentiles)
    probe = probe_stats([o.latency for o in probe_outputs if o.success],
                        sum(not o.success for o in probe_outputs)) if probe_task is not None else None
    print(format_result_block(metrics, duration, selected_metrics=selected_metrics,
                              max_concurrency=args.max_concurrency, request_rate=args.request_rate,
                              goodput=bool(goodput_slos), pooling=pooling, probe=probe))
    failed = [o.error for o in outputs if not o.success]
    if failed:
        print(f"{len(failed)} request(s) failed; first error: {error_summary(failed[0])}", file=sys.stderr)
    result = summary_dict(metrics, duration, selected_metrics=selected_metrics, goodput=bool(goodput_slos),
                          pooling=pooling)
    result.update({
        "input_lens": [o.prompt_len for o in outputs],
        "output_lens": output_lens,
        "ttfts": [o.ttft for o in outputs],
        "itls": [o.itl for o in outputs],
        "generated_texts": [o.generated_text for o in outputs],
        "errors": [o.error for o in outputs],
        "start_times": [o.start_time - start for o in outputs],
        "latencies": [o.latency for o in outputs],     # vLLM's name of the per-request E2EL (s)
        "queue_times": [o.client_queue_time for o in outputs],
    })
    if probe is not None:
        result.update(probe)
    if rps_change_events:
        result["rps_change_events"] = rps_change_events
    return result, {"successes": [o.success for o in outputs]}


def result_filename(label: str, request_rate: float, max_concurrency: int | None, model_id: str,
                    now: datetime | None = None, ramp_up: tuple[str, int, int] | None = None) -> str:
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    concurrency = f"-concurrency{max_concurrency}" if max_concurrency is not None else ""
    rate = f"ramp-up-{ramp_up[0]}-{ramp_up[1]}qps-{ramp_up[2]}qps" if ramp_up else f"{request_rate}qps"
    return f"{label}-{rate}{concurrency}-{model_id.rstrip('/').split('/')[-1]}-{stamp}.json"


def _itl_thresholds(args: argparse.Namespace) -> tuple[float, float]:
    """--timeline-itl-thresholds in seconds (vLLM's check and words)."""
    try:
        values = [float(t.strip()) for t in args.timeline_itl_thresholds.split(",")]
        if len(values) != 2:
            raise ValueError(f"Expected 2 ITL threshold values, got {len(values)}")
    except ValueError as e:
        raise ValueError(f"Invalid --timeline-itl-thresholds format: {e}") from None
    return values[0] / 1e3, values[1] / 1e3


def check_ramp_up_args(args: argparse.Namespace) -> tuple[str, int, int] | None:
    """vLLM's checks of --ramp-up-strategy / --ramp-up-start-rps / --ramp-up-end-rps; (strategy, start, end)."""
    if args.ramp_up_strategy is None:
        if args.ramp_up_start_rps is not None or args.ramp_up_end_rps is not None:
            raise ValueError("--ramp-up-start-rps and --ramp-up-end-rps need --ramp-up-strategy (linear or "
                             "exponential).")
        return None
    if args.request_rate != float("inf"):
        raise ValueError("When using ramp-up, do not specify --request-rate. The request rate will be controlled by "
                         "ramp-up parameters. Please remove the --request-rate argument.")
    if args.ramp_up_start_rps is None or args.ramp_up_end_rps is None:
        raise ValueError("When using --ramp-up-strategy, both --ramp-up-start-rps and --ramp-up-end-rps must be "
                         "specified")
    if args.ramp_up_start_rps < 1 or args.ramp_up_end_rps < 1:
        # vLLM allows a start of 0 for linear and then fails on its first request's rate of 0.
        raise ValueError("Ramp-up start and end RPS must be at least 1.")
    if args.ramp_up_start_rps > args.ramp_up_end_rps:
        raise ValueError("Ramp-up start RPS must be less than end RPS")
    return args.ramp_up_strategy, args.ramp_up_start_rps, args.ramp_up_end_rps


def error_summary(error: str) -> str:
    """One failed request's error for the line after the table: a client-side exception is stored as its traceback's
    last 2,000 characters (as vLLM keeps the traceback), whose first 500 began mid-traceback ("no 111] Connect call
    failed ...") and never reached the exception itself; its last line names it (ClientConnectorError: Cannot
    connect to host ...). An HTTP error is kept as it is. (The kept tail may have lost the "Traceback" header: a
    frame line marks it too.)"""
    if "Traceback (most recent call last)" in error or '\n  File "' in error:
        lines = [line for line in error.splitlines() if line.strip()]
        return lines[-1][:500] if lines else error[:500]
    return error[:500]


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; returns the result dict (as saved with --save-result, with the detailed arrays)."""
    from pagedllm.bench.request_funcs import BACKENDS, CHAT_BACKENDS, POOLING_BACKENDS
    pooling = args.backend in POOLING_BACKENDS
    goodput_slos = parse_goodput(args.goodput)
    percentile_metrics = args.percentile_metrics or ("e2el" if pooling else "ttft,tpot,itl")
    selected_metrics = [m.strip() for m in percentile_metrics.split(",") if m.strip()]
    allowed = (("e2el",) if pooling else PERCENTILE_METRICS) + QUEUE_METRICS
    unknown = [m for m in selected_metrics if m not in allowed]
    if unknown:
        raise ValueError(f"--percentile-metrics accepts {','.join(allowed)} with --backend {args.backend}; got "
                         f"{','.join(unknown)}.")
    # vLLM computes the queueing metrics only where a request can wait; asked for elsewhere, say so.
    if args.max_concurrency is None and any(m in QUEUE_METRICS for m in selected_metrics):
        raise ValueError("--percentile-metrics client_queue_time / e2el_including_client_queue need "
                         "--max-concurrency: without it no request waits on the client.")
    if "e2el_including_client_queue" in selected_metrics and args.request_rate == float("inf"):
        raise ValueError("--percentile-metrics e2el_including_client_queue needs a finite --request-rate (vLLM "
                         "measures it only then).")
    if pooling:
        generation_only = [flag for flag, value in (
            ("--temperature", args.temperature),
            *(("--" + name.replace("_", "-"), getattr(args, name)) for name in SAMPLING_FLAGS),
            ("--logprobs", args.logprobs), ("--ignore-eos", args.ignore_eos or None), ("--goodput", args.goodput),
            ("--output-len", args.output_len)) if value is not None]
        if generation_only:
            raise ValueError(f"{', '.join(generation_only)} apply to generation backends, not --backend "
                             f"{args.backend}.")
    percentiles = parse_percentiles(args.metric_percentiles)
    itl_thresholds = _itl_thresholds(args) if args.plot_timeline else None
    if args.temperature is None and not pooling:
        print("WARNING: pagedllm bench serve does not set temperature==0 (greedy) in requests by default (as vLLM's "
              "bench serve): the server's default sampling applies, which can be model/API specific. For greedy "
              "requests, include --temperature=0.")
    if args.use_beam_search:
        print("WARNING: --use-beam-search has no effect: requests are sampled as without it (vLLM's bench serve "
              "accepts the flag and sends no beam-search request either).")
    ramp_up = check_ramp_up_args(args)
    if args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}.")
    if not 0 <= args.probe_request_rate < float("inf"):
        raise ValueError(f"--probe-request-rate must be a finite rate >= 0 (0: no probes), got "
                         f"{args.probe_request_rate}.")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError(f"--max-concurrency must be >= 1, got {args.max_concurrency}.")
    random.seed(args.seed)
    np.random.seed(args.seed)

    base_url = (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")
    endpoint = args.endpoint or BACKENDS[args.backend][1]
    api_url = base_url + endpoint
    if args.model is None:
        print("Model not specified, fetching first model from server...")
        request_model, model_id = asyncio.run(_fetch_first_model(
            base_url, parse_key_values(args.header, "--header"), insecure=args.insecure))
        print(f"First model name: {request_model}, first model id: {model_id}")
    else:
        model_id = args.model
        request_model = args.served_model_name or model_id
    chat = args.backend in CHAT_BACKENDS
    if args.dataset_name == "random" and not pooling:
        # vLLM's rule: random prompts ask for --random-output-len tokens each, so EOS is ignored even without
        # --ignore-eos (else a random prompt often stops after a few tokens and the output lengths mean nothing).
        args.ignore_eos = True

    tokenizer = None
    if not args.skip_tokenizer_init:
        needs_tokenizer = args.dataset_name in ("sharegpt", "custom", "sonnet", "txt-slices") or chat
        tokenizer = try_get_tokenizer(args.tokenizer or model_id, trust_remote_code=args.trust_remote_code,
                                      required=needs_tokenizer, tokenizer_mode=args.tokenizer_mode)
    requests = sample_requests(args, tokenizer, args.num_prompts, input_len=args.input_len,
                               output_len=args.output_len)

    result, _ = asyncio.run(run_benchmark(args, requests, api_url=api_url, model=request_model, base_url=base_url,
                                          tokenizer=tokenizer, selected_metrics=selected_metrics,
                                          percentiles=percentiles, goodput_slos=goodput_slos))
    label = args.label or args.backend
    header: dict[str, Any] = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": args.backend,      # vLLM keeps this older name of "backend" too
        "backend": args.backend,
        "label": label,
        "endpoint": endpoint,
        "model_id": model_id,
        "tokenizer_id": args.tokenizer or model_id,
        "dataset_name": args.dataset_name,
        "num_prompts": args.num_prompts,
    }
    header.update(parse_key_values(args.metadata, "--metadata"))
    header["request_rate"] = args.request_rate if args.request_rate < float("inf") else "inf"
    header["burstiness"] = args.burstiness
    header["max_concurrency"] = args.max_concurrency
    if ramp_up is not None:
        header.update(zip(("ramp_up_strategy", "ramp_up_start_rps", "ramp_up_end_rps"), ramp_up))
    full = {**header, **result}

    path = None
    if args.save_result or args.save_detailed or args.append_result or args.plot_timeline or args.plot_dataset_stats:
        name = args.result_filename or result_filename(label, args.request_rate, args.max_concurrency, model_id,
                                                       ramp_up=ramp_up)
        path = os.path.join(args.result_dir, name) if args.result_dir else name
        if args.result_dir:
            os.makedirs(args.result_dir, exist_ok=True)
    if args.plot_timeline:        # vLLM's files: beside the result JSON, named after it
        from pagedllm.bench.plot import write_timeline_html
        timeline = os.path.splitext(path)[0] + ".timeline.html"
        write_timeline_html(full, timeline, itl_thresholds)
        print(f"Timeline plot saved to: {timeline}")
    if args.plot_dataset_stats:
        from pagedllm.bench.plot import plot_dataset_stats
        stats = os.path.splitext(path)[0] + ".dataset_stats.png"
        plot_dataset_stats(full, stats)
        print(f"Dataset statistics plot saved to: {stats}")
    if args.save_result or args.save_detailed or args.append_result:
        saved = dict(full)
        if not args.save_detailed:
            for key in DETAILED_KEYS:
                saved.pop(key, None)
        if args.append_result:
            append_json_line(path, saved)
        else:
            write_json(path, saved)
        print(f"Saved the result to {path}")
    if args.plot:
        from pagedllm.bench.plot import plot_serve_result
        plot_serve_result(full, args.plot)
        print(f"Saved the plot to {args.plot}")
    return full
