"""``--chat-template-content-format`` on the server (vLLM's flag): "string" (and "auto") hand the template each
message's text parts joined into one string, "openai" hands it the list of ``{"type": "text", "text": ...}`` parts;
an image part is a 400 naming ``messages`` (text-only models). Driven in-process through the app the server runs
(``build_app`` over ASGI, as ``pagedllm run-batch`` does), on a tiny random Llama with the SmolLM2 tokenizer."""
from __future__ import annotations

import pytest
from server_app import post_to_server_app

from pagedllm.entrypoints.openai.cli_args import load_chat_template

# Shows which form the content arrived in: S:<string>| or P:<part text>| per part.
TEMPLATE = ("{% for m in messages %}{% if m.content is string %}S:{{ m.content }}|{% else %}"
            "{% for p in m.content %}P:{{ p.text }}|{% endfor %}{% endif %}{% endfor %}")
PARTS = [{"role": "user", "content": [{"type": "text", "text": "red"}, {"type": "text", "text": "blue"}]},
         {"role": "assistant", "content": "green"}]


@pytest.fixture(scope="module")
def model_dir(tiny_llama_dir):
    return tiny_llama_dir


def _tokenize_answers(model_dir: str, content_format: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    return post_to_server_app(model_dir, [("/tokenize", body) for body in bodies],
                              flags=("--max-model-len", "128", "--chat-template-content-format", content_format),
                              chat_template=load_chat_template(TEMPLATE))


@pytest.mark.parametrize("content_format, rendered", [("string", "S:red\nblue|S:green|"),
                                                      ("openai", "P:red|P:blue|P:green|")])
def test_the_template_gets_content_in_the_server_s_format(model_dir, tokenizer, content_format, rendered):
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    (ok_status, ok), (bad_status, bad) = _tokenize_answers(
        model_dir, content_format, [{"messages": PARTS, "add_generation_prompt": False}, {"messages": image}])
    assert ok_status == 200, ok
    assert tokenizer.decode(ok["tokens"]) == rendered
    assert bad_status == 400 and bad["error"]["param"] == "messages"
    assert "image_url" in bad["error"]["message"]
