"""Rendering a conversation with a chat template: ``apply_chat_template`` (used by ``LLM.chat`` and the server).

A template from the operator (the tokenizer's own, ``--chat-template``, ``LLM.chat(chat_template=...)``) is trusted
and rendered by HF's ``tokenizer.apply_chat_template``. A template sent in a request is code from a stranger: the
server refuses it unless started with ``--trust-request-chat-template`` (vLLM's flag), and then renders it here in a
sandboxed Jinja environment (``ImmutableSandboxedEnvironment``, as HF) with three limits HF does not have:
  * a time limit: the rendering thread gets an exception injected when the time is up (a Jinja loop is Python
    bytecode, so ``{% for i in range(100000) %}{% for j in range(100000) %}`` stops there);
  * a size limit on every string or list the template builds (``'x' * 400000000`` is refused before it is
    allocated: ``*``, ``**``, ``+`` and ``~`` are checked, and filters / method calls with huge counts are refused);
  * a size limit on the rendered text.
Any failure is a ``ChatTemplateError`` (a ValueError) whose message says what the template did.
"""
from __future__ import annotations

import ctypes
import functools
import json
import logging
import operator
import re
import threading
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

logger = logging.getLogger(__name__)

# A request template may run this long (seconds). A real chat template renders in well under a millisecond.
CHAT_TEMPLATE_TIME_LIMIT_S = 1.0
# ... and build strings / lists of at most this many characters / items (also the rendered prompt's limit).
# 4 Mi characters is ~1M tokens of text: more than any context length served here.
CHAT_TEMPLATE_MAX_CHARS = 4 * 1024 * 1024


class ChatTemplateError(ValueError):
    """A chat template failed, took too long or built too much."""


def template_messages(conversation: list[dict]) -> list[dict]:
    """The messages as chat templates expect them (vLLM and HF's rule): an assistant message's tool-call arguments
    as a dict, not the JSON string the OpenAI format carries (templates write ``arguments | tojson`` or read its
    keys; the string came out double-encoded), and an empty ``tool_calls`` list dropped. Copies; the input is left
    as it is. A ValueError names an argument string that is not JSON."""
    out = []
    for i, m in enumerate(conversation):
        calls = m.get("tool_calls") if isinstance(m, dict) and m.get("role") == "assistant" else None
        if not isinstance(calls, list):
            out.append(m)
            continue
        m = dict(m)
        if not calls:
            del m["tool_calls"]
            out.append(m)
            continue
        m["tool_calls"] = []
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and not isinstance(fn.get("arguments"), (dict, list)):
                args = fn.get("arguments")
                try:
                    parsed = json.loads(args) if args else {}
                except (TypeError, ValueError) as e:
                    raise ValueError(f"messages[{i}].tool_calls[{j}].function.arguments is not valid JSON: {e}") \
                        from None
                call = {**call, "function": {**fn, "arguments": parsed}}
            m["tool_calls"].append(call)
        out.append(m)
    return out


class _TemplateTimeout(BaseException):
    """Injected into the rendering thread when the time is up (a BaseException: templates cannot catch it)."""


# vLLM's chat_template_content_format values: how a message's content reaches the template. "string": one string
# (an image's placeholder, e.g. "<image>", on a line of its own before the text parts, which are joined by newlines,
# as vLLM's); "openai": a list of {"type": "text", "text": ...} and {"type": "image"} parts; "auto": vLLM's rule,
# "openai" for a template that loops over a message's content (LLaVA's processor template renders its images and
# texts that way), else "string" (``detect_content_format``).
CHAT_TEMPLATE_CONTENT_FORMATS = ("auto", "string", "openai")
# Content parts that carry an image (OpenAI's image_url; vLLM's offline image_pil) and those not read yet.
IMAGE_PART_TYPES = ("image_url", "image_pil")
_MEDIA_NOT_YET = ("input_audio", "audio_url", "video_url", "image_embeds", "input_image", "file")


