"""A request field the server does not read is ignored, as in vLLM, and named in the log with vLLM's line."""
from __future__ import annotations

import logging

from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest


def test_unknown_request_fields_are_named_in_the_log(caplog):
    with caplog.at_level(logging.WARNING, logger="pagedllm.entrypoints.openai.protocol"):
        req = CompletionRequest.model_validate({"model": "m", "prompt": "Hi", "max_token": 5, "temprature": 0.1})
    assert req.max_tokens == 16                      # the misspelt field changed nothing
    (record,) = caplog.records
    assert record.getMessage().startswith("The following fields were present in the request but ignored: ")
    assert "'max_token'" in record.getMessage() and "'temprature'" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pagedllm.entrypoints.openai.protocol"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "Hi"}],
                                              "max_tokens": 2, "top_k": 3})
    assert caplog.records == []                      # every field known: nothing logged


def test_null_fields_vllm_takes_as_not_given(tiny_llama_dir):
    """Clients that send every field send null for those not set: vLLM's chat takes "n": null and its completions
    "echo": null as the defaults (one choice, no prompt echoed), not a 400."""
    from app_client import post_all, serve_in_process

    with serve_in_process(tiny_llama_dir) as (app, _):
        chat, completion = post_all(app, [
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "n": None,
                                      "temperature": 0}),
            ("/v1/completions", {"prompt": "Hello there", "max_tokens": 2, "echo": None, "temperature": 0})])
    assert chat.status_code == 200, chat.text
    assert [c["index"] for c in chat.json()["choices"]] == [0]
    assert completion.status_code == 200, completion.text
    assert not completion.json()["choices"][0]["text"].startswith("Hello there")


def test_repetition_detection_request_fields(tiny_llama_dir):
    """vLLM's max_repetition_pattern_size / min_repetition_pattern_size / repetition_min_count (ignored before, as
    unknown fields): the answer stops with finish_reason "repetition" once the output repeats; a bad count is a 400
    naming repetition_min_count."""
    from app_client import post_all, serve_in_process

    body = {"prompt": "Hello my name is", "max_tokens": 60, "temperature": 0, "ignore_eos": True}
    with serve_in_process(tiny_llama_dir) as (app, _):
        plain, repeated, bad = post_all(app, [
            ("/v1/completions", body),
            ("/v1/completions", {**body, "max_repetition_pattern_size": 3, "repetition_min_count": 4}),
            ("/v1/completions", {**body, "max_repetition_pattern_size": 3, "repetition_min_count": 1})])
    assert plain.json()["choices"][0]["finish_reason"] == "length"
    choice = repeated.json()["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("repetition", "repetition_detected")
    assert plain.json()["choices"][0]["text"].startswith(choice["text"])
    assert repeated.json()["usage"]["completion_tokens"] < 60
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "repetition_min_count"
