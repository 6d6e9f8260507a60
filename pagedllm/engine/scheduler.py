"""The token-budget scheduler.

One rule covers prefill, chunked prefill, prefix-cache hits and decode: each step spends at most
``max_num_batched_tokens`` tokens, first on running requests (in priority order), then on waiting ones, giving each
request ``num_tokens - num_computed_tokens`` tokens (or what is left of the budget). A step therefore mixes
prefills and decodes. When the KV pool runs out, the lowest-priority (then latest) running request is preempted:
its blocks are freed and it is recomputed later (its prefix blocks usually survive in the prefix cache), or, with
swap space, its KV moves to CPU blocks and back (``preemption_mode``; swapped requests resume before waiting ones).

The scheduler talks to the workers in data only: ``schedule()`` returns a ``SchedulerOutput`` (pagedllm/step_data.py)
of request ids, token counts and block ids, and ``update_from_output()`` takes the step's ``ModelRunnerOutput`` back,
commits the sampled tokens, applies the token-level stop rules and frees finished requests.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from pagedllm.engine.kv_cache import KVCacheManager
from pagedllm.engine.messages import EngineCoreOutputs
from pagedllm.engine.request import FINISH_REASONS, Request, RequestStatus
from pagedllm.engine.spec_decode import TokenBuffer, propose_ngram
from pagedllm.logger import printable_id
from pagedllm.step_data import ModelRunnerOutput, NewRequestData, ResumedRequestData, SchedulerOutput

logger = logging.getLogger(__name__)
PREEMPTION_LOG_EVERY = 50
# preemption_mode=None (by cost): swap a request that holds more than this many blocks (64 tokens at block_size 16);
# recompute smaller ones. Recomputing a few blocks is one short prompt chunk inside a step that runs anyway (and
# its full blocks usually hit the prefix cache), while a swap costs two copies and holds CPU blocks; a long context
# is cheaper copied (bytes over PCIe) than recomputed (a prefill over all its tokens). A rule of thumb, not measured.
SWAP_MIN_BLOCKS = 4


@dataclass(slots=True)
class ScheduledRequest:
    """The scheduler's own record of one request in a launched step (never sent to a worker)."""
    request: Request
    num_new_tokens: int          # tokens computed for it this step, from its num_computed_tokens before the step
    # Does this step reach the end of the request's tokens (so its last logits give a new token)?
    will_sample: bool
    num_preemptions: int         # to recognise a request preempted while its step was in flight
    new_block_ids: list[int] | None = None     # blocks this step allocated for a running request
    # Speculative decoding: the draft tokens computed after the request's last token this step (None: no drafts).
    draft_token_ids: list[int] | None = None


@dataclass
class StepStats:
    """What one step did, for logs and metrics."""
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    num_preemptions: int = 0


@dataclass
class SpecDecodingStats:
    """Speculative decoding's counters since start (vLLM's spec_decode_* series): steps in which a request had
    drafts, the draft tokens, those accepted, and per draft position how many were accepted."""
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)


@dataclass
class _Launched:
    items: list[ScheduledRequest]
    stats: StepStats = field(default_factory=StepStats)


def _grammar_prefix(matcher, drafts: list[int]) -> list[int]:
    """The longest prefix of ``drafts`` a structured output request's grammar accepts; the matcher is rolled back."""
    n = 0
    for token in drafts:
        if matcher.is_terminated() or not matcher.accept_token(token):
            break
        n += 1
    if n:
        matcher.rollback(n)
    return drafts[:n]


