"""Request fields of /v1/completions and /v1/chat/completions that vLLM 0.24 takes beyond OpenAI's, on the server's app
in-process over a tiny random Llama with the SmolLM2 tokenizer (seconds, no server process)."""
from __future__ import annotations

from app_client import post_all, serve_args


def test_truncation_side_picks_which_end_truncate_prompt_tokens_keeps(tiny_llama_dir, tiny_engine):
    # vLLM PR 43260 (in 0.24): truncation_side "right" keeps the first truncate_prompt_tokens tokens, "left" (and no
    # side) the last ones. It was logged as an ignored field, so "right" still kept the last tokens.
    from pagedllm.entrypoints.openai.api_server import build_app
    app = build_app(serve_args(tiny_llama_dir), *tiny_engine)
    ids = [5, 6, 7, 8, 9]
    messages = [{"role": "user", "content": "Hello there, how are you?"}]
    base = {"model": tiny_llama_dir, "max_tokens": 1, "temperature": 0, "return_token_ids": True,
            "truncate_prompt_tokens": 3}
    calls = [("/v1/completions", {**base, "prompt": ids, **side}) for side in
             ({}, {"truncation_side": "left"}, {"truncation_side": "right"})]
    calls += [("/v1/chat/completions", {**base, "messages": messages, **side}) for side in
              ({}, {"truncation_side": "right"}, {"truncate_prompt_tokens": None, "truncation_side": "right"})]
    calls += [("/v1/completions", {**base, "prompt": ids, "truncation_side": "middle"})]
    out = post_all(app, calls)
    assert [r.status_code for r in out[:-1]] == [200] * 6, [r.text for r in out]
    body = [r.json() for r in out[:-1]]
    assert [b["choices"][0]["prompt_token_ids"] for b in body[:3]] == [[7, 8, 9], [7, 8, 9], [5, 6, 7]]
    whole = body[5]["prompt_token_ids"]      # untruncated (truncation_side alone cuts nothing)
    assert len(whole) > 3
    assert body[3]["prompt_token_ids"] == whole[-3:] and body[4]["prompt_token_ids"] == whole[:3]
    assert out[-1].status_code == 400 and out[-1].json()["error"]["param"] == "truncation_side"


