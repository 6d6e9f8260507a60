"""The front end's output processor: turns the engine core's per-request token ids into ``RequestOutput``s —
detokenization, stop strings, logprob strings and the gathering of ``n`` completions — in the front end's process,
so the engine core does no string work.

A stop string ends a completion here, a step or two after the core produced its tokens (async scheduling); the
processor then asks the core to drop the request (``process_outputs`` returns those ids) and never shows the extra
tokens the core may already have computed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pagedllm.engine.detokenizer import IncrementalDetokenizer, decode_token
from pagedllm.engine.input_processor import ProcessedRequest
from pagedllm.engine.messages import EngineCoreOutputs
from pagedllm.logprobs import FlatLogprobs
from pagedllm.outputs import (CompletionOutput, Logprob, PoolingOutput, PoolingRequestOutput, RequestMetrics,
                              RequestOutput)
from pagedllm.sampling_params import RequestOutputKind, SamplingParams


@dataclass
class _Completion:
    """One of a request's ``n`` completions (one engine-core request)."""
    index: int
    params: SamplingParams
    token_ids: list[int]                         # prompt + output
    num_prompt_tokens: int
    detok: IncrementalDetokenizer | None
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    sent_tokens: int = 0                         # for DELTA outputs
    sent_chars: int = 0
    sent_finish: bool = False

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]


@dataclass
class _RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None           # None for a prompt_embeds prompt
    params: SamplingParams
    arrival_time: float
    completions: dict[str, _Completion]          # core request id -> completion
    num_finished: int = 0                        # completions with a finish reason
    prompt_logprobs: list | None = None
    num_cached_tokens: int = 0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    lora_request: Any = None

    @property
    def finished(self) -> bool:
        return self.num_finished == len(self.completions)


