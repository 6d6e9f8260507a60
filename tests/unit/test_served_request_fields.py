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
