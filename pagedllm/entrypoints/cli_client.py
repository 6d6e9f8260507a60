"""``pagedllm chat`` and ``pagedllm complete``: vLLM's command-line clients of a running OpenAI-compatible server.

``chat`` keeps a conversation (an optional ``--system-prompt`` first) and prints each reply as it streams;
``complete`` sends each line as a prompt to /v1/completions. Both read lines after ``> `` until end of input (Ctrl-D)
or Ctrl-C, or send one message with ``-q/--quick`` and exit. The model is ``--model-name``, else the first one the
server lists; the key is ``--api-key``, else ``OPENAI_API_KEY``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, TextIO

from pagedllm import envs

DEFAULT_URL = "http://localhost:8000/v1"


def add_client_parsers(subparsers) -> None:
    chat = subparsers.add_parser("chat", help="Chat with a running server (/v1/chat/completions).",
                                 description="Chat with a running pagedllm (or any OpenAI-compatible) server.",
                                 usage="pagedllm chat [options]")
    _add_common(chat)
    chat.add_argument("--system-prompt", type=str, default=None,
                      help="A system message put first in the conversation.")
    chat.add_argument("-q", "--quick", type=str, default=None, metavar="MESSAGE",
                      help="Send this one message, print the reply and exit.")
    chat.set_defaults(dispatch=lambda args: run_chat(args))

    complete = subparsers.add_parser("complete", help="Complete prompts with a running server (/v1/completions).",
                                     description="Complete text with a running pagedllm (or any OpenAI-compatible) "
                                                 "server.",
                                     usage="pagedllm complete [options]")
    _add_common(complete)
    complete.add_argument("--max-tokens", type=int, default=None,
                          help="Most tokens to generate per completion (default: the server's).")
    complete.add_argument("-q", "--quick", type=str, default=None, metavar="PROMPT",
                          help="Send this one prompt, print the completion and exit.")
    complete.set_defaults(dispatch=lambda args: run_complete(args))


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", type=str, default=DEFAULT_URL,
                        help="URL of the running OpenAI-compatible API server.")
    parser.add_argument("--model-name", type=str, default=None,
                        help="Model to use (default: the first model the server lists at /v1/models).")
    parser.add_argument("--api-key", type=str, default=None,
                        help="API key (default: env OPENAI_API_KEY, else none).")


def _client(args: argparse.Namespace, out: TextIO) -> tuple[Any, str]:
    try:
        from openai import OpenAI
    except ImportError:     # a test extra here, not a dependency of the engine
        sys.exit("error: pagedllm chat / complete talk to the server through the openai package: "
                 "pip install openai")
    client = OpenAI(base_url=args.url, api_key=args.api_key or envs.OPENAI_API_KEY or "EMPTY")
    try:
        model = args.model_name or client.models.list().data[0].id
    except Exception as e:  # noqa: BLE001 - no server there, or a key it refuses
        sys.exit(f"error: cannot list the models at {args.url}: {_message(e)}")
    print(f"Using model: {model}", file=out)
    return client, model


def _lines(read: Callable[[str], str]):
    """Lines typed after the ``> `` prompt, until end of input or Ctrl-C."""
    while True:
        try:
            yield read("> ")
        except (EOFError, KeyboardInterrupt):
            return


def run_chat(args: argparse.Namespace, client: Any = None, read: Callable[[str], str] = input,
             out: TextIO = sys.stdout) -> int:
    if client is None:
        client, model = _client(args, out)
    else:
        model = args.model_name
    messages: list[dict] = []
    if args.system_prompt is not None:
        messages.append({"role": "system", "content": args.system_prompt})
    for line in ([args.quick] if args.quick is not None else _lines(read)):
        messages.append({"role": "user", "content": line})
        reply = []
        try:
            for chunk in client.chat.completions.create(model=model, messages=messages, stream=True):
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if piece:
                    reply.append(piece)
                    print(piece, end="", flush=True, file=out)
        except Exception as e:  # noqa: BLE001 - the server's error (openai.APIError), said and survived
            if args.quick is not None:
                return _failed(e)
            print(f"\nerror: {_message(e)}", file=sys.stderr)
            messages.pop()                  # the turn that failed is not part of the conversation
            continue
        print(file=out)
        messages.append({"role": "assistant", "content": "".join(reply)})
    return 0


def _message(e: Exception) -> str:
    return getattr(e, "message", None) or str(e)


def _failed(e: Exception) -> int:
    print(f"error: {_message(e)}", file=sys.stderr)
    return 1


def run_complete(args: argparse.Namespace, client: Any = None, read: Callable[[str], str] = input,
                 out: TextIO = sys.stdout) -> int:
    if client is None:
        client, model = _client(args, out)
    else:
        model = args.model_name
    extra = {} if args.max_tokens is None else {"max_tokens": args.max_tokens}
    for line in ([args.quick] if args.quick is not None else _lines(read)):
        try:
            completion = client.completions.create(model=model, prompt=line, **extra)
        except Exception as e:  # noqa: BLE001 - the server's error (openai.APIError), said and survived
            if args.quick is not None:
                return _failed(e)
            print(f"error: {_message(e)}", file=sys.stderr)
            continue
        print(completion.choices[0].text, file=out)
    return 0