def format_message_content(conversation: list[dict], content_format: str = "auto", images: list | None = None,
                           image_placeholder: str | None = None, template: Any = None) -> list[dict]:
    """The conversation with each message's content in ``content_format``; a message that is not a dict with a
    string role and content None, a string or a list of content parts is a ValueError naming it. Content None
    becomes "" ("string") or [] ("openai"), as vLLM's.

    Image parts (``image_url``: ``{"url": ...}`` or the URL itself; ``image_pil``) are appended to ``images`` in
    order (a URL string or a PIL image, for the caller to load) and stand in the content as ``image_placeholder``
    (the model's "<image>"; None for a model without images, whose engine then refuses them). ``images`` None: the
    caller reads text only, and an image part is a ValueError. Audio and video parts are not supported yet.
    ``template``: the chat template that will render it, for "auto"."""
    if content_format not in CHAT_TEMPLATE_CONTENT_FORMATS:
        raise ValueError(f"chat_template_content_format must be one of "
                         f"{', '.join(map(repr, CHAT_TEMPLATE_CONTENT_FORMATS))}, got {content_format!r}.")
    if content_format == "auto":
        content_format = detect_content_format(template) if isinstance(template, str) else "string"
    if isinstance(conversation, (str, bytes, dict)) or not isinstance(conversation, (list, tuple)):
        raise ValueError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got "
                         f"{type(conversation).__name__}.")
    out = []
    for i, m in enumerate(conversation):
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"messages[{i}] must be a dict with a 'role' (and 'content'), got {m!r:.100}.")
        if not isinstance(m["role"], str):
            raise ValueError(f"messages[{i}].role must be a string, got {type(m['role']).__name__} {m['role']!r:.50}.")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list, tuple)):
            raise ValueError(f"messages[{i}].content must be a string or a list of content parts, got "
                             f"{type(content).__name__}.")
        if isinstance(content, str) and content_format != "openai":
            out.append(m)
            continue
        # None (an OpenAI tool-call turn) is no parts, as vLLM's: "" or [] for the template.
        parts: list = [content] if isinstance(content, str) else []
        for j, part in enumerate(content if isinstance(content, (list, tuple)) else ()):
            where = f"messages[{i}].content[{j}]"
            image = _part_image(part, where, images is not None)
            if image is None:
                parts.append(_part_text(part, where))
            else:
                images.append(image)
                parts.append(_IMAGE)
        if content_format == "openai":
            content = [{"type": "image"} if p is _IMAGE else {"type": "text", "text": p} for p in parts]
        else:       # vLLM's string form: the images' placeholders first, each on its own line
            marks = [image_placeholder for p in parts if p is _IMAGE and image_placeholder]
            content = "\n".join(marks + [p for p in parts if p is not _IMAGE])
        out.append({**m, "content": content})
    return out


_IMAGE = object()      # an image part's place among a message's parts


@functools.lru_cache(maxsize=32)
def detect_content_format(template: str) -> str:
    """vLLM's "auto": "openai" when the template loops over a message's content (``{% for part in
    message['content'] %}``, through filters such as ``| selectattr(...)`` too), where a message is a loop variable
    over ``messages`` or over a variable assigned from it; else "string" (a template that does not parse too)."""
    try:
        root = _LimitedEnvironment(CHAT_TEMPLATE_MAX_CHARS).parse(template)
    except jinja2.TemplateError:
        return "string"
    lists = ["messages"]          # messages, and variables assigned from it (loop_messages = messages[1:])
    for name in lists:
        for assign in root.find_all(jinja2.nodes.Assign):
            target = assign.target
            if isinstance(target, jinja2.nodes.Name) and target.name not in lists and _reads(assign.node, name):
                lists.append(target.name)
    loops = list(root.find_all(jinja2.nodes.For))
    messages = {loop.target.name for loop in loops if isinstance(loop.target, jinja2.nodes.Name)
                and any(_reads(loop.iter, name) for name in lists)}
    return "openai" if any(_reads(loop.iter, m, "content") for loop in loops for m in messages) else "string"


