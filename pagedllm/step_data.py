"""The engine -> worker hand-off of one step, and the worker's answer, as plain data.

The scheduler describes a step with request ids and numbers only (as vLLM v1's ``SchedulerOutput``); each worker
keeps its own state for the requests it has been sent (prompt and sampled token ids, sampling settings, block table,
seeded generator) and updates it from this diff. A worker in another process or on another rank can therefore run a
step from this data alone, and nothing here refers to the engine's ``Request`` objects. For a running request the
diff is its progress and, now and then, a new block id: the per-step host cost does not grow with the context.

Workers append the tokens they sample to their own state; the engine never sends them back. The one case where the
engine's view and the worker's differ is a token sampled for a request that was preempted while its step was in
flight (async scheduling): the engine drops it, so a resumed request carries the engine's token count and the worker
cuts its list to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagedllm.sampling_params import SamplingParams


@dataclass
class NewRequestData:
    """A request the workers have not seen: everything they need to keep its state."""
    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int]
    block_ids: list[int]
    num_computed_tokens: int       # before this step (prefix-cache hits included)


@dataclass
class CachedRequestData:
    """Requests the workers know, one entry per list position (a struct of arrays: cheap to build and to pickle)."""
    req_ids: list[str] = field(default_factory=list)
    # Block ids added since the last step (None: none, the common decode case). For a resumed request (preempted,
    # now admitted again) its whole new block table.
    new_block_ids: list[list[int] | None] = field(default_factory=list)
    num_computed_tokens: list[int] = field(default_factory=list)   # before this step
    # Resumed requests: req id -> the number of tokens (prompt + output) the engine holds for it.
    resumed_num_tokens: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.req_ids)


@dataclass
class SchedulerOutput:
    step_id: int
    new_requests: list[NewRequestData] = field(default_factory=list)
    cached_requests: CachedRequestData = field(default_factory=CachedRequestData)
    # req id -> tokens computed for it this step, in scheduling order.
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    total_num_scheduled_tokens: int = 0
    # Scheduled requests whose step does not reach the end of their tokens (a prompt chunk): no token is sampled.
    partial_req_ids: set[str] = field(default_factory=set)
    # Requests that ended (finished, aborted) since the last step: the workers drop their state.
    finished_req_ids: set[str] = field(default_factory=set)
    # Requests preempted by this step (their blocks are freed; the workers keep their state for the resumption).
    preempted_req_ids: set[str] = field(default_factory=set)
    # Sample on the device without waiting for the host (async scheduling); set by the engine core.
    sample_async: bool = False
    # Structured output: one int32 token bitmask (xgrammar's layout, a CPU tensor) with a row per request in
    # ``structured_output_request_ids`` (requests that sample this step), in that order; None when none is.
    structured_output_request_ids: list[str] = field(default_factory=list)
    grammar_bitmask: Any = None

    @property
    def is_empty(self) -> bool:
        return not self.num_scheduled_tokens


# (top token ids, their logprobs, the sampled token's logprob, its 1-based rank)
TopLogprobs = tuple[list[int], list[float], float, int]


@dataclass
class ModelRunnerOutput:
    """What one step sampled, by request id."""
    sampled: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, TopLogprobs] = field(default_factory=dict)
    # req id -> [(prompt position, its token id, the token's logprob, rank, top ids, top logprobs)]
    prompt_logprobs: dict[str, list[tuple]] = field(default_factory=dict)
