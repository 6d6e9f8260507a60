"""``pagedllm chat`` / ``pagedllm complete`` (vLLM's command-line clients) against a stand-in OpenAI client, and
``pagedllm collect-env``."""
from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from pagedllm.entrypoints.cli import main, make_parser
from pagedllm.entrypoints.cli_client import run_chat, run_complete


class FakeClient:
    """Records the requests; chat replies stream in two pieces, ``fail`` makes the next call raise."""

    def __init__(self):
        self.calls: list[dict] = []
        self.fail: Exception | None = None
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._chat))
        self.completions = SimpleNamespace(create=self._complete)

    def _raise_if_asked(self):
        if self.fail is not None:
            e, self.fail = self.fail, None
            raise e

    def _chat(self, **kwargs):
        self.calls.append({**kwargs, "messages": list(kwargs["messages"])})
        self._raise_if_asked()
        n = len(self.calls)
        return iter([SimpleNamespace(choices=[SimpleNamespace(delta=SimpleNamespace(content=piece))])
                     for piece in (f"reply {n}", "!", None)])

    def _complete(self, **kwargs):
        self.calls.append(kwargs)
        self._raise_if_asked()
        return SimpleNamespace(choices=[SimpleNamespace(text=f" completion of {kwargs['prompt']}")])


def typed(*lines: str):
    """input() that returns these lines, then end of input (Ctrl-D)."""
    queue = list(lines)

    def read(prompt: str) -> str:
        if not queue:
            raise EOFError
        return queue.pop(0)
    return read


def test_parsers_have_vllm_flags():
    args = make_parser().parse_args(["chat", "--url", "http://h:1/v1", "--model-name", "m", "--api-key", "k",
                                     "--system-prompt", "Be terse.", "-q", "hi"])
    assert (args.url, args.model_name, args.api_key, args.system_prompt, args.quick) == \
        ("http://h:1/v1", "m", "k", "Be terse.", "hi")
    args = make_parser().parse_args(["complete", "--max-tokens", "7", "--quick", "Once"])
    assert (args.url, args.max_tokens, args.quick) == ("http://localhost:8000/v1", 7, "Once")


def test_chat_keeps_the_conversation_and_survives_an_error():
    args = make_parser().parse_args(["chat", "--model-name", "m", "--system-prompt", "Be terse."])
    client, out = FakeClient(), io.StringIO()
    assert run_chat(args, client, typed("Hi", "And then?"), out) == 0
    assert out.getvalue() == "reply 1!\nreply 2!\n"
    assert client.calls[1]["messages"] == [{"role": "system", "content": "Be terse."},
                                           {"role": "user", "content": "Hi"},
                                           {"role": "assistant", "content": "reply 1!"},
                                           {"role": "user", "content": "And then?"}]
    assert all(c["model"] == "m" and c["stream"] for c in client.calls)
    # A failed turn (e.g. the context is full) is said, left out of the conversation, and the chat goes on.
    client, out = FakeClient(), io.StringIO()
    client.fail = RuntimeError("context too long")
    assert run_chat(args, client, typed("Long", "Short"), out) == 0
    assert client.calls[1]["messages"][1:] == [{"role": "user", "content": "Short"}]


def test_quick_sends_one_message_and_exit_code_says_failure(capsys):
    client = FakeClient()
    args = make_parser().parse_args(["complete", "--model-name", "m", "--max-tokens", "5", "-q", "Once"])
    assert run_complete(args, client, typed("never read"), io.StringIO()) == 0
    assert client.calls == [{"model": "m", "prompt": "Once", "max_tokens": 5}]
    client.fail = RuntimeError("The model `m` does not exist.")
    assert run_complete(args, client, typed(), io.StringIO()) == 1
    assert "error: The model `m` does not exist." in capsys.readouterr().err


def test_collect_env_hides_secrets(monkeypatch, capsys):
    monkeypatch.setenv("PAGEDLLM_API_KEY", "s3cret")
    monkeypatch.setenv("PAGEDLLM_CPU_THREADS", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(["collect-env"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "pagedllm" in out and "torch" in out and "transformers" in out
    assert "PAGEDLLM_CPU_THREADS" in out and "s3cret" not in out and "PAGEDLLM_API_KEY" in out