def _reads(node: Any, name: str, key: str | None = None) -> bool:
    """Is ``node`` the variable ``name`` (or its ``key`` item / attribute), possibly through filters, tests and
    slices?"""
    if isinstance(node, (jinja2.nodes.Filter, jinja2.nodes.Test)) and node.node is not None:
        return _reads(node.node, name, key)
    if isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Slice):
        return _reads(node.node, name, key)
    if key is None:
        return isinstance(node, jinja2.nodes.Name) and node.name == name
    if isinstance(node, jinja2.nodes.Getitem):
        return isinstance(node.arg, jinja2.nodes.Const) and node.arg.value == key and _reads(node.node, name)
    return isinstance(node, jinja2.nodes.Getattr) and node.attr == key and _reads(node.node, name)


def _part_image(part: Any, where: str, images_read: bool) -> Any:
    """An image part's URL string or PIL image; None for any other part."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind is None and isinstance(part, dict):
        # vLLM's simple forms without a type ({"image_url": "https://..."}, as OpenAI's API takes, undocumented;
        # {"image_pil": image}).
        kind = next((k for k in IMAGE_PART_TYPES if k in part), None)
    if kind not in IMAGE_PART_TYPES:
        return None
    if not images_read:
        raise ValueError(f"{where}: content part type {kind!r} is not supported here: this endpoint reads text "
                         f"parts only (images: chat completions, LLM.chat).")
    value = part.get(kind)
    if kind == "image_url":
        url = value.get("url") if isinstance(value, dict) else value
        detail = value.get("detail") if isinstance(value, dict) else None
        if detail not in (None, "auto"):      # vLLM's warning: the processor's one resolution either way
            logger.warning("'image_url.detail' (%r) is currently not supported and will be ignored.", detail)
        if not isinstance(url, str) or not url:
            raise ValueError(f"{where}: an 'image_url' part needs {{'url': 'data:image/...;base64,...' or "
                             f"'https://...'}}, got {value!r:.80}.")
        return url
    if value is None:
        raise ValueError(f"{where}: an 'image_pil' part needs a PIL image under 'image_pil'.")
    return value


def _part_text(part: Any, where: str) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind is None and isinstance(part, str):
        return part
    key = "refusal" if kind == "refusal" else "text"
    if kind in _MEDIA_NOT_YET:
        raise ValueError(f"{where}: content part type {kind!r} is not supported yet: pagedllm reads text and images "
                         f"(image_url; LLaVA-1.5), not audio or video.")
    if kind is None and isinstance(part, dict):
        raise ValueError(f"{where}: a content part needs a 'type' ('text' or 'image_url'), got keys "
                         f"{sorted(part)!r:.80}.")
    if kind not in ("text", "input_text", "refusal"):
        raise ValueError(f"{where}: content part type {kind!r} is not supported; send 'text' or 'image_url' "
                         f"parts.")
    if not isinstance(part.get(key), str):
        raise ValueError(f"{where}: a {kind!r} part needs a string {key!r}, got {part.get(key)!r:.50}.")
    return part[key]


# Arguments of HF's apply_chat_template that are not template variables: a request's chat_template_kwargs naming one
# would change what the call does ("tokenize") or collide with the call's own ("got multiple values").
_NOT_TEMPLATE_VARIABLES = ("tokenize", "conversation", "messages", "return_dict", "return_tensors", "padding",
                           "truncation", "max_length", "tokenizer_kwargs", "return_assistant_tokens_mask")
TEMPLATE_FAILED = "Could not apply the chat template:"


def check_chat_template_kwargs(chat_template_kwargs: Any) -> None:
    """A ValueError naming what is wrong with ``chat_template_kwargs``: not a dict, or a key that is an argument of
    the rendering call rather than a template variable (vLLM's "Found unexpected chat template kwargs")."""
    if chat_template_kwargs is None:
        return
    if not isinstance(chat_template_kwargs, dict):
        raise ValueError(f"chat_template_kwargs must be a dict, got {type(chat_template_kwargs).__name__}.")
    unexpected = sorted(k for k in chat_template_kwargs if k in _NOT_TEMPLATE_VARIABLES)
    if unexpected:
        raise ValueError(f"Found unexpected chat template kwargs from request: {unexpected} (chat_template_kwargs "
                         f"are the template's variables).")


def apply_chat_template(tokenizer: Any, conversation: list[dict], chat_template: str | None = None,
                        add_generation_prompt: bool = True, continue_final_message: bool = False,
                        tools: list[dict] | None = None, chat_template_kwargs: dict | None = None,
                        trusted: bool = True, documents: list[dict] | None = None, time_limit_s: float = CHAT_TEMPLATE_TIME_LIMIT_S,
                        max_chars: int = CHAT_TEMPLATE_MAX_CHARS, add_special_tokens: bool = False) -> list[int]:
    """Token ids of a conversation rendered by the tokenizer's chat template (or ``chat_template``); ``documents``
    (RAG templates' variable, as vLLM's chat request field) goes to the template as is.
    ``trusted=False`` (a template from a request): sandboxed, with ``time_limit_s`` and ``max_chars`` limits.
    ``add_special_tokens`` (vLLM's chat request field): the rendered text is tokenized with the tokenizer's own special
    tokens on top of the template's ([CLS] ... [SEP] for BERT, BOS for Llama), a BOS the template holds not twice."""
    if tokenizer is None:
        raise ValueError("chat needs a tokenizer (skip_tokenizer_init=True was given).")
    check_chat_template_kwargs(chat_template_kwargs)
    kwargs = dict(chat_template_kwargs or {})
    # As vLLM, chat_template_kwargs go over the named arguments: a key named like one of them overrides it (it
    # used to reach the template twice: "got multiple values for keyword argument").
    for name in ("add_generation_prompt", "continue_final_message"):
        if name in kwargs and not isinstance(kwargs[name], bool):
            raise ValueError(f"chat_template_kwargs[{name!r}] must be true or false, got {kwargs[name]!r}.")
    add_generation_prompt = kwargs.pop("add_generation_prompt", add_generation_prompt)
    continue_final_message = kwargs.pop("continue_final_message", continue_final_message)
    tools = kwargs.pop("tools", tools)
    documents = kwargs.pop("documents", documents)
    if kwargs.get("chat_template") is not None and chat_template is None:
        chat_template = kwargs["chat_template"]
    kwargs.pop("chat_template", None)
    if add_generation_prompt and continue_final_message:
        raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
    for name, value in (("tools", tools), ("documents", documents)):
        if value is not None and not isinstance(value, list):
            raise ValueError(f"{name} must be a list, got {type(value).__name__}.")
    for m in conversation:
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"Each message needs a 'role', got {m!r}.")
    conversation = template_messages(conversation)
    if trusted or chat_template is None:
        try:
            text = tokenizer.apply_chat_template(conversation, tokenize=False, chat_template=chat_template,
                                                 add_generation_prompt=add_generation_prompt,
                                                 continue_final_message=continue_final_message, tools=tools,
                                                 documents=documents, **kwargs)
        except Exception as e:     # a Jinja error, the template's raise_exception, a type the template can't use
            raise ValueError(f"{TEMPLATE_FAILED} {e}") from e
    else:
        variables = {**getattr(tokenizer, "special_tokens_map", {}), **kwargs}
        text = render_untrusted_template(chat_template, conversation, add_generation_prompt=add_generation_prompt,
                                         continue_final_message=continue_final_message, tools=tools,
                                         documents=documents, time_limit_s=time_limit_s, max_chars=max_chars, **variables)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:     # a lone surrogate ("\ud800") that no tokenizer can encode
        raise ValueError("messages contains invalid Unicode (lone surrogate).") from None
    if not add_special_tokens:       # the template holds the special tokens (BOS etc.): don't add them twice
        return tokenizer.encode(text, add_special_tokens=False)
    ids = tokenizer.encode(text, add_special_tokens=True)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and ids[:2] == [bos, bos]:
        ids = ids[1:]
    return ids


