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
