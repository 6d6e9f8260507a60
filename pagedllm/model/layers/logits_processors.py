"""Custom logits processors, vLLM v1's programming model (``vllm.v1.sample.logits_processor``; importable here as
``pagedllm.v1.sample.logits_processor``).

A processor works on the whole batch: each step the sampler hands it a ``[rows, vocab]`` logits tensor whose row
``i`` is the request at index ``i`` of a "persistent batch", and, before that, a ``BatchUpdate`` saying which
requests left the batch, which joined it (at which index, with their SamplingParams and a live view of their output
tokens) and which moved from one index to another. pagedllm has no persistent batch of its own (a step's rows are
whatever the scheduler ran), so ``PersistentBatch`` keeps the indices: a request keeps its index while it samples
step after step, a request that did not sample this step (finished, preempted, a prompt chunk) is removed, and the
batch is kept dense by moving the last requests into the holes, as vLLM's condensing does. Rows are permuted into
index order for the processors and back.

Processors that change the greedy choice (``is_argmax_invariant() == False``) run after the masks (allowed tokens,
bias, min_tokens, bad words) and before the penalties; argmax-invariant ones run after the temperature, for the
random rows only, as in vLLM.
"""
from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any, Callable

import torch

from pagedllm.sampling_params import SamplingParams


class MoveDirectionality(Enum):
    UNIDIRECTIONAL = auto()     # the request at index a moves to index b
    SWAP = auto()               # the requests at a and b trade places


RemovedRequest = int
# (index, params, prompt token ids (None for a prompt_embeds prompt), the request's output token ids: a live view)
AddedRequest = tuple[int, SamplingParams, "list[int] | None", Sequence[int]]
MovedRequest = tuple[int, int, MoveDirectionality]


@dataclass(frozen=True)
class BatchUpdate:
    """What changed in the persistent batch since the last step. An added request may take an index whose request
    left (it is then not listed in ``removed``); apply the moves last."""
    batch_size: int
    removed: Sequence[RemovedRequest]
    added: Sequence[AddedRequest]
    moved: Sequence[MovedRequest]


class LogitsProcessor(ABC):
    """A batch-level logits processor. ``__init__`` gets the engine's config (pagedllm's EngineConfig: ``hf_config``,
    ``max_model_len``, ``args``, and ``model_config``, vLLM's read-only facade: ``get_vocab_size()``, ...), the
    device and whether pinned host memory is available."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Raise ValueError for a request whose parameters (its ``extra_args``) this processor cannot take: the
        request then fails when it is added, before it reaches the engine."""
        return None

    @abstractmethod
    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        raise NotImplementedError

    @abstractmethod
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """The batch's logits, transformed (in place or not); rows in persistent-batch index order."""
        raise NotImplementedError

    @abstractmethod
    def is_argmax_invariant(self) -> bool:
        """True if it never changes which token has the highest logit (then greedy rows skip it)."""
        raise NotImplementedError

    @abstractmethod
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Called before every step's ``apply``; ``batch_update`` is None when the batch did not change."""
        raise NotImplementedError


def process_dict_updates(req_state: dict[int, Any], batch_update: BatchUpdate | None,
                         new_state: Callable[[SamplingParams, "list[int] | None", Sequence[int]], Any]) -> bool:
    """A processor's per-index state kept through a BatchUpdate (vLLM's helper of the same name): removed indices
    dropped, an added request's state from ``new_state(params, prompt ids, output ids)`` (None: the processor does
    not apply to it; any other value, 0 included, is kept, as vLLM's helper keeps it), moves and swaps followed.
    Returns whether the state changed."""
    if batch_update is None:
        return False
    changed = False
    for index in batch_update.removed:
        changed |= req_state.pop(index, None) is not None
    for index, params, prompt_ids, output_ids in batch_update.added:
        state = new_state(params, prompt_ids, output_ids)
        if state is not None:
            req_state[index] = state
            changed = True
        else:
            changed |= req_state.pop(index, None) is not None
    for a, b, direction in batch_update.moved:
        first, second = req_state.pop(a, None), req_state.pop(b, None)
        if first is not None:
            req_state[b] = first
        if second is not None and direction is MoveDirectionality.SWAP:
            req_state[a] = second
        changed |= first is not None or second is not None
    return changed


# A request's own processor: (output ids, logits row) -> row, or (prompt ids, output ids, logits row) -> row.
RequestLogitsProcessor = Callable[..., torch.Tensor]