def score_template_text(tokenizer: Any, chat_template: str, query: str, document: str,
                        chat_template_kwargs: dict | None = None) -> str:
    """vLLM's score template (``LLM.score(chat_template=...)``, the server's --chat-template on /score and /rerank
    for a cross-encoder): the pair as the conversation ``[{"role": "query", ...}, {"role": "document", ...}]``
    rendered by ``chat_template`` (no generation prompt) with ``chat_template_kwargs`` as its variables; the text is
    then tokenized as a plain prompt."""
    check_chat_template_kwargs(chat_template_kwargs)
    reserved = sorted({"chat_template", "tools"} & set(chat_template_kwargs or ()))
    if reserved:
        raise ValueError(f"chat_template_kwargs contains reserved keys that conflict with fixed scorer arguments: "
                         f"{reserved}.")
    if tokenizer is None:
        raise ValueError("A score template needs a tokenizer (skip_tokenizer_init=True was given).")
    for name, text in (("query", query), ("document", document)):
        if not isinstance(text, str):
            raise ValueError(f"A score template renders text: each {name} must be a string, got "
                             f"{type(text).__name__}.")
    try:
        return tokenizer.apply_chat_template([{"role": "query", "content": query},
                                              {"role": "document", "content": document}],
                                             chat_template=chat_template, tokenize=False,
                                             **(chat_template_kwargs or {}))
    except Exception as e:     # a Jinja error, the template's raise_exception
        raise ValueError(f"{TEMPLATE_FAILED} {e}") from e