def test_responses_take_vllms_sampling_extras_as_chat_does(tiny_llama_dir, tiny_engine):
    # vLLM's ResponsesRequest takes seed, stop, repetition_penalty, ignore_eos, vllm_xargs (its PR 32609),
    # include_stop_str_in_output and structured_outputs; /v1/responses logged them as ignored fields, so a seeded
    # request was not reproducible and a stop string did not stop it.
    from pagedllm.entrypoints.openai.api_server import build_app
    app = build_app(serve_args(tiny_llama_dir), *tiny_engine)
    chat = {"model": tiny_llama_dir, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6}
    resp = {"model": tiny_llama_dir, "input": "Hi", "max_output_tokens": 6}
    plain = post_all(app, [("/v1/chat/completions", {**chat, "temperature": 0})])[0].json()
    words = plain["choices"][0]["message"]["content"]
    stop = words[len(words) // 2:len(words) // 2 + 2]
    extras = [{"seed": 7, "temperature": 1.0}, {"temperature": 0, "stop": [stop]},
              {"temperature": 0, "stop": [stop], "include_stop_str_in_output": True},
              {"temperature": 0, "repetition_penalty": 1.8}]
    calls = []
    for extra in extras:
        calls += [("/v1/chat/completions", {**chat, **extra}), ("/v1/responses", {**resp, **extra})]
    # vllm_xargs reach the engine as on chat: refused here alike (no custom logits processor reads them).
    calls += [("/v1/chat/completions", {**chat, "vllm_xargs": {"note": "x"}}),
              ("/v1/responses", {**resp, "vllm_xargs": {"note": "x"}})]
    calls += [("/v1/responses", {**resp, "structured_outputs": {"choice": ["yes", "no"]}}),
              ("/v1/responses", {**resp, "structured_outputs": {"choice": ["yes"]},
                                 "text": {"format": {"type": "json_object"}}})]
    out = post_all(app, calls)
    assert [r.status_code for r in out] == [200] * 2 * len(extras) + [400, 400, 200, 400], [r.text for r in out]
    assert out[-4].json()["error"]["message"] == out[-3].json()["error"]["message"]
    for extra, (c, r) in zip(extras, zip(out[0::2], out[1::2])):
        text = c.json()["choices"][0]["message"]["content"]
        assert r.json()["output"][0]["content"][0]["text"] == text, extra
    assert stop not in out[2].json()["choices"][0]["message"]["content"]         # the stop string did stop it
    assert out[4].json()["choices"][0]["message"]["content"].endswith(stop)
    assert out[-2].json()["output"][0]["content"][0]["text"] in ("yes", "no")
    assert out[-1].status_code == 400 and out[-1].json()["error"]["param"] == "structured_outputs"


def test_responses_truncation_auto_keeps_the_inputs_last_tokens(tiny_llama_dir, tiny_engine):
    # vLLM runs truncation="auto" as truncate_prompt_tokens=-1 within max_model_len - max_output_tokens: the input's
    # oldest tokens go. It was a 400 "truncation='auto' is not supported".
    from pagedllm.entrypoints.openai.api_server import build_app
    app = build_app(serve_args(tiny_llama_dir), *tiny_engine)        # max_model_len 128
    text = " ".join(f"w{i}" for i in range(150))
    resp = {"model": tiny_llama_dir, "input": text, "max_output_tokens": 8, "temperature": 0}
    chat = {"model": tiny_llama_dir, "messages": [{"role": "user", "content": text}], "max_tokens": 8,
            "temperature": 0, "truncate_prompt_tokens": 120}
    auto, disabled, same = post_all(app, [("/v1/responses", {**resp, "truncation": "auto"}),
                                          ("/v1/responses", resp), ("/v1/chat/completions", chat)])
    assert auto.status_code == 200, auto.text
    body = auto.json()
    assert body["truncation"] == "auto" and body["usage"]["input_tokens"] == 120
    assert body["output"][0]["content"][0]["text"] == same.json()["choices"][0]["message"]["content"]
    assert disabled.status_code == 400 and "maximum context length" in disabled.json()["error"]["message"]


def test_responses_continue_an_unfinished_assistant_message(tiny_llama_dir, tiny_engine):
    # vLLM PR 32100: a last input message of the assistant with status "in_progress" (or "incomplete") is continued
    # (continue_final_message), as Anthropic's prefilled turn. It was rendered as a finished turn followed by a new
    # assistant header.
    from pagedllm.entrypoints.openai.api_server import build_app
    app = build_app(serve_args(tiny_llama_dir), *tiny_engine)
    turns = [{"role": "user", "content": "Which is the Greek sun god?"},
             {"role": "assistant", "content": "The answer is"}]
    resp = {"model": tiny_llama_dir, "max_output_tokens": 5, "temperature": 0}
    chat = {"model": tiny_llama_dir, "messages": turns, "max_tokens": 5, "temperature": 0,
            "add_generation_prompt": False, "continue_final_message": True}
    partial, incomplete, done, same = post_all(app, [
        ("/v1/responses", {**resp, "input": [turns[0], {**turns[1], "status": "in_progress"}]}),
        ("/v1/responses", {**resp, "input": [turns[0], {**turns[1], "status": "incomplete"}]}),
        ("/v1/responses", {**resp, "input": [turns[0], {**turns[1], "status": "completed"}]}),
        ("/v1/chat/completions", chat)])
    want = same.json()
    for r in (partial, incomplete):
        body = r.json()
        assert body["usage"]["input_tokens"] == want["usage"]["prompt_tokens"], r.text
        assert body["output"][0]["content"][0]["text"] == want["choices"][0]["message"]["content"]
    assert done.json()["usage"]["input_tokens"] > want["usage"]["prompt_tokens"]     # a new turn opens after it


def test_responses_usage_counts_cached_tokens_without_the_flag(tiny_llama_dir, tiny_engine):
    # vLLM's Responses usage always gives input_tokens_details.cached_tokens (the prefix-cache hits);
    # --enable-prompt-tokens-details gates only chat / completions' prompt_tokens_details. Here it read 0 without it.
    from pagedllm.entrypoints.openai.api_server import build_app
    app = build_app(serve_args(tiny_llama_dir), *tiny_engine)
    text = " ".join(f"c{i}" for i in range(15))
    resp = {"model": tiny_llama_dir, "input": text, "max_output_tokens": 2, "temperature": 0}
    out = post_all(app, [("/v1/responses", resp), ("/v1/responses", resp),
                         ("/v1/responses", {**resp, "stream": True}),
                         ("/v1/chat/completions", {"model": tiny_llama_dir, "max_tokens": 2,
                                                   "messages": [{"role": "user", "content": text}]})])
    second = out[1].json()["usage"]
    assert second["input_tokens_details"]["cached_tokens"] >= 16 and second["input_tokens"] > 16
    final = [line for line in out[2].text.splitlines() if line.startswith("data: ")][-1]
    assert '"cached_tokens": 0' not in final and '"cached_tokens"' in final
    assert out[3].json()["usage"]["prompt_tokens_details"] is None        # chat keeps vLLM's flag
