"""Typed messages between the front end (``LLM`` / the API server) and the engine core, whichever transport carries
them (a queue in this process, a pipe to the engine-core process).

Front end -> core: ``EngineCoreRequest`` (a validated, tokenized request: the core does no string work),
``AbortRequests``, ``Shutdown``. Core -> front end: ``CoreReady`` / ``CoreBuildFailed`` once, then ``CoreStepOutputs``
per step (one ``EngineCoreOutput`` per request that made progress), ``CoreSnapshot`` when only the state changed,
``CoreDead`` if a step failed.

``EngineCoreOutput`` is the one message made per request per step, so it is a NamedTuple: it pickles as a tuple
(several times faster than a dataclass, which matters at a thousand streams) and still reads by field name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import SamplingParams


@dataclass
class EngineCoreRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int]
    arrival_time: float
    priority: int = 0
    max_tokens: int | None = None          # sampling_params.max_tokens, or what is left of max_model_len
    cache_salt: str | None = None
    # A pooling request: its prompt is pooled into one vector and it ends (sampling_params then only hold
    # max_tokens=1, which keeps the scheduler from giving it more steps).
    pooling_params: PoolingParams | None = None


class EngineCoreOutput(NamedTuple):
    request_id: str
    new_token_ids: list[int]
    finish_reason: str | None = None       # "stop" | "length" | "abort" once finished
    stop_reason: int | str | None = None   # the stop token id (stop strings are found by the front end)
    new_logprobs: tuple | None = None      # (top ids, top logprobs, sampled logprob, sampled rank) for the new token
    prompt_logprobs: list | None = None    # [(position, token id, logprob, rank, top ids, top logprobs)]
    num_cached_tokens: int = 0
    first_scheduled_time: float | None = None   # with the first token (and at the end)
    pooled: Any = None                     # a pooling request's vector (float32 tensor), with its end


@dataclass
class EngineSnapshot:
    """The engine state that gauges and the stats log show."""
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    prefix_queries: int = 0
    prefix_hits: int = 0
    num_preemptions: int = 0


# ---- front end -> core ---------------------------------------------------------------------------------------------
@dataclass
class AbortRequests:
    request_ids: list[str]


@dataclass
class Shutdown:
    pass


# ---- core -> front end ---------------------------------------------------------------------------------------------
@dataclass
class CoreReady:
    info: dict[str, Any]


@dataclass
class CoreBuildFailed:
    error: BaseException


@dataclass
class CoreStepOutputs:
    outputs: list[EngineCoreOutput]
    num_prompt_tokens: int
    num_generation_tokens: int
    num_preemptions: int
    snapshot: EngineSnapshot
    time: float
    # Requests the core refused (a duplicate id): req id -> error
    failed: dict[str, BaseException] = field(default_factory=dict)


@dataclass
class CoreSnapshot:
    snapshot: EngineSnapshot


@dataclass
class CoreDead:
    error: BaseException
    traceback: str
