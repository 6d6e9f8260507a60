"""Structured output (JSON schema, regex, choice, EBNF or Lark grammar, structural tag) on xgrammar, as vLLM v1 does it.

- The front end's input processor checks a request's constraint once (``validate``: the grammar is built without
  the tokenizer, which is cheap), so a bad schema or regex is a ValueError for the caller, before the core sees it.
- The engine core (``StructuredOutputManager``) compiles each distinct constraint once against the vocabulary
  (cached by its spec), on a background thread so the other requests keep running meanwhile, and keeps one grammar
  matcher per constrained request (each child of ``n > 1`` has its own).
  Once a step's forward pass is launched, it fills ONE token bitmask for every constrained row that samples
  (``fill_bitmask``) while the device runs; the bitmask goes to the worker's ``finish`` as a ``GrammarOutput``
  (pagedllm/step_data.py) and the worker applies it to those rows' logits before sampling. When the
  step's tokens come back, each matcher accepts its request's token (``Scheduler.update_from_output``); a matcher
  that has terminated ends its request with finish reason "stop".
- The core builds its own tokenizer description from the config's tokenizer path (it may run in another process
  than the front end; loading the tokenizer once there is simpler and sturdier than shipping compiled grammars).
- A preempted request keeps its matcher: the tokens the matcher accepted stay the request's tokens, recomputation
  only rebuilds their KV.
- A constrained step is sampled synchronously (the matcher must see token N before it can mask token N+1).
- With a reasoning parser (``reasoning_parser``, pagedllm/reasoning_parsers.py) the grammar starts after the
  thinking, as vLLM's: a request whose prompt leaves the model thinking gets no mask and feeds its matcher nothing
  until it samples the end-of-thinking token (``Request.reasoning_end_ids``); the tokens after it are constrained.
  ``structured_outputs_config.enable_in_reasoning`` constrains from the first token instead.
- ``thinking_token_budget`` (vLLM's, with a reasoning parser): a ``ThinkingBudget`` counts the tokens after the last
  start tag; at the budget the request's next token is forced to the end tag by a one-token row in the same bitmask
  (so it needs no grammar, and the worker stays as it is).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import TYPE_CHECKING, Any, Callable

from pagedllm.config import EngineConfig, reasoning_parser_name
from pagedllm.reasoning_parsers import get_reasoning_parser, last_think_tag, prompt_ends_reasoning
from pagedllm.sampling_params import StructuredOutputsParams

if TYPE_CHECKING:
    import torch

    from pagedllm.engine.request import Request

logger = logging.getLogger(__name__)

_MAX_CACHED_GRAMMARS = 256
# xgrammar's C++ errors start with "[time] /path/file.cc:line: "; the caller needs only the message.
_CPP_PREFIX = re.compile(r"^\s*\[[0-9:]+\]\s+\S+:\d+:\s*")


def _xgrammar():
    try:
        import xgrammar
    except ImportError:
        raise ValueError("Structured output needs the xgrammar package: pip install xgrammar") from None
    return xgrammar


def spec_key(so: StructuredOutputsParams) -> tuple:
    """What identifies a compiled grammar: the constraint's kind, its text, and the JSON knobs."""
    kind = so.kind
    value = getattr(so, kind)
    if kind == "json" and not isinstance(value, str):
        value = json.dumps(value, sort_keys=True)
    elif kind == "choice":
        value = tuple(value)
    return (kind, value, so.disable_any_whitespace, so.disable_additional_properties, so.whitespace_pattern)


def _choice_grammar(choices: list[str]) -> str:
    """``root ::= "a" | "b"`` with each choice as an EBNF string literal (JSON escaping is EBNF's escaping; other
    characters stay literal: an escaped emoji is a surrogate pair, two code points to xgrammar, never matched)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


_GRAMMAR_COMMENT = re.compile(r"(#|//).*$")


def grammar_is_lark(grammar: str) -> bool:
    """vLLM's rule for a ``grammar``: GBNF/EBNF when a rule is written ``name ::= ...``, else Lark (``name: ...``)."""
    return not any("::=" in _GRAMMAR_COMMENT.sub("", line) for line in grammar.splitlines())