class AdapterLogitsProcessor(LogitsProcessor):
    """A batch processor built from per-request callables (vLLM's adapter for the older per-request interface):
    subclass it, implement ``is_argmax_invariant`` and ``new_req_logits_processor(params)``, which returns the
    request's callable or None when the request does not use it."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        # index -> (callable, whether it takes the prompt ids, prompt ids, live output ids)
        self.req_info: dict[int, tuple[RequestLogitsProcessor, bool, list[int] | None, Sequence[int]]] = {}

    @abstractmethod
    def new_req_logits_processor(self, params: SamplingParams) -> RequestLogitsProcessor | None:
        raise NotImplementedError

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def state(params, prompt_ids, output_ids):
            fn = self.new_req_logits_processor(params)
            if fn is None:
                return None
            return fn, len(inspect.signature(fn).parameters) == 3, prompt_ids, output_ids
        process_dict_updates(self.req_info, batch_update, state)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, (fn, takes_prompt, prompt_ids, output_ids) in self.req_info.items():
            args = (prompt_ids, list(output_ids)) if takes_prompt else (list(output_ids),)
            logits[index] = fn(*args, logits[index])
        return logits


# ---- loading -------------------------------------------------------------------------------------------------------
def load_logits_processor_classes(specs: Sequence[Any] | None) -> list[type[LogitsProcessor]]:
    """``logits_processors`` (vLLM's engine argument): classes, or their names as ``"package.module.Class"`` or
    ``"package.module:Class"``; each must subclass LogitsProcessor. ValueError names what is wrong."""
    classes = []
    for spec in specs or ():
        cls = spec
        if isinstance(spec, str):
            module_name, sep, attr = spec.partition(":") if ":" in spec else spec.rpartition(".")
            if not module_name or not attr:
                raise ValueError(f"logits_processors entry {spec!r}: name a class as 'package.module.Class' or "
                                 f"'package.module:Class'.")
            try:
                cls = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as e:
                raise ValueError(f"logits_processors entry {spec!r} could not be loaded: {e}") from None
        if not (isinstance(cls, type) and issubclass(cls, LogitsProcessor)):
            raise ValueError(f"logits_processors entry {spec!r} is not a subclass of LogitsProcessor "
                             f"(pagedllm.v1.sample.logits_processor.LogitsProcessor, vLLM's interface); a "
                             f"per-request callable goes through AdapterLogitsProcessor.")
        classes.append(cls)
    return classes


# ---- the persistent batch -------------------------------------------------------------------------------------------
class _OutputView(Sequence):
    """A request's output token ids as they grow (vLLM hands processors a reference to its running list). An index
    reads the worker's token list in place (``output_ids[-1]`` every step copies nothing)."""
    __slots__ = ("_state",)

    def __init__(self, state: Any):
        self._state = state

    def _ids(self) -> list[int]:
        return self._state.token_ids[self._state.num_prompt_tokens:]

    def __len__(self) -> int:
        return len(self._state.token_ids) - self._state.num_prompt_tokens

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._ids()[i]
        n = len(self)
        if not -n <= i < n:
            raise IndexError("output token index out of range")
        return self._state.token_ids[self._state.num_prompt_tokens + (i + n if i < 0 else i)]

    def __iter__(self):
        return iter(self._ids())

    def __repr__(self) -> str:
        return repr(self._ids())


class PersistentBatch:
    """Which index of the processors' batch each sampled request holds, and the BatchUpdate of each step."""

    def __init__(self) -> None:
        self.slots: list[str] = []            # index -> request id (dense: 0 .. batch size - 1)

    def update(self, requests: Sequence[Any]) -> tuple[BatchUpdate | None, list[int]]:
        """This step's update and, for each index, the row of ``requests`` (the logits' row order) it holds."""
        rows = {r.req_id: i for i, r in enumerate(requests)}
        slots: list[str | None] = list(self.slots)
        removed = [i for i, rid in enumerate(slots) if rid not in rows]
        for i in removed:
            slots[i] = None
        present = set(s for s in slots if s is not None)
        added = []
        holes = iter(list(removed))
        for r in requests:
            if r.req_id in present:
                continue
            index = next(holes, None)
            if index is None:
                index = len(slots)
                slots.append(None)
            slots[index] = r.req_id
            prompt = r.token_ids[:r.num_prompt_tokens] if r.prompt_ids_known else None
            added.append((index, r.sampling_params, prompt, _OutputView(r)))
        # An index a newcomer took is not reported removed (the add replaces what was there, as vLLM's builder
        # reports it), so processors may apply the removals before or after the adds.
        removed = [i for i in removed if slots[i] is None]
        moved = []
        # Keep the batch dense: the last request fills the first hole (a one-way move), as vLLM condenses.
        while None in slots:
            hole = slots.index(None)
            while slots and slots[-1] is None:
                slots.pop()
            if hole >= len(slots):
                break
            last = len(slots) - 1
            slots[hole] = slots.pop()
            moved.append((last, hole, MoveDirectionality.UNIDIRECTIONAL))
        self.slots = slots
        order = [rows[rid] for rid in slots]
        if not (removed or added or moved):
            return None, order
        return BatchUpdate(len(slots), removed, added, moved), order


class CustomLogitsProcessors:
    """The engine's custom processors (one instance each per worker) and their persistent batch."""

    def __init__(self, classes: Sequence[type[LogitsProcessor]], config: Any, device: torch.device):
        pin = device.type == "cuda"
        self.processors = [cls(config, device, pin) for cls in classes]
        # by kind, once: argmax_invariant -> those processors
        self._by_kind = {kind: [p for p in self.processors if p.is_argmax_invariant() == kind]
                         for kind in (False, True)}
        self.has_argmax_invariant = bool(self._by_kind[True])
        self.batch = PersistentBatch()
        self._order: list[int] = []

    def update(self, requests: Sequence[Any]) -> None:
        """Once a step, before any ``apply``: the batch's changes to every processor."""
        update, self._order = self.batch.update(requests)
        for p in self.processors:
            p.update_state(update)

    def apply(self, logits: torch.Tensor, argmax_invariant: bool) -> torch.Tensor:
        """The processors of one kind on ``logits`` (rows in the sampler's order; the result in that order too)."""
        chosen = self._by_kind[argmax_invariant]
        if not chosen:
            return logits
        order = self._order
        if order == list(range(len(order))):
            for p in chosen:
                logits = p.apply(logits)
            return logits
        index = torch.tensor(order, device=logits.device)
        batch = logits[index]
        for p in chosen:
            batch = p.apply(batch)
        out = torch.empty_like(batch)
        out[index] = batch
        return out