class OutputProcessor:
    def __init__(self, tokenizer: Any, stream_interval: int = 1):
        self.tokenizer = tokenizer
        # vLLM's stream_interval: a DELTA completion is reported at its first token, then once this many new tokens
        # have come, and at its finish (cumulative outputs are reported every step, as vLLM's).
        self.stream_interval = stream_interval
        self.requests: dict[str, _RequestState] = {}
        self.core_to_request: dict[str, str] = {}      # core request id -> the user's request id
        # The requests the last process_outputs gave new tokens, whether or not it reported them (a FINAL_ONLY
        # request's tokens come in no output until its finish): the metrics time each token step from these.
        self.last_token_request_ids: list[str] = []

    def add_request(self, req: ProcessedRequest) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"Request id {req.request_id!r} is already running.")
        completions = {}
        # A prompt_embeds prompt's ids are placeholders: its completions decode from their first output token,
        # and its RequestOutput shows prompt_token_ids=None (as vLLM's).
        prompt_ids = req.prompt_token_ids if req.prompt_embeds is None else []
        for index, child in enumerate(req.children):
            detok = None
            if self.tokenizer is not None and getattr(req.params, "detokenize", False):
                detok = IncrementalDetokenizer(self.tokenizer, child.sampling_params, len(prompt_ids))
            completions[child.request_id] = _Completion(index, child.sampling_params, list(prompt_ids),
                                                        len(prompt_ids), detok)
            self.core_to_request[child.request_id] = req.request_id
        state = _RequestState(req.request_id, req.prompt, req.prompt_token_ids if req.prompt_embeds is None else None,
                              req.params, req.arrival_time, completions, lora_request=req.lora_request)
        if getattr(req.params, "prompt_logprobs", None) is not None:     # (PoolingParams have none)
            # One entry per prompt token, the first None (nothing predicts it): a one-token prompt gets [None],
            # as vLLM, although no prompt-logprob row ever arrives for it.
            state.prompt_logprobs = [None] * len(req.prompt_token_ids)
        self.requests[req.request_id] = state

    def abort_request(self, request_id: str) -> list[str]:
        """Forget a request; returns the core request ids the engine core must drop (empty if unknown)."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return []
        for cid in state.completions:
            self.core_to_request.pop(cid, None)
        return [cid for cid, c in state.completions.items() if c.finish_reason is None]

    def abort_output(self, request_id: str) -> RequestOutput | None:
        """vLLM's last output of a request its caller aborts: what it generated so far, each unfinished completion
        with finish_reason "abort" (None: an unknown request, or a pooling one)."""
        state = self.requests.get(request_id)
        if state is None or not isinstance(state.params, SamplingParams):
            return None
        for comp in state.completions.values():
            if comp.finish_reason is None:
                comp.finish_reason = "abort"
        state.num_finished = len(state.completions)
        return self._make_output(state)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    # ---- a step's outputs ---------------------------------------------------------------------------------------
    def process_outputs(self, outputs: EngineCoreOutputs,
                        now: float | None = None) -> tuple[list[RequestOutput | PoolingRequestOutput], list[str]]:
        """The RequestOutputs of the requests these core outputs touched (a prompt chunk that only produced prompt
        logprobs is not reported, as vLLM), and the core request ids a stop string ended."""
        now = time.time() if now is None else now
        touched: dict[str, _RequestState] = {}
        stopped: list[str] = []
        requests, core_to_request = self.requests, self.core_to_request
        results: list = []
        for cid, vector in outputs.pooled.items():     # a pooling request ends with its vector
            rid = core_to_request.pop(cid, None)
            if rid is not None:
                state = requests.pop(rid)
                results.append(PoolingRequestOutput(rid, PoolingOutput(vector), state.prompt_token_ids, True,
                                                    state.prompt))
        for cid, rows in outputs.prompt_logprobs.items():
            rid = core_to_request.get(cid)
            if rid is not None and requests[rid].completions[cid].index == 0:
                self._record_prompt_logprobs(requests[rid], rows)
        if outputs.earlier_token_ids:
            self._process_earlier_tokens(outputs.earlier_token_ids, outputs.earlier_logprobs, touched, stopped)
        finished, logprobs = outputs.finished, outputs.logprobs
        for cid, token in zip(outputs.req_ids, outputs.new_token_ids):   # the hot loop: one token per request
            rid = core_to_request.get(cid)
            if rid is None:
                continue     # aborted, or finished by a stop string while the core computed on
            state = requests[rid]
            comp = state.completions[cid]
            if comp.finish_reason is not None:
                continue
            comp.token_ids.append(token)
            end = finished.get(cid)
            if comp.detok is not None or cid in logprobs:
                if self._update(comp, token, end, logprobs.get(cid)):
                    stopped.append(cid)
            elif end is not None:
                comp.finish_reason, comp.stop_reason = end
            if comp.finish_reason is not None:
                state.num_finished += 1
            touched[rid] = state
        for cid, cached in outputs.num_cached_tokens.items():
            rid = core_to_request.get(cid)
            if rid is not None and requests[rid].completions[cid].index == 0:
                state = requests[rid]
                state.num_cached_tokens = cached
                if cid in outputs.first_scheduled_time and state.first_scheduled_time is None:
                    state.first_scheduled_time = outputs.first_scheduled_time[cid]
        self.last_token_request_ids = list(touched)
        final_only = RequestOutputKind.FINAL_ONLY
        for state in touched.values():
            if state.first_token_time is None:
                state.first_token_time = now
            state.last_token_time = now
            finished_now = state.finished
            if not finished_now and state.params.output_kind == final_only:
                continue
            result = self._make_output(state)
            if result is not None:
                results.append(result)
            if finished_now:
                self.requests.pop(state.request_id, None)
                for c in state.completions:
                    self.core_to_request.pop(c, None)
        return results, stopped

    def _process_earlier_tokens(self, earlier: dict[str, list[int]], earlier_logprobs: dict[str, list],
                                touched: dict, stopped: list[str]) -> None:
        """Speculative decoding: the tokens a request got this step before its entry in ``req_ids`` (its accepted
        drafts), each detokenized and checked for stop strings in order; a stop string among them ends the
        completion, and its later tokens (the step's last one included) are dropped."""
        for cid, tokens in earlier.items():
            rid = self.core_to_request.get(cid)
            if rid is None:
                continue
            state = self.requests[rid]
            comp = state.completions[cid]
            logprobs = earlier_logprobs.get(cid)
            for j, token in enumerate(tokens):
                if comp.finish_reason is not None:
                    break
                comp.token_ids.append(token)
                if (comp.detok is not None or logprobs) and self._update(comp, token, None,
                                                                         logprobs[j] if logprobs else None):
                    stopped.append(cid)
                    state.num_finished += 1
            touched[rid] = state

    def _update(self, comp: _Completion, token: int, end: tuple | None, new_logprobs: tuple | None) -> bool:
        """Detokenize a completion's new token, record its logprobs, apply stop strings; True when a stop string
        ended it (the core must drop it)."""
        sp = comp.params
        if new_logprobs is not None and sp.logprobs is not None:
            ids, vals, chosen_lp, rank = new_logprobs
            comp.logprobs.append(self._logprob_dict(ids, vals, token, chosen_lp, rank))
            comp.cumulative_logprob += chosen_lp
        finish, stop_reason = end if end is not None else (None, None)
        stopped_here = False
        if comp.detok is not None:
            # The EOS / stop token's own text is left out unless include_stop_str_in_output (as vLLM).
            ids = comp.token_ids
            if finish == "stop" and not sp.include_stop_str_in_output:
                ids = ids[:-1]
            num_output = len(comp.token_ids) - comp.num_prompt_tokens
            # Stop strings only count once min_tokens are out (as vLLM).
            stop_str = comp.detok.update(ids, check_stop=num_output > sp.min_tokens)
            if stop_str is not None and (finish is None or stop_reason is None):
                stopped_here = finish is None
                finish, stop_reason = "stop", stop_str
        comp.finish_reason, comp.stop_reason = finish, stop_reason
        return stopped_here

    def _logprob_dict(self, ids, vals, chosen, chosen_lp, rank) -> dict[int, Logprob]:
        entries: dict[int, Logprob] = {}
        tok = self.tokenizer
        dec = (lambda t: decode_token(tok, t)) if tok is not None else (lambda t: None)
        # The sampled token first, then the top-k (vLLM's order); rank 1 = most likely.
        entries[chosen] = Logprob(chosen_lp, rank, dec(chosen))
        for j, (tid, val) in enumerate(zip(ids, vals)):
            if tid not in entries:
                entries[tid] = Logprob(val, j + 1, dec(tid))
        return entries

    def _record_prompt_logprobs(self, state: _RequestState, rows: list) -> None:
        if state.prompt_logprobs is None:
            state.prompt_logprobs = [None] * len(state.prompt_token_ids)
        for pos, target, lp, rank, ids, vals in rows:
            state.prompt_logprobs[pos] = self._logprob_dict(ids, vals, target, lp, rank)

    def _make_output(self, state: _RequestState) -> RequestOutput | None:
        kind = state.params.output_kind
        finished = state.finished
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        delta = kind == RequestOutputKind.DELTA
        completions = []
        for comp in state.completions.values():
            text = comp.detok.visible_text(comp.finish_reason is not None) if comp.detok is not None else ""
            want_logprobs = comp.params.logprobs is not None
            logprobs = comp.logprobs if want_logprobs else None
            if delta:
                # Only what is new: a slice of the tail, not a copy of the whole output each step.
                token_ids = comp.token_ids[comp.num_prompt_tokens + comp.sent_tokens:]
                text = text[comp.sent_chars:]
                if not token_ids and not text and (comp.finish_reason is None or comp.sent_finish):
                    # Nothing new for this one of the n (another completion stepped, or this one's finish was
                    # sent already): as vLLM, a delta carries only completions with news, each finish once.
                    continue
                if (comp.finish_reason is None and comp.sent_tokens > 0
                        and len(token_ids) < max(self.stream_interval, comp.params.stream_interval or 1)):
                    continue        # held until stream_interval tokens have come (they go out together)
                if logprobs is not None:
                    logprobs = logprobs[comp.sent_tokens:]
                comp.sent_tokens += len(token_ids)
                comp.sent_chars += len(text)
                comp.sent_finish = comp.finish_reason is not None
            else:
                token_ids = comp.output_token_ids
            if logprobs is not None and comp.params.flat_logprobs:
                logprobs = FlatLogprobs.from_positions(logprobs)
            completions.append(CompletionOutput(
                index=comp.index, text=text, token_ids=token_ids,
                cumulative_logprob=comp.cumulative_logprob if want_logprobs else None,
                logprobs=logprobs, finish_reason=comp.finish_reason, stop_reason=comp.stop_reason,
                lora_request=state.lora_request))
        if delta and not completions and not finished:
            return None
        prompt_logprobs = state.prompt_logprobs if state.params.prompt_logprobs is not None else None
        if prompt_logprobs is not None and getattr(state.params, "flat_logprobs", False):
            prompt_logprobs = FlatLogprobs.from_positions(prompt_logprobs)
        metrics = None
        if finished or not delta:   # streamed deltas carry their timings once, at the end (as the old engine did)
            metrics = RequestMetrics(arrival_time=state.arrival_time, first_scheduled_time=state.first_scheduled_time,
                                     first_token_time=state.first_token_time, last_token_time=state.last_token_time,
                                     finished_time=time.time() if finished else None)
        return RequestOutput(request_id=state.request_id, prompt=state.prompt,
                             prompt_token_ids=state.prompt_token_ids, prompt_logprobs=prompt_logprobs,
                             outputs=completions, finished=finished, metrics=metrics,
                             num_cached_tokens=state.num_cached_tokens, lora_request=state.lora_request)
