"""``--chat-template-content-format`` on the server (vLLM's flag): "string" hands the template each message's text
parts joined into one string, "openai" hands it the list of ``{"type": "text", "text": ...}`` parts, "auto" picks
"openai" for a template that loops over a message's content (vLLM's detection); an image part on /tokenize is a 400
naming ``messages``. Driven in-process through the app the server runs
(``build_app`` over ASGI, as ``pagedllm run-batch`` does), on a tiny random Llama with the SmolLM2 tokenizer."""
from __future__ import annotations

import asyncio

import pytest

from app_client import serve_in_process

# Shows which form the content arrived in: S:<string>| or P:<part text>| per part.
TEMPLATE = ("{% for m in messages %}{% if m.content is string %}S:{{ m.content }}|{% else %}"
            "{% for p in m.content %}P:{{ p.text }}|{% endfor %}{% endif %}{% endfor %}")
PARTS = [{"role": "user", "content": [{"type": "text", "text": "red"}, {"type": "text", "text": "blue"}]},
         {"role": "assistant", "content": "green"}]


@pytest.fixture(scope="module")
def model_dir(tiny_llama_dir):
    return tiny_llama_dir


def _tokenize_answers(model_dir: str, content_format: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    import httpx

    with serve_in_process(model_dir, "--chat-template-content-format", content_format,
                          chat_template=TEMPLATE) as (app, _):
        async def post_all():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
                return [await client.post("/tokenize", json=body) for body in bodies]
        return [(r.status_code, r.json()) for r in asyncio.run(post_all())]


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


@pytest.mark.parametrize("template, detected", [
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}", "string"),
    (TEMPLATE, "openai"),
    # LLaVA-1.5's shape: a filter over the parts; and a loop over a copy of messages.
    ("{% for message in messages %}{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}"
     "<image>{% endfor %}{% endfor %}", "openai"),
    ("{% set loop_messages = messages[1:] %}{% for msg in loop_messages %}{% for p in msg.content %}{{ p.text }}"
     "{% endfor %}{% endfor %}", "openai"),
    ("{% for m in messages %}{% for x in other['content'] %}{% endfor %}{% endfor %}", "string"),
    ("{% for m in messages %}", "string"),        # does not parse: the string form, as vLLM's default
])
def test_auto_content_format_detection(template, detected):
    from pagedllm.entrypoints.chat_utils import detect_content_format
    assert detect_content_format(template) == detected
