"""Typed messages between the front end (``LLM`` / the API server) and the engine core, whichever transport carries
them (a queue in this process, a pipe to the engine-core process).

Front end -> core: ``EngineCoreRequest`` (a validated, tokenized request: the core does no string work),
``AbortRequests``, ``UtilityCall`` (sleep, wake_up, collective_rpc, ...), ``Shutdown``. Core -> front end:
(``EarlyEngineArgs`` first from a core started early) ``CoreReady`` /
``CoreBuildFailed`` once, then ``CoreStepOutputs``
per step (``EngineCoreOutputs``: the step's new tokens and ends, as a struct of arrays), ``CoreSnapshot`` when only the state changed,
``UtilityResult`` for each ``UtilityCall``, ``CoreDead`` if a step failed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    # The tokenizer's EOS among eos_token_ids: a stop on it has no stop_reason, on any other the id (vLLM's).
    eos_token_id: int | None = None
    # A pooling request: its prompt is pooled into one vector and it ends (sampling_params then only hold
    # max_tokens=1, which keeps the scheduler from giving it more steps).
    pooling_params: PoolingParams | None = None
    # One of the n > 1 sequences of a user request: that request's id (the scheduler caps how many run at once).
    parent_request_id: str | None = None
    # A reasoning parser's structured output: has the thinking already ended (the grammar applies from the first
    # token)? None: the engine core reads it from the prompt.
    reasoning_ended: bool | None = None
    # enable_lora: the adapter it runs with (pagedllm.lora.LoRARequest), None for the base model.
    lora_request: Any = None
    # enable_prompt_embeds: the prompt's input embeddings (CPU tensor [num prompt tokens, hidden]); its
    # prompt_token_ids are placeholders then.
    prompt_embeds: Any = None
    # Images (multimodal models): step_data.MultiModalFeature per image, in prompt order; their placeholder tokens
    # are in prompt_token_ids.
    mm_features: list | None = None


@dataclass
class EngineCoreOutputs:
    """What one step produced, as a struct of arrays: most requests only got a token, so a step's outputs are two
    parallel lists plus small maps for the exceptions (no object per request per step: at a thousand running
    requests that object was the largest host cost of the hand-off)."""
    req_ids: list[str] = field(default_factory=list)             # requests that got a new token, in order
    new_token_ids: list[int] = field(default_factory=list)       # ... and their tokens
    # req id -> (finish reason "stop" | "length", stop reason: the stop token id or None); it came with a token
    finished: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    # req id -> (top ids, top logprobs, sampled logprob, sampled rank) of its new token
    logprobs: dict[str, tuple] = field(default_factory=dict)
    # req id -> [(position, token id, logprob, rank, top ids, top logprobs)] of prompt tokens computed this step
    prompt_logprobs: dict[str, list] = field(default_factory=dict)
    # With a request's first token: its prefix-cache hit and when it was first scheduled.
    num_cached_tokens: dict[str, int] = field(default_factory=dict)
    first_scheduled_time: dict[str, float] = field(default_factory=dict)
    # Pooling requests: req id -> the request's vector (float32 CPU tensor); it ends the request.
    pooled: dict[str, Any] = field(default_factory=dict)
    # Speculative decoding: req id -> the tokens it got this step before its entry in req_ids (accepted drafts).
    earlier_token_ids: dict[str, list[int]] = field(default_factory=dict)
    # ... and their logprobs, one tuple per token, for requests that asked for logprobs.
    earlier_logprobs: dict[str, list[tuple]] = field(default_factory=dict)

    def extend(self, other: "EngineCoreOutputs") -> None:
        self.req_ids.extend(other.req_ids)
        self.new_token_ids.extend(other.new_token_ids)
        for mine, theirs in ((self.finished, other.finished), (self.logprobs, other.logprobs),
                             (self.num_cached_tokens, other.num_cached_tokens),
                             (self.first_scheduled_time, other.first_scheduled_time), (self.pooled, other.pooled)):
            mine.update(theirs)
        for rid, rows in other.prompt_logprobs.items():
            self.prompt_logprobs.setdefault(rid, []).extend(rows)
        for rid, tokens in other.earlier_token_ids.items():    # one step per call with speculative decoding
            self.earlier_token_ids.setdefault(rid, []).extend(tokens)
        for rid, rows in other.earlier_logprobs.items():
            self.earlier_logprobs.setdefault(rid, []).extend(rows)

    def __len__(self) -> int:
        return len(self.req_ids)


@dataclass
class EngineSnapshot:
    """The engine state that gauges and the stats log show."""
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    prefix_queries: int = 0
    prefix_hits: int = 0
    num_preemptions: int = 0
    # The block pool's own counters (leak checks: every block is free again once nothing runs).
    num_free_blocks: int = 0
    num_blocks: int = 0
    # Swap preemption (swap_space): requests whose KV waits in CPU blocks, that pool's counters, and the blocks copied
    # out and in since start.
    num_swapped: int = 0
    swap_free_blocks: int = 0
    swap_num_blocks: int = 0
    blocks_swapped_out: int = 0
    blocks_swapped_in: int = 0
    # kv_offloading_size: blocks copied into the prefix cache's CPU tier, and prefix blocks copied back from it.
    blocks_offloaded: int = 0
    offload_hit_blocks: int = 0
    # enable_lora: the names of the adapters of the running and of the waiting requests (vLLM's lora_requests_info).
    running_loras: tuple[str, ...] = ()
    waiting_loras: tuple[str, ...] = ()
    # speculative_config: the counters since start (num_drafts, num_draft_tokens, num_accepted_tokens, accepted
    # tokens per draft position); None without speculative decoding.
    spec_decoding: tuple[int, int, int, tuple[int, ...]] | None = None


# ---- front end -> core ---------------------------------------------------------------------------------------------
@dataclass
class AbortRequests:
    request_ids: list[str]


@dataclass
class Shutdown:
    pass


@dataclass
class UtilityCall:
    """Call one of the core's utilities (engine/core.py CORE_UTILITIES: sleep, wake_up, collective_rpc, ...) between
    two steps; the core answers with a ``UtilityResult`` of the same ``call_id``."""
    call_id: int
    method: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


# ---- core -> front end ---------------------------------------------------------------------------------------------
@dataclass
class EarlyEngineArgs:
    """First message of an engine-core process started from the raw command line (entrypoints/early_engine.py):
    the fingerprint of the EngineArgs it parsed (``core_client.engine_args_fingerprint``), or None when it will not
    serve (the command line failed to parse, or this engine runs in the server's process)."""
    fingerprint: str | None


@dataclass
class CoreReady:
    info: dict[str, Any]


@dataclass
class CoreBuildFailed:
    error: BaseException


@dataclass
class CoreStepOutputs:
    outputs: EngineCoreOutputs
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
class UtilityResult:
    call_id: int
    value: Any
    error: BaseException | None


@dataclass
class CoreDead:
    error: BaseException
    traceback: str