def render_untrusted_template(chat_template: str, conversation: list[dict], *, add_generation_prompt: bool,
                              continue_final_message: bool = False, tools: list[dict] | None = None,
                              documents: list[dict] | None = None, time_limit_s: float = CHAT_TEMPLATE_TIME_LIMIT_S,
                              max_chars: int = CHAT_TEMPLATE_MAX_CHARS, **variables: Any) -> str:
    """The rendered text of ``chat_template`` (HF's variables and continue_final_message rule), within the limits."""
    if len(chat_template) > max_chars:
        raise ChatTemplateError(f"The chat template is longer than {max_chars} characters.")
    env = _LimitedEnvironment(max_chars)
    messages = [dict(m) for m in conversation]
    tag = "CONTINUE_FINAL_MESSAGE_TAG "
    final = None
    if continue_final_message:
        final = messages[-1].get("content") if messages else None
        if not isinstance(final, str):
            raise ChatTemplateError("continue_final_message needs a final message with text content.")
        messages[-1]["content"] = final + tag

    def render() -> str:
        template = env.from_string(chat_template)
        size, parts = 0, []
        for part in template.generate(messages=messages, tools=tools, documents=documents,
                                      add_generation_prompt=add_generation_prompt, **variables):
            size += len(part)
            if size > max_chars:
                raise ChatTemplateError(f"The chat template's output is longer than {max_chars} characters.")
            parts.append(part)
        return "".join(parts)

    try:
        text = _run_with_time_limit(render, time_limit_s)
    except ChatTemplateError:
        raise
    except _TemplateTimeout:
        raise ChatTemplateError(f"The chat template took longer than {time_limit_s:g} s to render.") from None
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"The chat template has a syntax error (line {e.lineno}): {e.message}") from None
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"The chat template failed: {e}") from None
    except MemoryError:
        raise ChatTemplateError("The chat template ran out of memory.") from None
    except Exception as e:   # the template's own bugs: 1/0, None + 1, ...
        raise ChatTemplateError(f"The chat template failed: {type(e).__name__}: {e}") from None
    if final is not None:
        if tag.strip() not in text:
            raise ChatTemplateError("continue_final_message is set but the final message does not appear in the "
                                    "chat after applying the chat template.")
        at = text.rindex(tag.strip())
        text = text[:at] if text[at:at + len(tag)] == tag else text[:at].rstrip()
    return text


# ---- the time limit --------------------------------------------------------------------------------------------------
def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


def _run_with_time_limit(fn, time_limit_s: float):
    """``fn()`` in this thread; if it is still running after ``time_limit_s``, a _TemplateTimeout is raised in it."""
    thread_id = threading.get_ident()
    lock = threading.Lock()
    state = {"done": False}

    def expire() -> None:
        with lock:
            if not state["done"]:
                _set_async_exc(thread_id, _TemplateTimeout)

    timer = threading.Timer(time_limit_s, expire)
    timer.daemon = True
    try:
        timer.start()
        return fn()
    finally:
        timer.cancel()
        with lock:
            state["done"] = True
            # An exception injected just as fn returned must not fire later in unrelated code: clear it.
            _set_async_exc(thread_id, None)


