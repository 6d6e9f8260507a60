"""Fixtures for the benchmark tests: a fake OpenAI-compatible streaming server with known timings, and a word-level
tokenizer (one token per whitespace-separated word) so token counts in tests are exact."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from fake_server_model import MODEL_ID  # noqa: E402


@dataclass
class FakeServerConfig:
    ttft_s: float = 0.100            # delay before the first token chunk
    itl_s: float = 0.020             # delay between token chunks
    send_usage: bool = True          # honour stream_options.include_usage
    fail_every: int | None = None    # answer HTTP 500 to requests whose arrival index % fail_every == fail_every - 1
    fail_first: int = 0              # answer HTTP 503 to the first fail_first requests (a server still starting)
    no_profiler: bool = False        # /start_profile and /stop_profile answer 404 (pagedllm serve)
    model_root: str | None = None    # the "root" /v1/models gives its model (the served model's path, as vLLM's)


@dataclass
class ReceivedRequest:
    index: int
    path: str
    arrival: float                   # time.perf_counter() on arrival
    body: dict[str, Any]
    headers: dict[str, str]          # lower-case names


class FakeOpenAIServer:
    """Streams ``max_tokens`` tokens per request: the first after ``ttft_s``, then one every ``itl_s``."""

    def __init__(self, ssl_context=None) -> None:
        self.ssl_context = ssl_context       # an ssl.SSLContext: serve https
        self.config = FakeServerConfig()
        self.requests: list[ReceivedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    # ---- lifecycle ----
    def start(self) -> "FakeOpenAIServer":
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("fake server did not start")
        return self

    def stop(self) -> None:
        async def shutdown():
            await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def reset(self, **config: Any) -> None:
        self.config = FakeServerConfig(**config)
        self.requests = []
        self.max_in_flight = 0

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/chat/completions", self._generate)
        app.router.add_post("/v1/embeddings", self._embed)
        app.router.add_post("/start_profile", self._profile)
        app.router.add_post("/stop_profile", self._profile)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    # ---- handlers ----
    async def _profile(self, request: web.Request) -> web.Response:
        """vLLM's profiler routes: recorded; 200 unless the config says the server has none (404)."""
        self.requests.append(ReceivedRequest(len(self.requests), request.path, time.perf_counter(), {},
                                             {k.lower(): v for k, v in request.headers.items()}))
        return web.Response(status=404 if self.config.no_profiler else 200)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        card = {"id": MODEL_ID, "object": "model"}
        if self.config.model_root is not None:
            card["root"] = self.config.model_root
        return web.json_response({"object": "list", "data": [card]})

    async def _embed(self, request: web.Request) -> web.Response:
        """One JSON answer after ``ttft_s``: a 4-float vector per input, usage = the input's length."""
        body = await request.json()
        self.requests.append(ReceivedRequest(len(self.requests), request.path, time.perf_counter(), body,
                                             {k.lower(): v for k, v in request.headers.items()}))
        await asyncio.sleep(self.config.ttft_s)
        prompt = body["input"]
        n_in = len(prompt) if isinstance(prompt, list) else len(prompt.split())
        return web.json_response({"object": "list", "data": [{"index": 0, "object": "embedding",
                                                             "embedding": [0.5] * 4}],
                                  "usage": {"prompt_tokens": n_in, "total_tokens": n_in}})

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        arrival = time.perf_counter()
        body = await request.json()
        index = len(self.requests)
        self.requests.append(ReceivedRequest(index, request.path, arrival, body,
                                             {k.lower(): v for k, v in request.headers.items()}))
        cfg = self.config
        if index < cfg.fail_first:
            return web.json_response({"error": {"message": "starting", "code": 503}}, status=503)
        if cfg.fail_every and index % cfg.fail_every == cfg.fail_every - 1:
            return web.json_response({"error": {"message": "injected failure", "code": 500}}, status=500)
        chat = request.path.endswith("chat/completions")
        n_out = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        n_in = len(prompt) if isinstance(prompt, list) else len(prompt.split())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await asyncio.sleep(cfg.ttft_s)
            for i in range(n_out):
                if i:
                    await asyncio.sleep(cfg.itl_s)
                finish = "length" if i == n_out - 1 else None
                if chat:
                    delta = {"content": f" w{i}"}
                    if i == 0:
                        delta["role"] = "assistant"
                    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice]}
                else:
                    choice = {"index": 0, "text": f" w{i}", "logprobs": None, "finish_reason": finish}
                    chunk = {"id": "cmpl-1", "object": "text_completion", "choices": [choice]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if cfg.send_usage and (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
                await resp.write(f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:
            self.in_flight -= 1


@pytest.fixture(scope="session")
def fake_server():
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def word_tokenizer_dir(tmp_path_factory):
    """A saved HF fast tokenizer: whitespace words, vocabulary w0..w4999 (anything else is [UNK]), no BOS/EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"[UNK]": 0, "[PAD]": 1}
    for i in range(5000):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    folder = tmp_path_factory.mktemp("word_tokenizer")
    fast.save_pretrained(str(folder))
    return str(folder)
