"""vLLM's request extras and frontend flags, checked against a running server with the openai client: each test says
what vLLM returns for the same request."""
from __future__ import annotations

import time

import httpx
import pytest

from server_utils import MODEL, openai_client, server_fixture

MESSAGES = [{"role": "user", "content": "Hi"}]


server = server_fixture("--return-tokens-as-token-ids", "--enable-request-id-headers", "--enable-server-load-tracking",
                        "--enable-force-include-usage")


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


def test_bad_words_are_never_generated(server, client):
    # vLLM's chat extra (extra_body): the greedy answer starts with "Hello"; with bad_words=["Hello"] it cannot.
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=4, temperature=0)
    assert plain.choices[0].message.content.startswith("Hello")
    banned = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=4, temperature=0,
                                            extra_body={"bad_words": ["Hello"]})
    assert "Hello" not in banned.choices[0].message.content
    # The same field on /v1/completions, and a bad value is a 400 naming it.
    prompt = "Hello! Hello! Hello!"
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0,
                                    extra_body={"bad_words": ["Hello", " Hello"]})
    assert "Hello" not in out.choices[0].text
    r = httpx.post(server.url + "/v1/chat/completions",
                   json={"model": MODEL, "messages": MESSAGES, "max_completion_tokens": 2, "bad_words": [""]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "bad_words", r.text


def test_return_tokens_as_token_ids(server, client):
    # Server flag --return-tokens-as-token-ids: logprob tokens are "token_id:{id}" (the sampled ones and the top
    # ones); a request's return_tokens_as_token_ids=false gives the text back (vLLM: the request's value wins).
    out = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=3, temperature=0, logprobs=1,
                                    extra_body={"return_token_ids": True})
    (choice,) = out.choices
    ids = choice.model_extra["token_ids"]
    assert choice.logprobs.tokens == [f"token_id:{t}" for t in ids]
    assert all(f"token_id:{t}" in top for t, top in zip(ids, choice.logprobs.top_logprobs))
    text = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=3, temperature=0, logprobs=1,
                                     extra_body={"return_tokens_as_token_ids": False})
    assert "".join(text.choices[0].logprobs.tokens) == text.choices[0].text == choice.text

    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=2, temperature=0,
                                          logprobs=True, top_logprobs=2, extra_body={"return_token_ids": True})
    ids = chat.choices[0].model_extra["token_ids"]
    content = chat.choices[0].logprobs.content
    assert [c.token for c in content] == [f"token_id:{t}" for t in ids]
    assert content[0].bytes == list(f"token_id:{ids[0]}".encode())
    assert all(top.token.startswith("token_id:") for c in content for top in c.top_logprobs)
    streamed = [c for c in client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=2,
                                                          temperature=0, logprobs=True, stream=True)
                if c.choices and c.choices[0].logprobs]
    assert [lp.token for c in streamed for lp in c.choices[0].logprobs.content] == [c.token for c in content]


def test_x_request_id_header_names_the_request(server, client):
    # vLLM: an X-Request-Id header is the request's id (response id "cmpl-<id>" / "chatcmpl-<id>"), and with
    # --enable-request-id-headers every response carries X-Request-Id (the sent one, else a new random id).
    raw = client.completions.with_raw_response.create(model=MODEL, prompt="Hi", max_tokens=2,
                                                      extra_headers={"X-Request-Id": "trace-42"})
    assert raw.headers["x-request-id"] == "trace-42" and raw.parse().id == "cmpl-trace-42"
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=2,
                                          extra_headers={"X-Request-Id": "trace-43"})
    assert chat.id == "chatcmpl-trace-43"
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=2,
                                                 stream=True, extra_headers={"X-Request-Id": "trace-44"}))
    assert chunks and {c.id for c in chunks} == {"chatcmpl-trace-44"}
    # The body's request_id is used when no header is sent; without either, the header is a fresh random id.
    out = client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body={"request_id": "body-1"})
    assert out.id == "cmpl-body-1"
    r = httpx.get(server.url + "/v1/models")
    assert len(r.headers["x-request-id"]) == 32
    r = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
                   headers={"X-Request-Id": "x" * 300})
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Request-Id", r.text


