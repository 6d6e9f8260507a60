"""A prompt, or a prompt plus the requested output, over max_model_len: vLLM's (0.18 on) words, served as the 400
``{"error": {"message", "type": "BadRequestError", "param": "input_tokens", "code": 400}}`` clients parse to retry with
a smaller max_tokens, and offline as the same ValueError. In-process on a tiny random Llama (max_model_len 128)."""
from __future__ import annotations

import pytest

from app_client import post_all, serve_in_process


def overflow(prompt_tokens: int, output_tokens: int) -> str:
    total = prompt_tokens + output_tokens
    return (f"This model's maximum context length is 128 tokens. However, you requested {output_tokens} output tokens "
            f"and your prompt contains {prompt_tokens} input tokens, for a total of {total} tokens. Please reduce the "
            f"length of the input prompt or the number of requested output tokens. (parameter=input_tokens, "
            f"value={prompt_tokens})")


def test_served_context_overflow_errors(tiny_llama_dir):
    with serve_in_process(tiny_llama_dir) as (app, _):
        msgs = [{"role": "user", "content": "hi " * 60}]
        responses = post_all(app, [
            ("/v1/completions", {"prompt": [5] * 129, "max_tokens": None}),          # prompt alone
            ("/v1/completions", {"prompt": [5] * 100, "max_tokens": 50}),            # prompt + output
            ("/v1/completions", {"prompt": [5] * 10, "max_tokens": 200}),            # output alone
            ("/v1/chat/completions", {"messages": msgs, "max_completion_tokens": 100}),
            ("/v1/chat/completions", {"messages": msgs, "max_completion_tokens": 129}),
            ("/v1/completions", {"prompt": [5] * 128, "max_tokens": None}),          # no room for one token
            ("/tokenize", {"messages": msgs}),
            ("/v1/chat/completions", {"messages": msgs, "max_tokens": 129}),       # the name the request used
            ("/v1/responses", {"input": "hi", "max_output_tokens": 129}),
            ("/v1/completions", {"prompt": [5] * 100, "max_tokens": 28}),            # fits exactly
        ])
    errors = [r.json()["error"] for r in responses[:6]]
    assert all(r.status_code == 400 for r in responses[:6])
    assert all(e["type"] == "BadRequestError" and e["code"] == 400 for e in errors)
    assert (errors[0]["message"], errors[0]["param"]) == (overflow(129, 0), "input_tokens")
    assert (errors[1]["message"], errors[1]["param"]) == (overflow(100, 50), "input_tokens")
    assert errors[2] == {"message": "max_tokens=200 cannot be greater than max_model_len=128. Please request fewer "
                                    "output tokens.", "type": "BadRequestError", "param": "max_tokens", "code": 400}
    chat_ids = responses[6].json()["count"]
    assert (errors[3]["message"], errors[3]["param"]) == (overflow(chat_ids, 100), "input_tokens")
    assert errors[4]["param"] == "max_completion_tokens"
    assert errors[4]["message"].startswith("max_completion_tokens=129 cannot be greater than max_model_len=128.")
    assert errors[5]["message"].startswith("The decoder prompt (length 128) plus the number of requested output "
                                           "tokens (at least 1) is longer than the maximum model length of 128.")
    assert responses[9].status_code == 200 and responses[9].json()["usage"]["completion_tokens"] >= 1
    assert responses[8].json()["error"]["param"] == "max_output_tokens"
    assert responses[8].json()["error"]["message"].startswith("max_output_tokens=129 cannot be greater than")
    assert responses[7].json()["error"]["param"] == "max_tokens"
    assert responses[7].json()["error"]["message"].startswith("max_tokens=129 cannot be greater than max_model_len")


def test_offline_prompt_over_max_model_len(tiny_llama_dir):
    from pagedllm import LLM, SamplingParams
    llm = LLM(model=tiny_llama_dir, dtype="float32", max_model_len=128, kv_cache_memory_gb=0.01)
    with pytest.raises(ValueError) as info:
        llm.generate({"prompt_token_ids": [5] * 130}, SamplingParams(max_tokens=4), use_tqdm=False)
    assert str(info.value) == overflow(130, 0)
    with pytest.raises(ValueError) as info:
        llm.generate("hi " * 300, SamplingParams(max_tokens=4), use_tqdm=False)
    assert str(info.value).startswith("This model's maximum context length is 128 tokens. However, you "
                                      "requested 0 output tokens and your prompt contains ")
