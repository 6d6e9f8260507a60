"""The engine -> worker hand-off of one step, and the worker's answer, as plain data.

The scheduler describes a step with request ids and numbers only (as vLLM v1's ``SchedulerOutput``); each worker
keeps its own state for the requests it has been sent (prompt and sampled token ids, sampling settings, block table,
seeded generator) and updates it from this diff. A worker in another process or on another rank can therefore run a
step from this data alone, and nothing here refers to the engine's ``Request`` objects. For a running request the
diff is its id and token count and, now and then, a new block id: the per-step host cost does not grow with the
context.

Workers append the tokens they sample to their own state; the engine never sends them back. The one case where the
engine's view and the worker's differ is a token sampled for a request that was preempted while its step was in
flight (async scheduling): the engine drops it, so a resumed request carries the engine's token count and the worker
cuts its list to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import SamplingParams


@dataclass
class MultiModalFeature:
    """One image of a prompt, as the front end's HF processor made it (vLLM's ``MultiModalFeatureSpec``): its
    tensors for the model's encoder, where its placeholder tokens sit in the prompt, and a digest of those tensors
    (the prefix cache's extra key for the blocks it covers: two images behind the same text never share KV)."""
    modality: str                  # "image"
    data: dict[str, Any]           # the processor's tensors for this item, e.g. {"pixel_values": [1, 3, H, W]}
    offset: int                    # first placeholder position in the prompt
    length: int                    # placeholder tokens: rows of the encoder's output
    identifier: str                # sha256 hex of the tensors (dtype, shape, bytes)

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass
class NewRequestData:
    """A request the workers have not seen: everything they need to keep its state."""
    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int]
    block_ids: list[int]
    num_computed_tokens: int       # before this step (prefix-cache hits included)
    # A pooling request (embedding models): its prompt is pooled into one vector, nothing is sampled.
    pooling_params: PoolingParams | None = None
    # enable_lora: the request's adapter (a pagedllm.lora.LoRARequest: name, id, folder), None for the base model.
    lora_request: Any = None
    # enable_prompt_embeds: the prompt's input embeddings (CPU tensor [prompt tokens, hidden]); prompt_token_ids
    # are placeholders then. The worker keeps them for the prompt's (re)computation.
    prompt_embeds: Any = None
    # Images (multimodal models): each one's encoder inputs and placeholder range, in prompt order.
    mm_features: list[MultiModalFeature] | None = None


@dataclass
class ResumedRequestData:
    """A request preempted earlier and admitted again: its new block table and progress, and the number of tokens
    (prompt + output) the engine holds for it (a token sampled while the preemption happened is dropped)."""
    block_ids: list[int]
    num_computed_tokens: int
    num_tokens: int


@dataclass
class SchedulerOutput:
    step_id: int
    new_requests: list[NewRequestData] = field(default_factory=list)
    # req id -> tokens computed for it this step, in scheduling order. A running request the workers know needs
    # nothing else: each worker advances the request's progress by these tokens itself.
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    total_num_scheduled_tokens: int = 0
    # Only the exceptions travel: blocks allocated this step for running requests, and resumed requests.
    new_block_ids: dict[str, list[int]] = field(default_factory=dict)
    resumed_requests: dict[str, ResumedRequestData] = field(default_factory=dict)
    # Speculative decoding: req id -> the draft tokens computed after its last token this step (its scheduled tokens
    # are 1 + len(drafts)); the worker verifies them and samples one token more.
    spec_token_ids: dict[str, list[int]] = field(default_factory=dict)
    # Scheduled requests whose step does not reach the end of their tokens (a prompt chunk): no token is sampled.
    partial_req_ids: set[str] = field(default_factory=set)
    # Requests that ended (finished, aborted) since the last step: the workers drop their state.
    finished_req_ids: set[str] = field(default_factory=set)
    # Requests preempted by this step (their blocks are freed; the workers keep their state for the resumption).
    preempted_req_ids: set[str] = field(default_factory=set)
    # KV block copies the workers make before this step's forward pass, all of the first list first:
    # (device block id, CPU block id) for preempted requests (swap_space) and blocks the prefix cache's CPU tier
    # keeps (kv_offloading_size), then (CPU block id, device block id) for resumed requests and the tier's hits.
    blocks_to_swap_out: list[tuple[int, int]] = field(default_factory=list)
    blocks_to_swap_in: list[tuple[int, int]] = field(default_factory=list)
    # Sample on the device without waiting for the host (async scheduling); set by the engine core. Never set for
    # a step in which a constrained request samples: its bitmask comes to ``finish`` (``GrammarOutput``).
    sample_async: bool = False

    @property
    def is_empty(self) -> bool:
        """Nothing for the workers to do (no tokens, no block copies)."""
        return not (self.num_scheduled_tokens or self.blocks_to_swap_out or self.blocks_to_swap_in)


@dataclass
class GrammarOutput:
    """Structured output's part of a step, handed to the worker's ``finish`` after the step's forward pass was
    launched (vLLM v1's ``GrammarOutput``): the engine core fills the bitmask on the host while the device runs the
    forward pass, from the matchers as they stand after the previous step's tokens were accepted.

    ``grammar_bitmask`` is one int32 row per id of ``structured_output_request_ids`` (requests that sample this
    step), in that order, in xgrammar's layout (bit ``t % 32`` of word ``t // 32`` set = token ``t`` allowed): a
    CPU tensor of shape [len(ids), ceil(vocab_size / 32)], so the pair pickles to a worker in another process."""
    structured_output_request_ids: list[str]
    grammar_bitmask: Any


# (top token ids, their logprobs, the sampled token's logprob, its 1-based rank)
TopLogprobs = tuple[list[int], list[float], float, int]


@dataclass
class ModelRunnerOutput:
    """What one step sampled, by request id."""
    sampled: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, TopLogprobs] = field(default_factory=dict)
    # req id -> [(prompt position, its token id, the token's logprob, rank, top ids, top logprobs)]
    prompt_logprobs: dict[str, list[tuple]] = field(default_factory=dict)
    # Pooling models: req id -> the request's vector (float32 tensor on the CPU), in the step that ran its prompt.
    pooled: dict[str, object] = field(default_factory=dict)
    # Speculative decoding: req id -> the drafts accepted (a prefix of its spec_token_ids); ``sampled`` holds the
    # token sampled after them.
    accepted_draft_ids: dict[str, list[int]] = field(default_factory=dict)
    # ... and, for requests that asked for logprobs, each accepted draft's (``logprobs`` holds the sampled token's).
    accepted_draft_logprobs: dict[str, list[TopLogprobs]] = field(default_factory=dict)
