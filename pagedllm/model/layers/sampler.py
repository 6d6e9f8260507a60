"""Sampling: masks and penalties -> temperature -> min-p -> top-k -> top-p -> sample, plus logprobs.

Logprobs are by default those of the raw model distribution (log-softmax of the logits before any penalty or
temperature), as vLLM returns them. vLLM's ``logprobs_mode`` picks other values: ``raw_logits`` (the model's
logits), ``processed_logprobs`` / ``processed_logits`` (after every step that shapes the distribution the token is
drawn from: allowed tokens, logit bias, min_tokens, bad words, penalties, and for a random row temperature, min-p,
top-k and top-p, whose dropped tokens are -inf; a greedy row takes no temperature). Seeded requests draw from
their own generator, so their tokens do not depend on what else is in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from pagedllm.model.layers.logits_processors import CustomLogitsProcessors
from pagedllm.sampling_params import SamplingParams


class SamplingRow(Protocol):
    """What the sampler reads about the request of one logits row (the worker's request state provides it)."""
    sampling_params: SamplingParams
    generator: torch.Generator | None
    token_ids: list[int]            # prompt + output tokens known on this host
    num_prompt_tokens: int
    # False after a prompt_embeds prompt: its prompt ids are placeholders, so the repetition penalty and bad words
    # read the output tokens alone.
    prompt_ids_known: bool
    eos_token_ids: frozenset[int]
    num_computed_tokens: int        # the index of the token being sampled

    @property
    def output_token_ids(self) -> list[int]: ...


@dataclass
class SamplerOutput:
    tokens: torch.Tensor          # [R] the sampled tokens, on the logits' device
    token_ids: list[int]
    # Per row: (top ids, top logprobs, sampled logprob, sampled rank) when logprobs were asked, else None.
    logprobs: list[tuple[list[int], list[float], float, int] | None]


def to_device(values, device) -> torch.Tensor:
    """A small host list as a device tensor, copied without waiting for the device's queued work (a plain
    ``torch.tensor(..., device=cuda)`` would wait for it and undo async scheduling's overlap)."""
    return torch.tensor(values).to(device, non_blocking=True)


def apply_grammar_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """Structured output: in place, -inf on the logits of ``rows`` wherever the matching row of xgrammar's int32
    bitmask (bit ``t % 32`` of word ``t // 32`` set = token ``t`` allowed) is clear. xgrammar picks its kernel for
    the logits' device (CPU or CUDA). Without xgrammar (a thinking budget's forced token needs no grammar), torch
    unpacks the bits."""
    try:
        import xgrammar
    except ImportError:
        bits = torch.arange(32, dtype=torch.int32)
        allowed = ((bitmask.unsqueeze(-1) >> bits) & 1).bool().reshape(bitmask.shape[0], -1)
        allowed = allowed[:, :logits.shape[1]].to(logits.device, non_blocking=True)
        index = torch.tensor(rows, device=logits.device)
        logits[index] = logits[index].masked_fill(~allowed, float("-inf"))
        return
    # xgrammar indexes the logits and the bitmask by the same row: lay the rows out as the logits are (-1: every
    # token allowed, for the free rows in between).
    full = torch.full((logits.shape[0], bitmask.shape[1]), -1, dtype=bitmask.dtype)
    full[rows] = bitmask
    xgrammar.apply_token_bitmask_inplace(logits, full.to(logits.device, non_blocking=True), indices=rows)


def _pad(rows: list[list[int]], fill: int, device) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out.to(device, non_blocking=True)


def _token_mask(rows: list[list[int]], vocab: int, device) -> torch.Tensor:
    """[R, V] bool, True where the row's token list contains the token."""
    ids = _pad(rows, vocab, device)      # pad with an out-of-range id, dropped by the extra column
    mask = torch.zeros(len(rows), vocab + 1, dtype=torch.bool, device=device)
    mask.scatter_(1, ids, True)
    return mask[:, :vocab]


def _token_counts(rows: list[list[int]], vocab: int, device) -> torch.Tensor:
    ids = _pad(rows, vocab, device)
    counts = torch.zeros(len(rows), vocab + 1, dtype=torch.float32, device=device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float32))
    return counts[:, :vocab]


