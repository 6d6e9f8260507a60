"""The official ``openai`` client (sync and async) against ``pagedllm serve``."""
from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from server_utils import MAX_MODEL_LEN, MODEL

PROMPT = "San Francisco is a"
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def async_client_factory(server):
    return lambda: openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def num_tokens(server, prompt: str) -> int:
    r = httpx.post(server.url + "/tokenize", json={"model": MODEL, "prompt": prompt})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == MAX_MODEL_LEN
    return body["count"]


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    card = models.data[0]
    assert card.object == "model" and card.owned_by == "pagedllm"
    assert card.model_extra["max_model_len"] == MAX_MODEL_LEN


def test_completion_and_usage(server, client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    assert out.object == "text_completion" and out.id.startswith("cmpl-") and out.model == MODEL
    (choice,) = out.choices
    assert choice.text and choice.finish_reason in ("length", "stop")
    assert out.usage.prompt_tokens == num_tokens(server, PROMPT)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    # completion_tokens counts the generated tokens: logprobs list one entry per token.
    with_lp = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=0)
    assert with_lp.choices[0].text == choice.text
    assert out.usage.completion_tokens == len(with_lp.choices[0].logprobs.tokens)
    assert out.usage.completion_tokens == 8 or choice.finish_reason == "stop"


def test_completion_stream_equals_non_stream(client):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks) == whole.choices[0].text
    assert len(text_chunks) >= 2                                     # it really streamed
    assert text_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_completion_n2_and_logprobs(client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=1.0, n=2, seed=7,
                                    logprobs=3)
    assert sorted(c.index for c in out.choices) == [0, 1]
    for c in out.choices:
        lp = c.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
        assert 1 <= len(lp.tokens) <= 4
        assert "".join(lp.tokens) == c.text
        for tok, tok_lp, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
            assert tok_lp <= 0.0
            assert 3 <= len(top) <= 4                                  # top-3 plus the sampled token
            assert top[tok] == pytest.approx(tok_lp, abs=1e-4)
        assert lp.text_offset == sorted(lp.text_offset)
    assert out.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in out.choices)


def test_completion_token_id_prompts_and_echo(client):
    ids = httpx.post(str(client.base_url).replace("/v1/", "") + "/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0)
    by_text = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    two = client.completions.create(model=MODEL, prompt=[ids, ids], max_tokens=5, temperature=0)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].text == two.choices[1].text == by_text.choices[0].text
    assert two.usage.prompt_tokens == 2 * len(ids)
    echo = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, echo=True)
    assert echo.choices[0].text == PROMPT + by_text.choices[0].text


def test_chat_completion(server, client):
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=10, temperature=0)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    (choice,) = out.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    r = httpx.post(server.url + "/tokenize", json={"model": MODEL, "messages": MESSAGES})
    assert out.usage.prompt_tokens == r.json()["count"]
    assert 1 <= out.usage.completion_tokens <= 10


def test_chat_stream_equals_non_stream(client):
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_logprobs_and_n2(client):
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0.8, n=2,
                                         logprobs=True, top_logprobs=2)
    assert len(out.choices) == 2
    for c in out.choices:
        content = c.logprobs.content
        assert 1 <= len(content) <= 4
        assert "".join(t.token for t in content) == c.message.content
        for t in content:
            assert t.logprob <= 0 and bytes(t.bytes).decode() == t.token
            assert len(t.top_logprobs) == 2
            assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob      # most likely first
            for alt in t.top_logprobs:
                if alt.token == t.token:
                    assert alt.logprob == pytest.approx(t.logprob, abs=1e-4)
    assert out.usage.completion_tokens == sum(len(c.logprobs.content) for c in out.choices)


def test_async_client(async_client_factory):
    async def main():
        client = async_client_factory()
        models = await client.models.list()
        assert models.data[0].id == MODEL
        whole, chat = await asyncio.gather(
            client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0),
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0))
        pieces = []
        async for chunk in await client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6,
                                                           temperature=0, stream=True):
            pieces.append(chunk.choices[0].text)
        assert "".join(pieces) == whole.choices[0].text
        deltas = []
        async for chunk in await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6,
                                                                temperature=0, stream=True):
            deltas.append(chunk.choices[0].delta.content or "")
        assert "".join(deltas) == chat.choices[0].message.content
        await client.close()

    asyncio.run(main())


def test_stop_string_and_detokenize(server, client):
    base = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0).choices[0].text
    word = base.split()[2]
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stop=[word])
    assert out.choices[0].finish_reason == "stop" and out.choices[0].model_extra["stop_reason"] == word
    assert out.choices[0].text == base[:base.index(word)]
    ids = httpx.post(server.url + "/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    assert httpx.post(server.url + "/detokenize", json={"tokens": ids}).json() == {"prompt": PROMPT}


def test_version_and_metrics(server):
    assert httpx.get(server.url + "/version").json()["version"]
    assert httpx.get(server.url + "/ping").status_code == 200
    text = httpx.get(server.url + "/metrics").text
    for name in ("pagedllm:num_requests_running", "pagedllm:num_requests_waiting", "pagedllm:kv_cache_usage_perc",
                 "pagedllm:prompt_tokens_total", "pagedllm:generation_tokens_total",
                 "pagedllm:time_to_first_token_seconds_bucket", "pagedllm:inter_token_latency_seconds_bucket",
                 "pagedllm:e2e_request_latency_seconds_count", "pagedllm:request_success_total",
                 "pagedllm:num_preemptions_total", "pagedllm:prefix_cache_queries_total",
                 "pagedllm:prefix_cache_hits_total", "pagedllm:iteration_tokens_total_bucket",
                 "pagedllm:request_params_n_bucket", "pagedllm:request_params_max_tokens_bucket",
                 "pagedllm:request_prefill_time_seconds_bucket", "pagedllm:request_decode_time_seconds_bucket",
                 "pagedllm:request_inference_time_seconds_bucket"):
        assert name in text, name
    assert f'model_name="{MODEL}"' in text
    assert 'finished_reason="length"' in text


def test_server_runs_on_uvloop_and_httptools(server, client):
    """Both are dependencies (as in vLLM's install): the start-up line names what the server runs on, and a streamed
    completion works through them."""
    with open(server.log.name) as f:
        started = next(line for line in f if "Starting the server on" in line)
    assert "event loop: uvloop; HTTP parser: httptools" in started
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
