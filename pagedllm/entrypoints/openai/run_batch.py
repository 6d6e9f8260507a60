"""``pagedllm run-batch -i requests.jsonl -o results.jsonl --model M``: vLLM's ``vllm run-batch``, OpenAI's batch file
format run offline.

Each input line is ``{"custom_id", "method": "POST", "url", "body"}`` with ``url`` one of BATCH_URLS; each output
line (same order) is ``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``: ``body``
is what the server would have answered, ``error`` is null on success and the server's error object otherwise. The
requests go, all at once, through the same app the server runs (``build_app``, driven in-process over ASGI), so
validation, defaults and error messages are the server's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import uuid
from typing import Any

from pagedllm.config import EngineArgs, verify_engine_args
from pagedllm.entrypoints.openai.cli_args import (_RESPONSE_FLAGS, check_limit_args, load_chat_template,
                                                  make_serve_parser)

BATCH_URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/score", "/v1/rerank")


def make_run_batch_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("-i", "--input-file", required=True, type=str,
                        help="The batch file: one JSON request per line (a local path, or an http(s) URL read with "
                             "GET).")
    parser.add_argument("-o", "--output-file", required=True, type=str,
                        help="Where the results go: one JSON line per request, in the input's order (a local path, "
                             "or an http(s) URL they are uploaded to with PUT).")
    parser.add_argument("--output-tmp-dir", type=str, default=None,
                        help="With an output URL: write the results to a file in this folder before the upload "
                             "(default: in memory).")
    parser.add_argument("--response-role", type=str, default="assistant",
                        help="Role of the generated message when add_generation_prompt is true.")
    parser.add_argument("--chat-template", type=str, default=None,
                        help="Chat template: a file path or the template itself. None = the tokenizer's.")
    parser.add_argument("--served-model-name", type=str, nargs="+", default=None,
                        help="Model name(s) the requests' \"model\" may use. None = the model path.")
    EngineArgs.add_cli_args(parser)
    parser.add_argument("--max-log-len", type=int, default=None,
                        help="Max number of prompt characters or ids printed in request logs. None = unlimited.")
    parser.add_argument("--enable-metrics", action="store_true",
                        help="Serve the engine's Prometheus metrics at http://URL:PORT/metrics while the batch runs.")
    parser.add_argument("--url", type=str, default="0.0.0.0",
                        help="Address of the Prometheus metrics server (with --enable-metrics).")
    parser.add_argument("--port", type=int, default=8000,
                        help="Port of the Prometheus metrics server (with --enable-metrics).")
    response_flags = dict(_RESPONSE_FLAGS)
    for flag in ("--enable-prompt-tokens-details", "--enable-force-include-usage"):
        parser.add_argument(flag, action="store_true", help=response_flags[flag])
    return parser


def _server_args(args: argparse.Namespace) -> argparse.Namespace:
    """The server's settings for ``build_app``: its defaults, with this command's values over them."""
    server = make_serve_parser(argparse.ArgumentParser(), model_positional=False).parse_args([])
    for name, value in vars(args).items():
        setattr(server, name, value)
    server.chat_template = load_chat_template(args.chat_template)
    server.disable_frontend_multiprocessing = True    # nothing to serve meanwhile: the engine core in a thread
    server.log_requests = False
    server.api_key = None
    return server


def _is_url(path: str) -> bool:
    return path.startswith(("http://", "https://"))


def _read_requests(path: str) -> list[dict]:
    if _is_url(path):
        import httpx
        response = httpx.get(path, follow_redirects=True, timeout=300)
        if response.status_code != 200:
            raise ValueError(f"--input-file {path}: GET answered {response.status_code}.")
        lines = response.text.splitlines()
    else:
        with open(path) as f:
            lines = f.read().splitlines()
    requests = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not a JSON line ({e}).") from None
        # custom_id is how a caller matches a result line to its request (OpenAI's batch format and vLLM's
        # BatchRequestInput require it, a string): one missing or of another type is refused, not echoed as null.
        if (not isinstance(request, dict) or not isinstance(request.get("body"), dict) or "url" not in request
                or not isinstance(request.get("custom_id"), str) or not isinstance(request.get("method"), str)):
            raise ValueError(f"{path}:{number}: a batch request needs \"custom_id\" and \"method\" (strings), "
                             f"\"url\" and a JSON object \"body\".")
        requests.append(request)
    return requests


def _write_results(path: str, text: str, tmp_dir: str | None) -> None:
    """The results to a local file, or uploaded to an http(s) URL with PUT (from a temporary file in ``tmp_dir``
    when given, as vLLM's --output-tmp-dir)."""
    if not _is_url(path):
        with open(path, "w") as f:
            f.write(text)
        return
    import httpx
    if tmp_dir is None:
        response = httpx.put(path, content=text.encode(), timeout=1000)
    else:
        with tempfile.NamedTemporaryFile("w+b", dir=tmp_dir, suffix=".jsonl") as f:
            size = f.write(text.encode())
            del text                             # the file, not memory, holds the results while they upload
            f.seek(0)
            response = httpx.put(path, content=iter(lambda: f.read(1 << 20), b""), timeout=1000,
                                 headers={"Content-Length": str(size)})
    if response.status_code != 200:
        raise ValueError(f"--output-file {path}: PUT answered {response.status_code}.")


def _output(request: dict, status: int, body: Any, error: Any) -> dict:
    return {"id": f"pagedllm-{uuid.uuid4().hex}", "custom_id": request.get("custom_id"),
            "response": {"status_code": status, "request_id": f"pagedllm-batch-{uuid.uuid4().hex}", "body": body},
            "error": error}


async def _run_one(client, request: dict) -> dict:
    url, method = request["url"], request.get("method", "POST")
    if url not in BATCH_URLS:
        return _output(request, 400, None, {"message": f"URL {url} is not supported in a batch; use one of "
                                                       f"{', '.join(BATCH_URLS)}.", "type": "BadRequestError",
                                            "param": "url", "code": 400})
    if method != "POST":
        return _output(request, 400, None, {"message": f"method must be POST, got {method!r}.",
                                            "type": "BadRequestError", "param": "method", "code": 400})
    if request["body"].get("stream"):
        return _output(request, 400, None, {"message": "stream is not supported in a batch.",
                                            "type": "BadRequestError", "param": "stream", "code": 400})
    response = await client.post(url, json=request["body"])
    body = response.json()
    if response.status_code == 200:
        return _output(request, 200, body, None)
    return _output(request, response.status_code, None, body.get("error", body))


async def run_batch_async(args: argparse.Namespace) -> int:
    import httpx
    from tqdm.auto import tqdm

    from pagedllm.entrypoints.openai.api_server import build_app, build_engine
    requests = _read_requests(args.input_file)
    server_args = _server_args(args)
    check_limit_args(server_args)
    engine, metrics, names = build_engine(server_args)
    try:
        if args.enable_metrics:
            # vLLM's: a Prometheus endpoint of its own (a daemon thread, serving until the process ends)
            from prometheus_client import start_http_server
            start_http_server(args.port, addr=args.url, registry=metrics.registry)
        app = build_app(server_args, engine, metrics, names)
        bar = tqdm(total=len(requests), desc="Running batch", dynamic_ncols=True)

        async def tracked(client, request):
            result = await _run_one(client, request)
            bar.update(1)
            return result
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://run-batch", timeout=None) as client:
            results = await asyncio.gather(*(tracked(client, r) for r in requests))
        bar.close()
    finally:
        engine.shutdown()
    _write_results(args.output_file, "".join(json.dumps(result, ensure_ascii=False) + "\n" for result in results),
                   args.output_tmp_dir)
    failed = sum(r["error"] is not None for r in results)
    print(f"Wrote {len(results)} results to {args.output_file} ({failed} failed).")
    return 0


def run_batch(args: argparse.Namespace) -> int:
    try:
        verify_engine_args(EngineArgs.from_cli_args(args))
        return asyncio.run(run_batch_async(args))
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