class Sampler:
    def __init__(self, logprobs_mode: str = "raw_logprobs", custom: CustomLogitsProcessors | None = None):
        """``logprobs_mode``: one of sampling_params.LOGPROBS_MODES (verify_engine_args checks the setting).
        ``custom``: the engine's custom logits processors (``logits_processors``), None without."""
        self.logprobs_mode = logprobs_mode
        self.custom = custom

    def __call__(self, logits: torch.Tensor, requests: list[SamplingRow]) -> SamplerOutput:
        """Sample and bring the tokens (and the logprobs asked for, in ``logprobs_mode``) to the host."""
        logits = logits.float()
        params = [r.sampling_params for r in requests]
        wanted = any(sp.logprobs is not None for sp in params)
        processed_mode = self.logprobs_mode.startswith("processed")
        values = self.raw_values(logits) if wanted and not processed_mode else None
        sampled, processed = self._sample(logits, requests, keep_processed=wanted and processed_mode)
        if processed is not None:
            values = processed if self.logprobs_mode == "processed_logits" else torch.log_softmax(processed, dim=-1)
        token_ids = sampled.tolist()
        logprob_out: list = [None] * logits.shape[0]
        if values is not None:
            for i, sp in enumerate(params):
                if sp.logprobs is None:
                    continue
                logprob_out[i] = top_logprobs(values[i], token_ids[i], sp.logprobs)
        return SamplerOutput(sampled, token_ids, logprob_out)

    def raw_values(self, logits: torch.Tensor) -> torch.Tensor:
        """What a raw ``logprobs_mode`` returns, as a new tensor (the sampling steps then change ``logits`` in
        place): the log-softmax of the logits, or a copy of them (``raw_logits``)."""
        if self.logprobs_mode == "raw_logits":
            return logits.float().clone()
        return torch.log_softmax(logits.float(), dim=-1)

    def processed_logits(self, logits: torch.Tensor, requests: list[SamplingRow]) -> torch.Tensor:
        """The logits after masks, bias, min_tokens, bad words and penalties (float32): what greedy rows take the
        argmax of (speculative decoding's verification)."""
        return self._apply_penalties(self._apply_masks(logits.float(), requests), requests)

    def sampling_probs(self, logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """The distribution random rows draw from: temperature, min-p, top-k, top-p over processed logits."""
        return torch.softmax(self._truncated_logits(logits, params), dim=-1)

    def sample(self, logits: torch.Tensor, requests: list[SamplingRow]) -> torch.Tensor:
        """The sampled tokens as a device tensor, without waiting for the device (async scheduling)."""
        return self._sample(logits, requests)[0]

    def _sample(self, logits: torch.Tensor, requests: list[SamplingRow],
                keep_processed: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The sampled tokens, and with ``keep_processed`` each row's logits as last shaped before its draw (the
        processed ``logprobs_mode``s)."""
        logits = self._apply_masks(logits.float(), requests)
        if self.custom is not None:       # their batch changes first, then the greedy-changing ones (vLLM's order)
            self.custom.update(requests)
            logits = self.custom.apply(logits, argmax_invariant=False)
        logits = self._apply_penalties(logits, requests)
        greedy = [r.sampling_params.greedy for r in requests]
        if all(greedy):
            return logits.argmax(dim=-1), (logits if keep_processed else None)
        return self._sample_mixed(logits, requests, greedy, keep_processed)

    def _sample_mixed(self, logits: torch.Tensor, requests: list[SamplingRow], greedy: list[bool],
                      keep_processed: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Greedy rows take the argmax; the others are drawn from their processed distribution."""
        device = logits.device
        params = [r.sampling_params for r in requests]
        sampled = torch.empty(logits.shape[0], dtype=torch.long, device=device)
        if any(greedy):
            idx = to_device([i for i, g in enumerate(greedy) if g], device)
            sampled[idx] = logits[idx].argmax(dim=-1)
        rows = [i for i, g in enumerate(greedy) if not g]
        idx = to_device(rows, device)
        scaled = None
        if self.custom is not None and self.custom.has_argmax_invariant:
            # Argmax-invariant custom processors see the whole batch after the temperature (the random rows'
            # logits divided by it), as in vLLM; only the random rows read their result.
            scaled = logits.clone()
            scaled[idx] = logits[idx] / to_device([params[i].temperature for i in rows], device)[:, None]
            scaled = self.custom.apply(scaled, argmax_invariant=True)[idx]
        truncated = self._truncated_logits(logits[idx] if scaled is None else scaled, [params[i] for i in rows],
                                           scaled=scaled is not None)
        probs = torch.softmax(truncated, dim=-1)
        processed = None
        if keep_processed:
            processed = logits.clone()
            processed[idx] = truncated
        noise = torch.empty_like(probs)
        unseeded = [j for j, i in enumerate(rows) if requests[i].generator is None]
        if unseeded:
            fresh = torch.empty(len(unseeded), logits.shape[1], device=device).exponential_()
            noise[to_device(unseeded, device)] = fresh
        for j, i in enumerate(rows):
            if requests[i].generator is not None:
                noise[j].exponential_(generator=requests[i].generator)
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p, without a CDF search.
        sampled[idx] = (probs / noise).argmax(dim=-1)
        return sampled, processed

    @staticmethod
    def _apply_masks(logits: torch.Tensor, requests: list[SamplingRow]) -> torch.Tensor:
        vocab = logits.shape[1]
        for i, r in enumerate(requests):
            sp = r.sampling_params
            if sp.allowed_token_ids is not None:
                keep = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
                keep[to_device(sp.allowed_token_ids, logits.device)] = True
                logits[i].masked_fill_(~keep, float("-inf"))
            if sp.logit_bias:
                ids = to_device(list(sp.logit_bias), logits.device)
                logits[i, ids] += to_device(list(sp.logit_bias.values()), logits.device)
            # Output tokens before this one, those still in flight (async scheduling) included.
            if r.num_computed_tokens - r.num_prompt_tokens < sp.min_tokens:
                blocked = set(sp.stop_token_ids) | (set() if sp.ignore_eos else r.eos_token_ids)
                if blocked:
                    ids = to_device(sorted(blocked), logits.device)
                    kept = logits[i, ids].clone() if sp.structured_outputs is not None else None
                    logits[i, ids] = float("-inf")
                    # A grammar that has ended allows only EOS: it wins over min_tokens (vLLM, PR 54218), else
                    # the row has no token left and the sample falls outside the grammar. The request then ends
                    # when its matcher accepts EOS (Scheduler.update_from_output). A host sync, constrained rows
                    # only (their steps are synchronous anyway).
                    if kept is not None and bool(torch.isneginf(logits[i]).all()):
                        logits[i, ids] = kept
            if sp._bad_words_token_ids:
                # A one-token bad word is always banned; a longer one bans its last token right after the rest of
                # it (prompt + output so far: the host's tokens, so such requests are not sampled asynchronously).
                ids = r.token_ids if r.prompt_ids_known else r.output_token_ids
                banned = {word[-1] for word in sp._bad_words_token_ids
                          if len(word) - 1 <= len(ids) and ids[len(ids) - len(word) + 1:] == word[:-1]}
                if banned:
                    logits[i, to_device(sorted(banned), logits.device)] = float("-inf")
        return logits

    @staticmethod
    def _apply_penalties(logits: torch.Tensor, requests: list[SamplingRow]) -> torch.Tensor:
        params = [r.sampling_params for r in requests]
        vocab = logits.shape[1]
        rep = [sp.repetition_penalty for sp in params]
        if any(p != 1.0 for p in rep):
            seen = _token_mask([r.token_ids if r.prompt_ids_known else r.output_token_ids for r in requests], vocab,
                               logits.device)
            p = to_device(rep, logits.device)[:, None].expand_as(logits)
            penalized = torch.where(logits > 0, logits / p, logits * p)
            logits = torch.where(seen, penalized, logits)
        freq = [sp.frequency_penalty for sp in params]
        pres = [sp.presence_penalty for sp in params]
        if any(freq) or any(pres):
            counts = _token_counts([r.output_token_ids for r in requests], vocab, logits.device)
            logits = logits - to_device(freq, logits.device)[:, None] * counts
            logits = logits - to_device(pres, logits.device)[:, None] * (counts > 0).float()
        return logits

    @staticmethod
    def _truncated_logits(logits: torch.Tensor, params, scaled: bool = False) -> torch.Tensor:
        """Random rows' logits over temperature (``scaled``: already divided), with the tokens min-p, top-k and
        top-p drop at -inf."""
        device = logits.device
        if not scaled:
            logits = logits / to_device([sp.temperature for sp in params], device)[:, None]
        min_p = [sp.min_p for sp in params]
        if any(min_p):
            probs = torch.softmax(logits, dim=-1)
            threshold = to_device(min_p, device)[:, None] * probs.max(dim=-1, keepdim=True).values
            logits = logits.masked_fill(probs < threshold, float("-inf"))
        top_k = [sp.top_k for sp in params]
        top_p = [sp.top_p for sp in params]
        if any(k > 0 for k in top_k) or any(p < 1.0 for p in top_p):
            # One sort serves both top-k and top-p.
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            vocab = logits.shape[1]
            ranks = torch.arange(vocab, device=device)[None, :]
            k = to_device([k if k > 0 else vocab for k in top_k], device)[:, None]
            sorted_logits = sorted_logits.masked_fill(ranks >= k, float("-inf"))
            probs_sorted = torch.softmax(sorted_logits, dim=-1)
            # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it already does.
            mass_before = probs_sorted.cumsum(dim=-1) - probs_sorted
            p = to_device(top_p, device)[:, None]
            sorted_logits = sorted_logits.masked_fill(mass_before >= p, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
        return logits


def top_logprobs(row_logprobs: torch.Tensor, chosen: int, k: int) -> tuple[list[int], list[float], float, int]:
    """Top ``k`` (-1: all) token ids/logprobs of one row, plus the chosen token's logprob and 1-based rank."""
    vocab = row_logprobs.shape[0]
    k = vocab if k == -1 else min(k, vocab)
    chosen_lp = row_logprobs[chosen]
    rank = int((row_logprobs > chosen_lp).sum().item()) + 1
    if k > 0:
        values, ids = row_logprobs.topk(k)
        return ids.tolist(), values.tolist(), float(chosen_lp.item()), rank
    return [], [], float(chosen_lp.item()), rank