# ---- the sandbox with size limits -------------------------------------------------------------------------------------
def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


class _LimitedCodeGenerator(CodeGenerator):
    """``a ~ b`` calls ``environment.limited_concat`` (Jinja's own join cannot be intercepted)."""

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.limited_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    """HF's chat-template environment (trim/lstrip blocks, loopcontrols, tojson, raise_exception, strftime_now,
    namespace) where no operator, filter or call may build more than ``max_chars`` characters / items."""
    code_generator_class = _LimitedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, max_chars: int):
        super().__init__(trim_blocks=True, lstrip_blocks=True,
                         extensions=[jinja2.ext.loopcontrols, _GenerationTag])
        self.max_chars = max_chars
        self.filters = {name: self._limited(f) for name, f in self.filters.items()}
        self.filters["tojson"] = self._limited(_tojson)
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)

    def _check_count(self, value: Any) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > self.max_chars:
            raise ChatTemplateError(f"The chat template used a count of {value}, over the limit of "
                                    f"{self.max_chars}.")

    def _check_result(self, value: Any) -> Any:
        size = _size(value)
        if size is not None and size > self.max_chars:
            raise ChatTemplateError(f"The chat template built a value of {size} characters or items, over the limit "
                                    f"of {self.max_chars}.")
        return value

    def _check_format(self, text: str) -> None:
        """A format string's widths (``%09999999d``, ``{:>9999999}``) must be within the limit."""
        for digits in re.findall(r"\d+", text):
            if len(digits) > len(str(self.max_chars)) or int(digits) > self.max_chars:
                raise ChatTemplateError(f"The chat template used a format width of {digits}, over the limit of "
                                        f"{self.max_chars}.")

    def _limited(self, fn):
        @functools.wraps(fn)     # keeps jinja's pass_context / pass_eval_context marks
        def limited(*args, **kwargs):
            if fn.__name__ == "do_format" and args and isinstance(args[0], str):
                self._check_format(args[0])
            for a in list(args[1:]) + list(kwargs.values()):
                self._check_count(a)
            return self._check_result(fn(*args, **kwargs))
        return limited

    def call_binop(self, context, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "*":
            for seq, count in ((left, right), (right, left)):
                size = _size(seq)
                if size is not None and isinstance(count, int) and size * count > self.max_chars:
                    raise ChatTemplateError(f"The chat template built a value of {size * count} characters or "
                                            f"items, over the limit of {self.max_chars}.")
        elif operator_name == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(right) > 1024 and abs(left) > 1:
                raise ChatTemplateError(f"The chat template raised a number to the power {right} (limit 1024).")
        elif operator_name == "+":
            if _size(left) is not None and _size(right) is not None and _size(left) + _size(right) > self.max_chars:
                raise ChatTemplateError(f"The chat template built a value over the limit of {self.max_chars} "
                                        f"characters or items.")
        elif operator_name == "%" and isinstance(left, str):
            self._check_format(left)     # printf-style: a width like "%0999999999d" builds a huge string at once
        return self._check_result(self.binop_table[operator_name](left, right))

    def call(__self, __context, __obj, *args, **kwargs):   # noqa: N805 (jinja's signature)
        for a in list(args) + list(kwargs.values()):
            __self._check_count(a)
        return __self._check_result(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any):
        # "{:>400000000}".format(1): the sandbox wraps str.format when it is looked up; check the widths there.
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            self._check_format(value.__self__)
        return wrapped

    def limited_concat(self, parts: tuple) -> str:
        size = sum(len(p) if isinstance(p, str) else 0 for p in parts)
        if size > self.max_chars:
            raise ChatTemplateError(f"The chat template built a string of {size} characters, over the limit of "
                                    f"{self.max_chars}.")
        return self._check_result("".join(str(p) for p in parts))

    binop_table = {"*": operator.mul, "**": operator.pow, "+": operator.add, "%": operator.mod}


class _GenerationTag(jinja2.ext.Extension):
    """HF's ``{% generation %}...{% endgeneration %}`` (marks assistant text for training masks): its body is
    rendered as is."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    # HF's tojson: no HTML escaping, and indent / separators options.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