class Scheduler:
    def __init__(self, kv_cache: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int, enable_chunked_prefill: bool = True, long_prefill_token_threshold: int = 0,
                 max_num_seqs_per_request: int = 0, preemption_mode: str | None = None, max_loras: int = 0,
                 speculative_config=None, disable_chunked_mm_input: bool = False):
        self.kv = kv_cache
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.enable_chunked_prefill = enable_chunked_prefill
        # vLLM's long_prefill_token_threshold: a prompt chunk takes at most this many tokens of a step (0: no cap),
        # so one long prompt cannot hold back the short requests that arrive behind it.
        self.long_prefill_token_threshold = long_prefill_token_threshold
        # vLLM's disable_chunked_mm_input: a prompt chunk never ends inside an image's placeholders (_whole_images).
        self.disable_chunked_mm_input = disable_chunked_mm_input
        # At most this many sequences of one n > 1 request are queued or running at a time (0: no cap); the others
        # are held back until one ends, so one n=16384 request cannot take every seat of max_num_seqs.
        self.max_num_seqs_per_request = max_num_seqs_per_request
        self.waiting: list[Request] = []     # a heap ordered by (priority, arrival time)
        self._held: dict[str, deque[Request]] = {}      # parent id -> its children over the cap, in order
        self._num_active_children: dict[str, int] = {}  # parent id -> its children in waiting + running
        self._held_ids: set[str] = set()
        self.running: list[Request] = []
        # Preempted requests whose KV sits in the swap space, a heap like ``waiting``; they resume before it.
        self.swapped: list[Request] = []
        self.preemption_mode = preemption_mode
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        # Swap counters: requests swapped out / in, and blocks copied each way (for tests, logs and metrics).
        self.num_swap_outs = 0
        self.num_swap_ins = 0
        self.num_blocks_swapped_out = 0
        self.num_blocks_swapped_in = 0
        self._next_step_id = 0
        self._launched: dict[int, _Launched] = {}     # steps whose output has not come back yet
        self._finished_ids: set[str] = set()          # ended since the last step: the workers drop them
        # False under pipeline parallel's batch queue: a request whose sampled token is still in flight waits for it
        # (the first stage cannot take it from the last stage's device tensor, as async scheduling does).
        self.schedule_tokens_in_flight = True
        # enable_lora: the running requests use at most this many distinct adapters (vLLM's max_loras), so every
        # step fits the workers' adapter slots; a waiting request with another adapter waits (0: LoRA off).
        self.max_loras = max_loras
        # speculative_config (config.SpeculativeConfig): requests with one token left propose drafts (n-gram lookup).
        self.spec = speculative_config
        self.spec_stats: SpecDecodingStats | None = None
        if speculative_config is not None:
            self.spec_stats = SpecDecodingStats(
                num_accepted_tokens_per_pos=[0] * speculative_config.num_speculative_tokens)

    # ---- queue ------------------------------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"Request id {request.request_id!r} is already running.")
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        parent = request.parent_request_id
        if parent is not None and self.max_num_seqs_per_request > 0:
            if self._num_active_children.get(parent, 0) >= self.max_num_seqs_per_request:
                self._held.setdefault(parent, deque()).append(request)
                self._held_ids.add(request.request_id)
                return
            self._num_active_children[parent] = self._num_active_children.get(parent, 0) + 1
        heapq.heappush(self.waiting, request)

    def _release_child_seat(self, parent: str) -> None:
        """A child of ``parent`` left waiting + running for good: queue its next held sibling in its seat."""
        held = self._held.get(parent)
        if held:
            request = held.popleft()
            self._held_ids.discard(request.request_id)
            heapq.heappush(self.waiting, request)
            if not held:
                del self._held[parent]
            return
        left = self._num_active_children.get(parent, 0) - 1
        if left > 0:
            self._num_active_children[parent] = left
        else:
            self._num_active_children.pop(parent, None)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.swapped or self._held)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + len(self.swapped) + sum(len(h) for h in self._held.values())

    def finish_request(self, request: Request, status: RequestStatus) -> None:
        """Finish (stop, length, abort) a request wherever it is, freeing its blocks."""
        assert status.finished
        parent = request.parent_request_id
        if request.request_id in self._held_ids:       # never queued: it holds no seat
            self._held_ids.discard(request.request_id)
            held = self._held[parent]
            held.remove(request)
            if not held:
                del self._held[parent]
            parent = None
        elif request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        elif not request.status.finished and request in self.waiting:
            self.waiting.remove(request)
            heapq.heapify(self.waiting)
        elif not request.status.finished and request in self.swapped:
            self.swapped.remove(request)
            heapq.heapify(self.swapped)
        if parent is not None and self.max_num_seqs_per_request > 0 and not request.status.finished:
            self._release_child_seat(parent)
        request.status = status
        request.num_placeholders = 0
        self.kv.free(request)
        self.requests.pop(request.request_id, None)
        if request.sent_to_workers:
            self._finished_ids.add(request.request_id)

    def finish_requests(self, request_ids, status: RequestStatus) -> list[Request]:
        """Finish the given requests (unknown or already finished ids are skipped); returns those finished."""
        done = []
        for rid in request_ids:
            request = self.requests.get(rid)
            if request is not None and not request.is_finished:
                self.finish_request(request, status)
                done.append(request)
        return done

    # ---- one step -----------------------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        """Choose this step's tokens and describe them as data. The chosen tokens count as computed at once, and a
        request that samples holds a placeholder for its token until ``update_from_output`` brings it (a step later
        with async scheduling)."""
        items: list[ScheduledRequest] = []
        preempted: list[Request] = []
        budget = self.max_num_batched_tokens
        now = time.time()

        # 1. Running requests, highest priority first, so a preemption always hits the lowest-priority one.
        self.running.sort()
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens_with_placeholders - request.num_computed_tokens, budget)
            if 0 < self.long_prefill_token_threshold < num_new:
                num_new = self.long_prefill_token_threshold
            if self.disable_chunked_mm_input and request.mm_features:
                num_new = self._whole_images(request, request.num_computed_tokens, num_new, budget)
            if (num_new <= 0 or request.finishes_with_placeholders(self.max_model_len)
                    or (request.num_placeholders and not self.schedule_tokens_in_flight)):
                i += 1
                continue
            drafts = None
            if self.spec is not None and num_new == 1:
                drafts = self._propose(request, budget - 1)
                num_new += len(drafts)
            while (new_blocks := self.kv.allocate_slots(request, num_new)) is None:
                victim = self.running[-1]           # lowest priority / latest arrival
                self._preempt(victim)
                preempted.append(victim)
                if victim is request:
                    break
            else:
                item = self._item(request, num_new, new_blocks)
                if drafts:
                    item.will_sample, item.draft_token_ids = True, drafts
                items.append(item)
                budget -= num_new
                i += 1
                continue
            break  # the request preempted itself: nothing after it can run either

        # 2. Swapped requests, then waiting ones, unless this step had to preempt (no room for newcomers then).
        loras = self._running_loras()
        while self.swapped and not preempted and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.swapped[0]
            if not self._lora_fits(request, loras):
                break
            num_new = request.num_tokens - request.num_computed_tokens
            if 0 < self.long_prefill_token_threshold < num_new and self.enable_chunked_prefill:
                num_new = self.long_prefill_token_threshold
            if num_new > budget and not self.enable_chunked_prefill:
                break
            num_new = min(num_new, budget)
            if self.disable_chunked_mm_input and request.mm_features:
                num_new = self._whole_images(request, request.num_computed_tokens, num_new, budget)
                if num_new == 0:
                    break
            copies = self.kv.swap_in(request, num_new)
            if copies is None:
                break
            new_blocks = self.kv.allocate_slots(request, num_new)
            assert new_blocks is not None, "swap_in checked the room for the step's tokens"
            heapq.heappop(self.swapped)
            self.num_swap_ins += 1
            self.num_blocks_swapped_in += len(copies)
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            items.append(self._item(request, num_new, None))
            budget -= num_new
            if request.lora_request is not None:
                loras.add(request.lora_request.lora_int_id)
        skipped: list[Request] = []      # waiting requests whose adapter does not fit this step (max_loras)
        while (self.waiting and not self.swapped and not preempted and budget > 0
               and len(self.running) < self.max_num_seqs):
            request = self.waiting[0]
            if not self._lora_fits(request, loras):
                skipped.append(heapq.heappop(self.waiting))
                continue
            hits, num_hit_tokens = [], 0
            if request.num_computed_tokens == 0:
                hits, num_hit_tokens = self.kv.get_computed_blocks(request)
            num_new = request.num_tokens - request.num_computed_tokens - num_hit_tokens
            if 0 < self.long_prefill_token_threshold < num_new and self.enable_chunked_prefill:
                num_new = self.long_prefill_token_threshold
            if num_new > budget and not self.enable_chunked_prefill:
                break
            num_new = min(num_new, budget)
            if self.disable_chunked_mm_input and request.mm_features:
                num_new = self._whole_images(request, request.num_computed_tokens + num_hit_tokens, num_new, budget)
                if num_new == 0:     # waits for a step with room for its image (vLLM's rule)
                    break
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
            items.append(self._item(request, num_new, None))
            budget -= num_new
            if request.lora_request is not None:
                loras.add(request.lora_request.lora_int_id)
        for request in skipped:
            heapq.heappush(self.waiting, request)

        return self._describe(items, preempted)

    @staticmethod
    def _whole_images(request: Request, start: int, num_new: int, room: int) -> int:
        """disable_chunked_mm_input: the chunk [start, start + num_new) of ``request`` cut so that it does not end
        inside an image's placeholders: it ends before the image instead, or, when it starts at the image, takes the
        whole image if ``room`` (the step's budget) holds it (past long_prefill_token_threshold) and nothing
        otherwise. A chunk that starts inside an image (a prefix-cache hit) is left as it is, as vLLM's."""
        end = start + num_new
        for feature in request.mm_features:
            if start <= feature.offset < end < feature.end:
                if start < feature.offset:
                    return feature.offset - start
                return feature.length if feature.length <= room else 0
        return num_new

    def lora_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The adapters' names of the running requests and of the waiting ones (queued, swapped out or held back),
        sorted; empty without LoRA."""
        if not self.max_loras:
            return (), ()
        waiting = itertools.chain(self.waiting, self.swapped, *self._held.values())
        return tuple(sorted({r.lora_request.lora_name for r in self.running if r.lora_request is not None})), \
            tuple(sorted({r.lora_request.lora_name for r in waiting if r.lora_request is not None}))

    def spec_counters(self) -> tuple[int, int, int, tuple[int, ...]] | None:
        """Speculative decoding's counters for the engine snapshot (None without it)."""
        st = self.spec_stats
        if st is None:
            return None
        return st.num_drafts, st.num_draft_tokens, st.num_accepted_tokens, tuple(st.num_accepted_tokens_per_pos)

    def _running_loras(self) -> set[int]:
        return {r.lora_request.lora_int_id for r in self.running if r.lora_request is not None} \
            if self.max_loras else set()

    def _lora_fits(self, request: Request, loras: set[int]) -> bool:
        """May ``request`` run beside the running requests' adapters ``loras`` (at most max_loras distinct)?"""
        lora = request.lora_request
        return lora is None or not self.max_loras or lora.lora_int_id in loras or len(loras) < self.max_loras

    def _propose(self, request: Request, room: int) -> list[int]:
        """Speculative decoding: draft tokens for a running request with one token left to compute, at most
        ``room`` (what the step's token budget leaves) and none that could not be kept (past max_tokens or
        max_model_len counting the model's own token after them). A structured output request keeps the drafts its
        grammar accepts (vLLM's rule; its matcher is rolled back). None while a reasoning model thinks before its
        grammar, under a thinking budget, or for a grammar with a draft model (its drafts are made on the worker,
        unchecked): those decode one token per step, as without speculative decoding."""
        if (request.num_placeholders or request.reasoning_end_ids is not None or request.thinking_budget is not None
                or request.pooling_params is not None
                or request.grammar is not None and self.spec.method == "draft_model"):
            return []
        k = min(self.spec.num_speculative_tokens, room, self.max_model_len - request.num_tokens - 1)
        if request.max_tokens is not None:
            k = min(k, request.max_tokens - request.num_output_tokens - 1)
        if k <= 0:
            return []
        if self.spec.method == "draft_model":      # the worker's draft model fills in this many drafts
            return [-1] * k
        if request.spec_tokens is None:
            request.spec_tokens = TokenBuffer()
        drafts = propose_ngram(request.spec_tokens.sync(request.token_ids), self.spec.prompt_lookup_min,
                               self.spec.prompt_lookup_max, k)
        if drafts and request.grammar is not None:
            drafts = _grammar_prefix(request.grammar, drafts)
        return drafts

    @staticmethod
    def _item(request: Request, num_new: int, new_blocks: list[int] | None) -> ScheduledRequest:
        will_sample = request.num_computed_tokens + num_new == len(request.token_ids) + request.num_placeholders
        return ScheduledRequest(request, num_new, will_sample, request.num_preemptions, new_blocks)

    def _describe(self, items: list[ScheduledRequest], preempted: list[Request]) -> SchedulerOutput:
        """The step as data for the workers; then advance every scheduled request past its tokens."""
        # The step's block copies (swap space, the prefix cache's CPU tier), in the order the KV manager made them.
        to_cpu, to_device = self.kv.take_copies()
        out = SchedulerOutput(step_id=self._next_step_id, finished_req_ids=self._finished_ids,
                              preempted_req_ids={r.request_id for r in preempted},
                              blocks_to_swap_out=to_cpu, blocks_to_swap_in=to_device)
        self._next_step_id += 1
        self._finished_ids = set()
        stats = StepStats()
        scheduled = out.num_scheduled_tokens
        num_prompt_tokens = 0
        for item in items:
            r, n = item.request, item.num_new_tokens
            rid = r.request_id
            c = r.num_computed_tokens
            scheduled[rid] = n
            if item.draft_token_ids:
                out.spec_token_ids[rid] = item.draft_token_ids
            if not item.will_sample:
                out.partial_req_ids.add(rid)
            if not r.sent_to_workers:
                out.new_requests.append(NewRequestData(rid, r.prompt_token_ids, r.sampling_params,
                                                       r.eos_token_ids, list(r.block_ids), c, r.pooling_params,
                                                       r.lora_request, r.prompt_embeds, r.mm_features))
                r.sent_to_workers = True
            elif r.resumed:
                out.resumed_requests[rid] = ResumedRequestData(list(r.block_ids), c, len(r.token_ids))
                r.resumed = False
            elif item.new_block_ids:
                out.new_block_ids[rid] = item.new_block_ids
            if c < r.num_prompt_tokens:   # prompt tokens among this step's (a resumed request recomputes outputs too)
                num_prompt_tokens += min(c + n, r.num_prompt_tokens) - c
            r.num_computed_tokens = c + n
            if item.will_sample:
                r.num_placeholders += 1
        stats.num_prompt_tokens = num_prompt_tokens
        out.total_num_scheduled_tokens = sum(out.num_scheduled_tokens.values())
        if items:
            self._launched[out.step_id] = _Launched(items, stats)
        return out

    def _swaps(self, request: Request) -> bool:
        """Swap (True) or recompute this victim? ``preemption_mode`` decides, else the cost rule (SWAP_MIN_BLOCKS);
        without room in the swap space it is always recompute."""
        if self.preemption_mode == "recompute" or not self.kv.can_swap_out(request):
            return False
        return self.preemption_mode == "swap" or len(request.block_ids) > SWAP_MIN_BLOCKS

    def preempt_all(self) -> None:
        """The engine goes to sleep and gives its KV cache's memory back: every running or swapped-out request
        returns to the waiting queue with its KV freed, to be computed again (prefix hits aside) after wake-up."""
        for request in list(self.running):
            self._preempt(request, allow_swap=False, log=False)
        for request in self.swapped:
            self.kv.free(request)          # its CPU blocks too: the swap space is given back as well
            request.num_computed_tokens = 0
            heapq.heappush(self.waiting, request)
        self.swapped = []
        self.kv.take_copies()        # nothing of the dropped KV is copied any more

    def _preempt(self, request: Request, allow_swap: bool = True, log: bool = True) -> None:
        self.running.remove(request)
        swap = allow_swap and self._swaps(request)
        if swap:
            copies = self.kv.swap_out(request)
            self.num_swap_outs += 1
            self.num_blocks_swapped_out += len(copies)
            request.status = RequestStatus.PREEMPTED
            # Its KV is kept, but a token in flight is dropped (async scheduling) and the last known token is
            # computed again when it resumes (its logits give the next token; its KV is rewritten, the same values).
            request.num_computed_tokens = min(request.num_computed_tokens, request.num_tokens - 1)
            heapq.heappush(self.swapped, request)
        else:
            self.kv.free(request)
            request.status = RequestStatus.PREEMPTED
            request.num_computed_tokens = 0
            heapq.heappush(self.waiting, request)
        request.num_placeholders = 0        # a token in flight is dropped; the resumed request samples it again
        request.num_preemptions += 1
        request.resumed = request.sent_to_workers
        if not log:
            return
        self.num_preemptions += 1
        if self.num_preemptions % PREEMPTION_LOG_EVERY == 1 or PREEMPTION_LOG_EVERY == 1:
            # vLLM's warning (first, then every 50th): preemptions cost recomputation, the operator should know.
            logger.warning("Request %s is preempted by %s because there is not enough KV cache space. This "
                           "can affect the end-to-end performance. Increase gpu_memory_utilization (or "
                           "kv_cache_memory) or tensor_parallel_size to provide more KV cache memory. "
                           "total_num_cumulative_preemption=%d", printable_id(request.request_id),
                           "swap" if swap else "recompute", self.num_preemptions)

    # ---- the step's result --------------------------------------------------------------------------------------
    def update_from_output(self, sched_out: SchedulerOutput,
                           result: ModelRunnerOutput) -> tuple[EngineCoreOutputs, StepStats]:
        """Commit a step's sampled tokens (placeholder -> token), apply the token-level stop rules (EOS, stop token
        ids, max_tokens, max_model_len; stop strings are the front end's), free what finished. A request that
        finished, was aborted or was preempted since the step was launched drops its token."""
        out = EngineCoreOutputs()
        launched = self._launched.pop(sched_out.step_id, None)
        if launched is None:
            return out, StepStats()
        stats = launched.stats
        sampled, logprobs, prompt_logprobs = result.sampled, result.logprobs, result.prompt_logprobs
        pooled = result.pooled
        running = RequestStatus.RUNNING
        req_ids, new_tokens = out.req_ids, out.new_token_ids
        for item in launched.items:     # the hot loop of every step: one pass, locals only
            r = item.request
            rid = r.request_id
            alive = r.status == running and r.num_preemptions == item.num_preemptions
            if prompt_logprobs and alive and rid in prompt_logprobs:
                out.prompt_logprobs[rid] = prompt_logprobs[rid]
            if pooled and rid in pooled:   # a pooling request: its vector ends it
                if alive:
                    r.num_placeholders = 0
                    self.finish_request(r, RequestStatus.FINISHED_STOPPED)
                    out.pooled[rid] = pooled[rid]
                    out.first_scheduled_time[rid] = r.first_scheduled_time
                continue
            token = sampled.get(rid) if item.will_sample and alive and r.num_placeholders else None
            if token is None:
                continue
            if item.draft_token_ids:      # speculative decoding: the accepted drafts, then the sampled token
                self._commit_speculated(item, token, result, out)
                continue
            r.num_placeholders -= 1
            token_ids = r.token_ids
            token_ids.append(token)
            req_ids.append(rid)
            new_tokens.append(token)
            if logprobs and rid in logprobs:
                out.logprobs[rid] = logprobs[rid]
            first = len(token_ids) == r.num_prompt_tokens + 1
            if first:
                out.num_cached_tokens[rid] = max(r.num_cached_tokens, 0)
                out.first_scheduled_time[rid] = r.first_scheduled_time
            status = self._check_stop(r)
            if r.thinking_budget is not None:
                r.thinking_budget.advance(token)
            if r.reasoning_end_ids is not None:      # thinking: the grammar starts after the end-of-thinking token
                if token in r.reasoning_end_ids:
                    r.reasoning_end_ids = None
            elif r.grammar is not None and self._grammar_ended(r, token) and status is None:
                status = RequestStatus.FINISHED_STOPPED
            if status is not None:
                self.finish_request(r, status)
                out.finished[rid] = (FINISH_REASONS[status], r.stop_reason)
                if not first:
                    out.num_cached_tokens[rid] = max(r.num_cached_tokens, 0)
        stats.num_generation_tokens += len(req_ids)
        if out.earlier_token_ids:     # speculative decoding: a request's accepted drafts before its one entry
            stats.num_generation_tokens += sum(map(len, out.earlier_token_ids.values()))
        return out, stats

    def _commit_speculated(self, item: ScheduledRequest, token: int, result: ModelRunnerOutput,
                           out: EngineCoreOutputs) -> None:
        """A request that verified drafts this step: its progress falls back to the tokens whose K/V hold (the last
        token and the accepted drafts; the rejected drafts' slots are written over later), then the accepted drafts
        and the sampled token join it one by one under the stop rules, and nothing after a stop is kept. The tokens
        before the last go in ``out.earlier_token_ids`` (the output processor takes them before ``req_ids``')."""
        r, drafts = item.request, item.draft_token_ids
        accepted = result.accepted_draft_ids.get(r.request_id, ())
        stats = self.spec_stats
        stats.num_drafts += 1
        stats.num_draft_tokens += len(drafts)
        stats.num_accepted_tokens += len(accepted)
        per_pos = stats.num_accepted_tokens_per_pos
        for j in range(len(accepted)):
            per_pos[j] += 1
        r.num_placeholders -= 1
        r.num_computed_tokens -= len(drafts) - len(accepted)
        rid = r.request_id
        first = r.num_output_tokens == 0
        kept: list[int] = []
        status = None
        for t in (*accepted, token):
            r.token_ids.append(t)
            kept.append(t)
            status = self._check_stop(r)
            if r.grammar is not None and self._grammar_ended(r, t) and status is None:
                status = RequestStatus.FINISHED_STOPPED
            if status is not None:
                break
        if len(kept) > 1:
            out.earlier_token_ids[rid] = kept[:-1]
        out.req_ids.append(rid)
        out.new_token_ids.append(kept[-1])
        if rid in result.logprobs:        # one tuple per kept token: the drafts', then the sampled token's
            rows = [*result.accepted_draft_logprobs.get(rid, ()), result.logprobs[rid]][:len(kept)]
            if len(rows) > 1:
                out.earlier_logprobs[rid] = rows[:-1]
            out.logprobs[rid] = rows[-1]
        if first:
            out.num_cached_tokens[rid] = max(r.num_cached_tokens, 0)
            out.first_scheduled_time[rid] = r.first_scheduled_time
        if status is not None:
            self.finish_request(r, status)
            out.finished[rid] = (FINISH_REASONS[status], r.stop_reason)
            if not first:
                out.num_cached_tokens[rid] = max(r.num_cached_tokens, 0)

    @staticmethod
    def _grammar_ended(request: Request, token: int) -> bool:
        """Structured output: the request's matcher takes the token; True when its grammar has ended."""
        matcher = request.grammar
        if not matcher.accept_token(token):
            # Cannot happen for a masked step; loud, because the output no longer follows the grammar.
            logger.error("Request %s: token %d is not allowed by its grammar; ending the request.",
                         request.request_id, token)
            return True
        return matcher.is_terminated()

    def _check_stop(self, request: Request) -> RequestStatus | None:
        """Token-level stop conditions after a new token (stop strings are the front end's output processor's)."""
        sp = request.sampling_params
        last = request.token_ids[-1]
        n_out = request.num_output_tokens
        if n_out >= sp.min_tokens:
            if not sp.ignore_eos and last in request.eos_token_ids:
                if request.eos_token_id is not None and last != request.eos_token_id:
                    request.stop_reason = last      # a generation config's other EOS: vLLM's stop_token_ids
                return RequestStatus.FINISHED_STOPPED
            if last in sp.stop_token_ids:
                request.stop_reason = last
                return RequestStatus.FINISHED_STOPPED
        if request.max_tokens is not None and n_out >= request.max_tokens:
            return RequestStatus.FINISHED_LENGTH_CAPPED
        if request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH_CAPPED
        if sp.repetition_detection is not None and sp.repetition_detection.found_in(request.output_token_ids):
            request.stop_reason = "repetition_detected"      # vLLM's
            return RequestStatus.FINISHED_REPETITION
        return None

    def launched_items(self, step_id: int) -> list[ScheduledRequest]:
        """The scheduler's record of a launched step (the engine core reads the requests' sampling settings)."""
        launched = self._launched.get(step_id)
        return launched.items if launched is not None else []