def test_continuous_usage_counts_the_chunk_s_own_choice(client):
    # vLLM: with n > 1 (or several prompts), a chunk's continuous usage is its own choice's tokens so far and its own
    # prompt's length; the final usage chunk sums them.
    opts = {"include_usage": True, "continuous_usage_stats": True}
    chunks = list(client.completions.create(model=MODEL, prompt=["Hi", "The sky is blue"], max_tokens=3, n=2,
                                            temperature=1.0, seed=0, stream=True, stream_options=opts,
                                            extra_body={"ignore_eos": True, "return_token_ids": True}))
    prompt_lens = {0: 1, 1: 4}          # "Hi", "The sky is blue" (no BOS for SmolLM2)
    seen: dict[int, int] = {}
    for c in chunks[:-1]:
        (choice,) = c.choices
        seen[choice.index] = seen.get(choice.index, 0) + len(choice.model_extra["token_ids"])
        assert c.usage.completion_tokens == seen[choice.index]
        assert c.usage.prompt_tokens == prompt_lens[choice.index // 2]
    assert seen == {0: 3, 1: 3, 2: 3, 3: 3}
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == 5

    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=2, n=2,
                                                 temperature=1.0, seed=0, stream=True, stream_options=opts,
                                                 extra_body={"ignore_eos": True, "return_token_ids": True}))
    seen = {}
    for c in chunks[:-1]:
        (choice,) = c.choices
        seen[choice.index] = seen.get(choice.index, 0) + len(choice.model_extra.get("token_ids") or [])
        assert c.usage.completion_tokens == seen[choice.index]
    assert seen == {0: 2, 1: 2} and chunks[-1].usage.completion_tokens == 4


def test_load_counts_requests_in_flight(server):
    # vLLM's GET /load with --enable-server-load-tracking: {"server_load": requests in flight on the model routes};
    # a streamed answer counts until it ends.
    assert httpx.get(server.url + "/load").json() == {"server_load": 0}
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        assert httpx.get(server.url + "/load").json() == {"server_load": 1}
        for _ in lines:
            pass
    deadline = time.time() + 5          # the count drops once the server has sent the stream's end
    while httpx.get(server.url + "/load").json() != {"server_load": 0}:
        assert time.time() < deadline
        time.sleep(0.05)


