"""The token-budget scheduler.

One rule covers prefill, chunked prefill, prefix-cache hits and decode: each step spends at most
``max_num_batched_tokens`` tokens, first on running requests (in priority order), then on waiting ones, giving each
request ``num_tokens - num_computed_tokens`` tokens (or what is left of the budget). A step therefore mixes
prefills and decodes. When the KV pool runs out, the lowest-priority (then latest) running request is preempted:
its blocks are freed and it is recomputed later (its prefix blocks usually survive in the prefix cache).
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

from pagedllm.engine.kv_cache import KVCacheManager
from pagedllm.engine.request import Request, RequestStatus


@dataclass
class ScheduledRequest:
    request: Request
    num_new_tokens: int          # tokens computed for it this step, from request.num_computed_tokens on
    # Does this step reach the end of the request's tokens (so its last logits give a new token)? Fixed when
    # scheduled: the request's progress moves on before the step's results are in.
    will_sample: bool = field(init=False)
    num_preemptions: int = field(init=False)   # to recognise a request preempted while its step was in flight

    def __post_init__(self):
        r = self.request
        self.will_sample = r.num_computed_tokens + self.num_new_tokens == r.num_tokens_with_placeholders
        self.num_preemptions = r.num_preemptions


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, kv_cache: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int, enable_chunked_prefill: bool = True):
        self.kv = kv_cache
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: list[Request] = []     # a heap ordered by (priority, arrival time)
        self.running: list[Request] = []
        self.num_preemptions = 0

    # ---- queue ------------------------------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        heapq.heappush(self.waiting, request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def finish_request(self, request: Request, status: RequestStatus) -> None:
        """Finish (stop, length, abort) a request wherever it is, freeing its blocks."""
        assert status.finished
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        elif not request.status.finished and request in self.waiting:
            self.waiting.remove(request)
            heapq.heapify(self.waiting)
        request.status = status
        request.num_placeholders = 0
        self.kv.free(request)

    # ---- one step -----------------------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        now = time.time()

        # 1. Running requests, highest priority first, so a preemption always hits the lowest-priority one.
        self.running.sort()
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens_with_placeholders - request.num_computed_tokens, budget)
            if num_new <= 0 or request.finishes_with_placeholders(self.max_model_len):
                i += 1
                continue
            while self.kv.allocate_slots(request, num_new) is None:
                victim = self.running[-1]           # lowest priority / latest arrival
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is request:
                    break
            else:
                out.scheduled.append(ScheduledRequest(request, num_new))
                budget -= num_new
                i += 1
                continue
            break  # the request preempted itself: nothing after it can run either

        # 2. Waiting requests, unless this step had to preempt (no room for newcomers then).
        while self.waiting and not out.preempted and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            hits, num_hit_tokens = [], 0
            if request.num_computed_tokens == 0:
                hits, num_hit_tokens = self.kv.get_computed_blocks(request)
            num_new = request.num_tokens - request.num_computed_tokens - num_hit_tokens
            if num_new > budget and not self.enable_chunked_prefill:
                break
            num_new = min(num_new, budget)
            if self.kv.allocate_slots(request, num_new, hits) is None:
                break
            if request.num_computed_tokens == 0:    # it looked the prefix cache up: count that once, on admission
                self.kv.record_prefix_lookup(request, num_hit_tokens)
            heapq.heappop(self.waiting)
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit_tokens
            request.num_computed_tokens += num_hit_tokens
            request.status = RequestStatus.RUNNING
            if request.first_scheduled_time is None:
                request.first_scheduled_time = now
            self.running.append(request)
            out.scheduled.append(ScheduledRequest(request, num_new))
            budget -= num_new
        return out

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_placeholders = 0        # a token in flight is dropped; recomputation samples it again
        request.num_preemptions += 1
        self.num_preemptions += 1
        heapq.heappush(self.waiting, request)

    def advance(self, scheduler_output: SchedulerOutput) -> None:
        """A step was launched: its tokens count as computed, and each request that samples holds a placeholder
        for the token until ``commit_tokens`` brings it (at once when synchronous, a step later when async)."""
        for item in scheduler_output.scheduled:
            request = item.request
            if request.status != RequestStatus.RUNNING:
                continue  # finished or aborted while the step was being prepared
            request.num_computed_tokens += item.num_new_tokens
            if item.will_sample:
                request.num_placeholders += 1

    def commit_tokens(self, scheduler_output: SchedulerOutput, sampled: dict[str, int]) -> list[Request]:
        """Replace placeholders by the sampled tokens. Returns the requests that got a new token; a request that
        finished, was aborted or was preempted since the step was launched drops its token."""
        got_token = []
        for item in scheduler_output.scheduled:
            request = item.request
            if not item.will_sample or request.status != RequestStatus.RUNNING:
                continue
            if request.num_preemptions != item.num_preemptions or request.num_placeholders == 0:
                continue
            token = sampled.get(request.request_id)
            if token is None:
                continue
            request.num_placeholders -= 1
            request.append_token(token)
            got_token.append(request)
        return got_token

    def update_after_step(self, scheduler_output: SchedulerOutput, sampled: dict[str, int]) -> list[Request]:
        """The synchronous step: advance, then commit the tokens at once."""
        self.advance(scheduler_output)
        return self.commit_tokens(scheduler_output, sampled)

    def check_stop(self, request: Request) -> RequestStatus | None:
        """Token-level stop conditions after a new token (stop strings are the detokenizer's)."""
        sp = request.sampling_params
        last = request.token_ids[-1]
        n_out = request.num_output_tokens
        if n_out >= sp.min_tokens:
            if not sp.ignore_eos and last in request.eos_token_ids:
                return RequestStatus.FINISHED_STOPPED
            if last in sp.stop_token_ids:
                request.stop_reason = last
                return RequestStatus.FINISHED_STOPPED
        if request.max_tokens is not None and n_out >= request.max_tokens:
            return RequestStatus.FINISHED_LENGTH_CAPPED
        if request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH_CAPPED
        return None