def _parsed(value: Any, what: str) -> Any:
    """A constraint given as JSON text or as the value itself, as the value."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON: {e}") from None


# How an error message names each kind of constraint.
_LABELS = {"json": "JSON schema", "json_object": "JSON grammar", "regex": "regex", "choice": "choice",
           "grammar": "grammar", "structural_tag": "structural_tag"}


def build_grammar(so: StructuredOutputsParams):
    """The constraint as an xgrammar ``Grammar`` (no tokenizer needed). Raises ValueError naming the problem."""
    xgr = _xgrammar()
    kind = so.kind
    try:
        if kind == "json":
            schema = _parsed(so.json, "The JSON schema")
            if not isinstance(schema, (dict, bool)):
                raise ValueError(f"The JSON schema must be a JSON object, got {type(schema).__name__}.")
            unsupported = _dropped_json_keyword(schema)
            if unsupported:
                raise ValueError(f"Invalid JSON schema for structured output: {unsupported} is not supported by "
                                 f"xgrammar (it would not be enforced); drop it from the schema.")
            if so.disable_additional_properties and isinstance(schema, dict):
                schema = _no_additional_properties(schema)
            return xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=not so.disable_any_whitespace,
                                                strict_mode=True)
        if kind == "json_object":
            # A JSON object, not any JSON value (vLLM compiles the schema {"type": "object"}; OpenAI's JSON mode).
            return xgr.Grammar.from_json_schema('{"type": "object"}', any_whitespace=not so.disable_any_whitespace,
                                                strict_mode=True)
        if kind == "regex":
            return xgr.Grammar.from_regex(so.regex)
        if kind == "choice":
            return xgr.Grammar.from_ebnf(_choice_grammar(so.choice))
        if kind == "grammar":
            if grammar_is_lark(so.grammar):
                if not hasattr(xgr.Grammar, "from_lark"):
                    raise ValueError("This xgrammar has no Lark grammars (rules written 'name: ...'): upgrade it "
                                     "(pip install -U xgrammar) or write the grammar in EBNF ('root ::= ...').")
                return xgr.Grammar.from_lark(so.grammar)
            return xgr.Grammar.from_ebnf(so.grammar)
        if kind == "structural_tag":
            tag = _parsed(so.structural_tag, "The structural_tag")
            if isinstance(tag, dict) and "structures" in tag:
                # vLLM's first form, {"structures": [{"begin", "schema", "end"}], "triggers": [...]} (its docs'
                # example), as it compiles it: xgrammar's older tags-and-triggers call.
                try:
                    items = [xgr.StructuralTagItem(begin=s["begin"], schema=json.dumps(s.get("schema") or {}),
                                                   end=s["end"]) for s in tag["structures"]]
                    triggers = list(tag["triggers"])
                except (KeyError, TypeError, AttributeError, ValueError):
                    raise ValueError("Invalid structural_tag for structured output: 'structures' must be a list of "
                                     "{'begin', 'schema', 'end'} and 'triggers' a list of strings.") from None
                return xgr.Grammar.from_structural_tag(items, triggers)
            return xgr.Grammar.from_structural_tag(json.dumps(tag))
    except ValueError:
        raise
    except Exception as e:   # noqa: BLE001 - xgrammar raises RuntimeError (and others) from C++
        message = _CPP_PREFIX.sub("", str(e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"Invalid {_LABELS[kind]} for structured output: {message}") from None
    raise ValueError(f"Unknown structured output kind {kind!r}.")


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")   # name -> schema
_SCHEMA_DATA = ("enum", "const", "default", "examples", "required", "title", "description")         # not schemas


def _dropped_json_keyword(node: Any) -> str | None:
    """A keyword of the schema that xgrammar would not enforce, or None. xgrammar 0.2.9 compiles these without an
    error but drops them (minLength/maxLength beside a pattern or format, multipleOf but a whole one on an integer)
    or makes valid arrays unreachable (contains). vLLM's "auto" backend sends such schemas to guidance (its
    "xgrammar" backend refuses them); pagedllm has only xgrammar, so they are refused rather than silently ignored.
    (``uniqueItems``, which pydantic writes for a ``set`` field, is let through unenforced: refusing every such model
    would cost more than a rare duplicate.)"""
    if isinstance(node, list):
        return next((found for found in map(_dropped_json_keyword, node) if found), None)
    if not isinstance(node, dict):
        return None
    for key in ("contains", "minContains", "maxContains"):
        if key in node:
            return f"{key!r}"
    if "multipleOf" in node and not _integer_step(node):
        # xgrammar 0.2.9 enforces only a whole multipleOf of an integer: {"type": "number", "multipleOf": 0.5} let
        # 0.3 through, {"type": "integer", "multipleOf": 2.5} let 2 through.
        return "'multipleOf' other than a whole number on an integer"
    if ("pattern" in node or "format" in node) and ("minLength" in node or "maxLength" in node):
        return "'minLength'/'maxLength' together with 'pattern' or 'format'"
    for key, value in node.items():
        if key in _SCHEMA_DATA:
            continue
        children = list(value.values()) if key in _SCHEMA_MAPS and isinstance(value, dict) else [value]
        found = _dropped_json_keyword(children)
        if found:
            return found
    return None


def _integer_step(node: dict) -> bool:
    """Is the schema's multipleOf a whole number on a type that admits no number but integers (``"integer"``, or a
    list of it and non-numbers)?"""
    step, schema_type = node["multipleOf"], node.get("type")
    types = [schema_type] if isinstance(schema_type, str) else schema_type if isinstance(schema_type, list) else []
    whole = isinstance(step, int) or (isinstance(step, float) and step.is_integer())
    return whole and "integer" in types and "number" not in types


def _no_additional_properties(schema: dict) -> dict:
    """``disable_additional_properties``: every object schema without the key gets ``additionalProperties: false``."""
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: walk(v) for k, v in node.items()}
            if node.get("type") == "object" and "additionalProperties" not in node:
                node["additionalProperties"] = False
            return node
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    return walk(schema)


def with_engine_defaults(so: StructuredOutputsParams, config: dict | None) -> StructuredOutputsParams:
    """The request's constraint with the engine's ``structured_outputs_config`` knobs (disable_any_whitespace,
    disable_additional_properties) switched on where the config sets them."""
    changes = {key: True for key in ("disable_any_whitespace", "disable_additional_properties")
               if (config or {}).get(key) and not getattr(so, key)}
    return dataclasses.replace(so, **changes) if changes else so


_byte_compiler = None


def _admits_a_first_token(grammar) -> bool:
    """Can the grammar start at all: a first byte, or the end (it admits the empty string)? Compiled against a
    vocabulary of the 256 bytes and one stop token, whatever the model's (the tokenizer is not needed): on this CPU
    1 ms for a small schema, 3 ms for 60 flat properties, 90 ms for 200 nested ones (the grammar's size, not the
    vocabulary's, sets it; ``validate`` caches the verdict). False for a language with no member that xgrammar compiles without an
    error (a $ref cycle through anyOf, ``root ::= root``, the regex ``[^\\s\\S]``)."""
    global _byte_compiler
    xgr = _xgrammar()
    if _byte_compiler is None:
        info = xgr.TokenizerInfo([bytes([b]) for b in range(256)] + [b"</s>"], vocab_type=xgr.VocabType.RAW,
                                 stop_token_ids=[256])
        _byte_compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    matcher = xgr.GrammarMatcher(_byte_compiler.compile_grammar(grammar))
    bitmask = xgr.allocate_token_bitmask(1, 257)
    matcher.fill_next_token_bitmask(bitmask, 0)
    return bool(bitmask.any())


# Specs that passed ``validate``, most recent last: a schema sent again (the common case; the server also checks a
# request's constraint twice) is not built again. Building and the first-token check cost 16 + 90 ms for a
# 200-property nested schema on this CPU.
_validated: OrderedDict[tuple, None] = OrderedDict()
_validated_lock = threading.Lock()


def validate(so: StructuredOutputsParams) -> None:
    """The front end's check: raises ValueError for a constraint that cannot be built, or that no output satisfies
    (vLLM refuses a schema's $ref cycle with no base case; such a grammar masks every token, and the request would
    end at once on a token outside it)."""
    try:
        key = spec_key(so)
    except (TypeError, ValueError):     # a schema that is not JSON: build_grammar says so, naming the schema
        key = None
    with _validated_lock:
        if key in _validated:
            _validated.move_to_end(key)
            return
    if not _admits_a_first_token(build_grammar(so)):
        raise ValueError(f"Invalid {_LABELS[so.kind]} for structured output: no output can ever satisfy it (not "
                         f"even its first character can be generated).")
    with _validated_lock:
        if key is not None:
            _validated[key] = None
        if len(_validated) > _MAX_CACHED_GRAMMARS:
            _validated.popitem(last=False)


def compile_workers() -> int:
    """Grammars compiling at once: vLLM's half of the cores, but at least two, so that one huge schema (seconds of
    compiling) does not hold back every other new constrained request behind it, and at most eight."""
    return max(2, min(8, ((os.cpu_count() or 1) + 1) // 2))


class StructuredOutputManager:
    """The engine core's side: compiled grammars (cached by spec), one matcher per constrained request, the bitmask
    of each step (``Scheduler.update_from_output`` advances the matchers).

    A grammar that is not cached compiles on background threads (``submit``; xgrammar releases the GIL), as in vLLM,
    so a slow one (``[a-z]{1,3000}`` on SmolLM2's vocabulary: 0.5 s; the first constrained request also loads the
    tokenizer) does not stall the other requests' steps: the core admits the request to the scheduler once its
    matcher is ready (``take_ready``)."""

    def __init__(self, config: EngineConfig, load_tokenizer: Callable[[EngineConfig], Any]):
        self.config = config
        self._load_tokenizer = load_tokenizer     # run on the first constrained request only
        self.vocab_size: int = config.hf_config.vocab_size       # the logits' width
        self._compiler = None
        self._tokenizer = None
        name = reasoning_parser_name(config.args)
        self.reasoning_parser = get_reasoning_parser(name) if name else None
        self._gate_grammars = not (config.args.structured_outputs_config or {}).get("enable_in_reasoning")
        self._reasoning_ids: tuple[int, int, tuple[int, ...]] | None = None
        self._compiled: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()             # the cache, shared by the core loop and the compiling thread
        self._pool: ThreadPoolExecutor | None = None
        # Requests whose matcher is being built, in arrival order: request id -> (request, future of its matcher).
        self._pending: OrderedDict[str, tuple["Request", Future]] = OrderedDict()

    def _get_tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer(self.config)
        return self._tokenizer

    def reasoning_gate(self, prompt_ids: list[int], reasoning_ended: bool | None) -> frozenset[int] | None:
        """The token ids that end a new constrained request's thinking while its grammar must wait for one of them,
        else None (no reasoning parser, enable_in_reasoning, or the thinking is over before the first token).
        ``reasoning_ended``: the front end's answer (the server knows the request's thinking switches and
        include_reasoning); None: the prompt decides (vLLM's is_reasoning_end)."""
        if self.reasoning_parser is None or not self._gate_grammars:
            return None
        start, end, implicit = self._think_ids()
        if reasoning_ended is None:
            reasoning_ended = prompt_ends_reasoning(prompt_ids, start, end)
        return None if reasoning_ended else frozenset((end, *implicit))

    def _think_ids(self) -> tuple[int, int, tuple[int, ...]]:
        if self._reasoning_ids is None:
            self._reasoning_ids = self.reasoning_parser.token_ids(self._get_tokenizer().get_vocab())
        return self._reasoning_ids

    def thinking_budget(self, prompt_ids: list[int], budget: int | None) -> "ThinkingBudget | None":
        """A request's thinking_token_budget as a counter (None: no budget); thinking that the prompt opened counts
        from its start tag, as vLLM counts it. The input processor has checked that a reasoning parser is set."""
        if budget is None or self.reasoning_parser is None:
            return None
        start, end, _ = self._think_ids()
        position, tag = last_think_tag(prompt_ids, start, end)
        in_think = tag == start
        return ThinkingBudget(budget, start, end, in_think, len(prompt_ids) - position - 1 if in_think else 0)

    def _get_compiler(self):
        if self._compiler is None:
            xgr = _xgrammar()
            tokenizer = self._get_tokenizer()
            info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab_size)
            # One thread: one grammar compiles at a time, beside the core loop (a two-field JSON schema on SmolLM2's
            # 49k vocabulary: 11 ms).
            self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        return self._compiler

    def _cached(self, key: tuple):
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is not None:
                self._compiled.move_to_end(key)
            return compiled

    def compile(self, so: StructuredOutputsParams):
        key = spec_key(so)
        compiled = self._cached(key)
        if compiled is not None:
            return compiled
        compiled = self._get_compiler().compile_grammar(build_grammar(so))
        with self._lock:
            self._compiled[key] = compiled
            if len(self._compiled) > _MAX_CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        return compiled

    def new_matcher(self, so: StructuredOutputsParams, eos_token_ids: frozenset[int]):
        """A fresh matcher for one request; the request's own EOS ids end the grammar."""
        xgr = _xgrammar()
        stop = sorted(eos_token_ids) or None
        return xgr.GrammarMatcher(self.compile(so), override_stop_tokens=stop)

    # ---- requests whose grammar is compiling ---------------------------------------------------------------------
    def submit(self, request: "Request", so: StructuredOutputsParams, eos_token_ids: frozenset[int]) -> bool:
        """Give the request its matcher now when its grammar is cached (True), else start compiling it (False: the
        request waits for ``take_ready``)."""
        if self._cached(spec_key(so)) is not None:
            request.grammar = self.new_matcher(so, eos_token_ids)
            return True
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=compile_workers(), thread_name_prefix="pagedllm-grammar")
        self._pending[request.request_id] = (request, self._pool.submit(self.new_matcher, so, eos_token_ids))
        return False

    def num_pending(self) -> int:
        return len(self._pending)

    def take_ready(self) -> tuple[list["Request"], dict[str, BaseException]]:
        """The waiting requests whose matcher is built (now set as ``request.grammar``), in arrival order, and those
        whose grammar failed to compile (the front end validated it: not expected), with the error."""
        ready, failed = [], {}
        for rid, (request, future) in list(self._pending.items()):
            if not future.done():
                continue
            del self._pending[rid]
            try:
                request.grammar = future.result()
                ready.append(request)
            except Exception as e:   # noqa: BLE001 - handed to the request's caller
                failed[rid] = e
        return ready, failed

    def wait(self, timeout: float) -> None:
        """Block until a waiting request's grammar is built, or ``timeout`` seconds."""
        if self._pending:
            futures_wait([future for _, future in self._pending.values()], timeout, FIRST_COMPLETED)

    def discard(self, request_ids) -> None:
        """Aborted while compiling: forget them (the compiled grammar still lands in the cache)."""
        for rid in request_ids:
            self._pending.pop(rid, None)

    def fill_bitmask(self, requests: list["Request"], drafts: list | None = None) -> "torch.Tensor":
        """One int32 bitmask row per request (in order): the tokens its grammar allows next, or the one token its
        thinking budget forces. Speculative decoding: a request with drafts (``drafts[i]``, a prefix its grammar
        accepts: the scheduler checked it) gets 1 + k rows, the mask before each draft and after the last; its
        matcher is rolled back to where it stood."""
        import torch
        num_rows = len(requests) + (sum(len(d) for d in drafts) if drafts else 0)
        bitmask = torch.full((num_rows, (self.vocab_size + 31) // 32), -1, dtype=torch.int32)
        row = 0
        for n, request in enumerate(requests):
            forced = request.thinking_budget.forced if request.thinking_budget is not None else None
            if forced is not None:
                bitmask[row] = 0
                bit = forced % 32       # bit 31 is the int32's sign bit
                bitmask[row, forced // 32] = (1 << bit) if bit < 31 else -(1 << 31)
                row += 1
                continue
            matcher = request.grammar
            matcher.fill_next_token_bitmask(bitmask, row)
            row += 1
            request_drafts = drafts[n] if drafts else ()
            for token in request_drafts:
                matcher.accept_token(token)
                matcher.fill_next_token_bitmask(bitmask, row)
                row += 1
            if request_drafts:
                matcher.rollback(len(request_drafts))
        return bitmask


@dataclass
class ThinkingBudget:
    """``thinking_token_budget`` of one request: ``count`` thinking tokens so far (after the last start tag); once it
    reaches ``budget`` the next token is forced to the end tag (vLLM's rule: a budget of N lets N thinking tokens
    through)."""
    budget: int
    start_id: int
    end_id: int
    in_think: bool
    count: int = 0

    def advance(self, token: int) -> None:
        if token == self.start_id:
            self.in_think, self.count = True, 0
        elif token == self.end_id:
            self.in_think = False
        elif self.in_think:
            self.count += 1

    @property
    def forced(self) -> int | None:
        return self.end_id if self.in_think and self.count >= self.budget else None