def test_responses_api_text(server, client):
    # client.responses.create (vLLM serves /v1/responses): the same text as the chat completion of the same
    # conversation; a budget-cut answer is "incomplete" with reason max_output_tokens; usage in Responses' names.
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "Be brief."}] + MESSAGES,
                                          max_completion_tokens=4, temperature=0)
    resp = client.responses.create(model=MODEL, instructions="Be brief.", input="Hi", max_output_tokens=4,
                                   temperature=0)
    assert resp.object == "response" and resp.id.startswith("resp_") and resp.model == MODEL
    assert resp.output_text == chat.choices[0].message.content
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    (message,) = resp.output
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "output_text"
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (
        chat.usage.prompt_tokens, 4, chat.usage.prompt_tokens + 4)
    traced = client.responses.create(model=MODEL, input="Hi", max_output_tokens=1,
                                     extra_headers={"X-Request-Id": "trace-9"})
    assert traced.id == "resp_trace-9"          # an X-Request-Id header names the response, as for chat
    items = client.responses.create(model=MODEL, max_output_tokens=4, temperature=0, input=[
        {"role": "system", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}])
    assert items.output_text == resp.output_text
    # What is not supported yet is a 400 naming the field.
    for extra, param in (({"tools": [{"type": "web_search_preview"}]}, "tools"),
                         ({"previous_response_id": "resp_x"}, "previous_response_id"),
                         ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
                          "input"),
                         ({"max_output_tokens": 600}, "max_output_tokens")):
        r = httpx.post(server.url + "/v1/responses", json={"model": MODEL, "input": "Hi", **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_responses_api_stream(client):
    # client.responses.create(stream=True): OpenAI's event sequence, the deltas adding up to the same text as the
    # whole answer, and the final response (here cut by max_output_tokens: response.incomplete) with its usage.
    whole = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4, temperature=0)
    events = list(client.responses.create(model=MODEL, input="Hi", max_output_tokens=4, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text == events[-4].text
    final = events[-1].response
    assert final.status == "incomplete" and final.output_text == text and final.usage.output_tokens == 4
    assert events[0].response.status == "in_progress" and events[0].response.id == final.id


def test_responses_api_output_logprobs(client):
    # include=["message.output_text.logprobs"] with top_logprobs (vLLM's fields): the output_text part carries each
    # token's logprob and its top alternatives, as the chat completion's; streamed, each delta event carries its own
    # tokens' and the done event all of them. Before, both fields were ignored (no logprobs anywhere).
    kw = dict(model=MODEL, input="Hi", max_output_tokens=3, temperature=0)
    want = ["message.output_text.logprobs"]
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=3, temperature=0,
                                          logprobs=True, top_logprobs=2)
    logprobs = client.responses.create(**kw, include=want, top_logprobs=2).output[0].content[0].logprobs
    assert [lp.token for lp in logprobs] == [c.token for c in chat.choices[0].logprobs.content]
    assert [lp.logprob for lp in logprobs] == pytest.approx([c.logprob for c in chat.choices[0].logprobs.content],
                                                            abs=1e-3)
    assert [len(lp.top_logprobs) for lp in logprobs] == [2, 2, 2]
    assert not client.responses.create(**kw).output[0].content[0].logprobs          # not asked for: none
    events = list(client.responses.create(**kw, include=want, top_logprobs=2, stream=True))
    streamed = [lp.token for e in events if e.type == "response.output_text.delta" for lp in e.logprobs]
    assert streamed == [lp.token for lp in logprobs]
    done = next(e for e in events if e.type == "response.output_text.done")
    assert [lp.token for lp in done.logprobs] == streamed
    assert [lp.token for lp in events[-1].response.output[0].content[0].logprobs] == streamed


def test_responses_api_sampling_extras(server, client):
    # vLLM's Responses fields: logit_bias and skip_special_tokens run as on chat (before: ignored, only logged);
    # the response reports the temperature / top_p sampled with (1.0 when neither request nor generation config
    # sets them; before: null); a stored prompt template is refused with vLLM's message.
    hello = client.responses.create(model=MODEL, input="Hi", max_output_tokens=3, temperature=0,
                                    extra_body={"logit_bias": {"19556": 100}})          # 19556: "Hello"
    assert hello.output_text == "HelloHelloHello"
    plain = client.responses.create(model=MODEL, input="Hi", max_output_tokens=1)
    assert (plain.temperature, plain.top_p) == (1.0, 1.0)
    assert client.responses.create(model=MODEL, input="Hi", max_output_tokens=1, temperature=0.5).temperature == 0.5
    special = client.responses.create(model=MODEL, input="Hi", max_output_tokens=3, temperature=0,
                                      extra_body={"logit_bias": {"1": 100}, "skip_special_tokens": False})
    assert special.output_text == "<|im_start|>" * 3                                     # 1: <|im_start|>, kept
    r = httpx.post(server.url + "/v1/responses", json={"model": MODEL, "input": "Hi", "prompt": {"id": "pmpt_1"}})
    assert r.status_code == 400 and r.json()["error"] == {"message": "prompt template is not supported",
                                                          "type": "BadRequestError", "param": "prompt", "code": 400}


def test_force_include_usage(client):
    # vLLM's --enable-force-include-usage: a stream without stream_options still carries usage on every chunk and
    # ends with a usage chunk.
    chunks = list(client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert all(c.usage is not None for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=2,
                                                 stream=True, extra_body={"ignore_eos": True}))
    assert all(c.usage is not None for c in chunks) and chunks[-1].usage.completion_tokens == 2


def test_same_request_id_twice_in_flight(server):
    # vLLM (>= 0.14) suffixes client-given ids internally: a second request with the X-Request-Id of one still running
    # is served too (a gateway's retry, two benchmark clients with one --request-id-prefix), both answering its id.
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 100, "ignore_eos": True, "stream": True}
    headers = {"X-Request-Id": "dup-1"}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=headers, timeout=120) as first:
        lines = first.iter_lines()
        assert '"id":"cmpl-dup-1"' in next(line for line in lines if line.startswith("data:"))
        second = httpx.post(server.url + "/v1/completions", headers=headers, timeout=120,
                            json={"model": MODEL, "prompt": "Hi", "max_tokens": 2})
        assert second.status_code == 200 and second.json()["id"] == "cmpl-dup-1", second.text
        for _ in lines:
            pass


def test_streamed_return_token_ids_send_the_prompt_ids_once(client):
    # vLLM: a stream with return_token_ids sends the prompt's token ids once, as the whole response has them:
    # /v1/completions on each choice's first chunk (its choice's prompt_token_ids), chat on the role chunk
    # (top-level prompt_token_ids). Before, streams carried only the generated token_ids.
    kw = dict(model=MODEL, prompt=["Hi", "The sky is blue"], max_tokens=2, n=2, temperature=1.0, seed=0,
              extra_body={"return_token_ids": True})
    whole = client.completions.create(**kw)
    want = {c.index: c.model_extra["prompt_token_ids"] for c in whole.choices}
    assert want == {0: [26843], 1: [26843], 2: [504, 6376, 314, 4461], 3: [504, 6376, 314, 4461]}
    sent: dict[int, list] = {}
    for c in client.completions.create(**kw, stream=True):
        for choice in c.choices:
            if choice.model_extra.get("prompt_token_ids") is not None:
                assert choice.index not in sent                 # once per choice
                sent[choice.index] = choice.model_extra["prompt_token_ids"]
    assert sent == want

    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=2,
                                          extra_body={"return_token_ids": True})
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=2, stream=True,
                                                 extra_body={"return_token_ids": True}))
    with_ids = [c for c in chunks if (c.model_extra or {}).get("prompt_token_ids") is not None]
    assert len(with_ids) == 1 and with_ids[0].choices[0].delta.role == "assistant"
    assert with_ids[0].model_extra["prompt_token_ids"] == chat.model_extra["prompt_token_ids"]
