"""A request inside the engine core: its tokens, its progress and its KV blocks (no strings: the front end keeps
the text, stop strings and logprob strings)."""
from __future__ import annotations

import enum
import time

from pagedllm.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH_CAPPED = 4
    FINISHED_ABORTED = 5
    FINISHED_REPETITION = 6     # SamplingParams.repetition_detection found a repeated pattern

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED


FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_REPETITION: "repetition",
}


class Request:
    """One sequence being generated. ``num_computed_tokens`` is its only progress variable: each step the
    scheduler gives it tokens until it has caught up with ``num_tokens`` (prompt + output so far)."""

    def __init__(self, request_id: str, prompt_token_ids: list[int], sampling_params: SamplingParams,
                 eos_token_ids: set[int] | frozenset[int] | None = None, arrival_time: float | None = None,
                 priority: int = 0, max_tokens: int | None = None, cache_salt: str | None = None,
                 pooling_params=None, parent_request_id: str | None = None, lora_request=None, prompt_embeds=None,
                 eos_token_id: int | None = None, mm_features=None):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(self.prompt_token_ids)
        self.token_ids: list[int] = list(prompt_token_ids)   # prompt + output, grows as tokens are sampled
        self.sampling_params = sampling_params
        self.eos_token_ids = frozenset(eos_token_ids or ())
        # The tokenizer's EOS (no stop_reason); the others report their id. None: no stop_reason for any.
        self.eos_token_id = eos_token_id
        self.max_tokens = max_tokens if max_tokens is not None else sampling_params.max_tokens
        self.arrival_time = arrival_time if arrival_time is not None else time.time()
        self.priority = priority
        self.cache_salt = cache_salt
        self.pooling_params = pooling_params   # PoolingParams of a pooling request (its one step pools, ends it)
        self.parent_request_id = parent_request_id   # the user's request id of one of n > 1 sequences, else None
        self.lora_request = lora_request       # its LoRA adapter (pagedllm.lora.LoRARequest), None: the base model
        # enable_prompt_embeds: the prompt's input embeddings (CPU tensor), its prompt_token_ids placeholders;
        # sent to the workers with the request, and part of its prompt blocks' prefix-cache hashes.
        self.prompt_embeds = prompt_embeds
        # Images (step_data.MultiModalFeature, in prompt order): sent to the workers with the request; each one's
        # identifier is part of the prefix-cache hashes of the blocks its placeholders cover.
        self.mm_features = mm_features
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        # Tokens sampled on the device but not yet seen by the host (async scheduling): the scheduler counts them
        # (the next step already computes them), ``token_ids`` does not hold them yet.
        self.num_placeholders = 0
        self.num_cached_tokens = -1            # prefix-cache hit at first scheduling (-1: not yet scheduled)
        self.block_ids: list[int] = []
        self.block_hashes: list = []           # hashes of the full blocks of token_ids, in order
        self.num_cached_blocks = 0             # leading blocks already registered in the prefix cache
        self.stop_reason: int | str | None = None
        self.num_preemptions = 0
        # The workers' view (see pagedllm/step_data.py): sent once as new, then as diffs; ``resumed`` after a
        # preemption until the next step re-sends the block table.
        self.sent_to_workers = False
        self.resumed = False
        self.first_scheduled_time: float | None = None
        # Structured output: this request's grammar matcher (engine/structured_output.py), fed every token it
        # samples; None for a free request.
        self.grammar = None
        # While a reasoning model thinks, its grammar waits (no mask, no tokens fed) for one of these token ids,
        # which end the thinking; None: the grammar applies (or there is none).
        self.reasoning_end_ids: frozenset[int] | None = None
        # thinking_token_budget's counter (engine/structured_output.py ThinkingBudget); None: no budget.
        self.thinking_budget = None
        # speculative_config: its tokens as a numpy array for the n-gram lookup (engine/spec_decode.TokenBuffer).
        self.spec_tokens = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_tokens_with_placeholders(self) -> int:
        return len(self.token_ids) + self.num_placeholders

    def finishes_with_placeholders(self, max_model_len: int) -> bool:
        """Will the tokens in flight end this request by length (so scheduling it again would be wasted)?"""
        if self.num_placeholders == 0:
            return False
        if self.max_tokens is not None and self.num_output_tokens + self.num_placeholders >= self.max_tokens:
            return True
        return self.num_tokens_with_placeholders >= max_model_len

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def __lt__(self, other: "Request") -> bool:  # priority order: lower priority value, then earlier arrival
        return (self.priority, self.arrival_time) < (other.priority, other.arrival_time)

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, status={self.status.name}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={self.block_ids})")
