"""/v1/completions with prompt_embeds (``--enable-prompt-embeds``): base64 of ``torch.save(tensor)``, as vLLM's
server takes them. The model's own embeddings of a prompt's ids must give that prompt's completion."""
from __future__ import annotations

import base64
import io
import json
import os

import torch
from safetensors.torch import load_file

from app_client import post_all, serve_in_process


def _b64(value) -> str:
    buf = io.BytesIO()
    torch.save(value, buf)
    return base64.b64encode(buf.getvalue()).decode()


def test_completions_with_prompt_embeds(tiny_llama_dir, tokenizer):
    table = load_file(os.path.join(tiny_llama_dir, "model.safetensors"))["model.embed_tokens.weight"]
    ids = tokenizer.encode("The capital of France is")
    other = tokenizer.encode("Once upon a time")
    common = {"max_tokens": 6, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    with serve_in_process(tiny_llama_dir, "--enable-prompt-embeds") as (app, _):
        by_ids, by_embeds, both, streamed, invoked, *errors = post_all(app, [
            ("/v1/completions", {"prompt": [ids, other], **common}),
            ("/v1/completions", {"prompt_embeds": _b64(table[ids]), **common}),
            # embeds prompts come first, then those of `prompt`; a [1, n, hidden] tensor is one prompt
            ("/v1/completions", {"prompt_embeds": [_b64(table[ids][None])], "prompt": "Once upon a time", **common}),
            ("/v1/completions", {"prompt_embeds": _b64(table[ids]), "stream": True, **common}),
            ("/invocations", {"prompt_embeds": _b64(table[ids]), **common}),       # SageMaker's route picks completions
            ("/v1/completions", {"prompt_embeds": "not base64!", **common}),
            ("/v1/completions", {"prompt_embeds": _b64({"weights": table[ids]}), **common}),
            ("/v1/completions", {"prompt_embeds": _b64(table[ids][:, :8]), **common}),
            ("/v1/completions", {"prompt_embeds": _b64(table[ids]), "echo": True, **common}),
            ("/v1/completions", {"prompt_embeds": _b64(table[ids][:0]), **common}),
            ("/v1/completions", {"max_tokens": 4}),
        ])
        (after,) = post_all(app, [("/v1/completions", {"prompt_embeds": _b64(table[ids]), **common})])
    want, want_other = by_ids.json()["choices"]
    got = by_embeds.json()
    assert by_embeds.status_code == 200, got
    assert got["choices"][0]["text"] == want["text"] and got["choices"][0]["token_ids"] == want["token_ids"]
    assert got["choices"][0]["prompt_token_ids"] is None
    assert got["usage"]["prompt_tokens"] == len(ids) and got["usage"]["completion_tokens"] == 6
    first, second = both.json()["choices"]
    assert (first["index"], first["text"]) == (0, want["text"])
    assert (second["index"], second["text"]) == (1, want_other["text"])
    assert both.json()["usage"]["prompt_tokens"] == len(ids) + len(other)
    assert invoked.status_code == 200 and invoked.json()["choices"][0]["token_ids"] == want["token_ids"]
    assert streamed.status_code == 200
    chunks = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert "".join(json.loads(c)["choices"][0]["text"] for c in chunks) == want["text"]
    messages = {
        0: "not valid base64",
        1: "must hold one tensor, got dict",
        2: "hidden_size=64",
        3: "Echo is unsupported with prompt embeds",
        4: "at least one token's embedding",
        5: "Either prompt or prompt_embeds",
    }
    for i, message in messages.items():
        assert errors[i].status_code == 400, (i, errors[i].text)
        assert message in errors[i].json()["error"]["message"], (i, errors[i].json())
    assert after.status_code == 200 and after.json()["choices"][0]["text"] == want["text"]


def test_prompt_embeds_need_the_flag(tiny_llama_dir, tokenizer):
    table = load_file(os.path.join(tiny_llama_dir, "model.safetensors"))["model.embed_tokens.weight"]
    with serve_in_process(tiny_llama_dir) as (app, _):
        (resp,) = post_all(app, [("/v1/completions", {"prompt_embeds": _b64(table[:3]), "max_tokens": 2})])
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "You must set `--enable-prompt-embeds` to input `prompt_embeds`."
    assert resp.json()["error"]["param"] == "prompt_embeds"
