"""Speculative decoding's verification: which draft tokens the target model keeps, and the one token it adds.

A request with k drafts gets k + 1 logits rows from one forward pass: row j is the model's distribution of the token
after its last token and the first j drafts. Each row is processed as the sampler processes a row (masks, bias,
min_tokens, bad words, penalties over the tokens before it, drafts included; then temperature, min-p, top-k,
top-p), then:

* greedy (temperature 0): drafts are accepted while they equal the row's argmax; the first mismatch is replaced by
  the argmax, and when all k are accepted the last row's argmax is added (the "bonus" token). The output equals
  decoding without drafts, token for token.
* sampling: n-gram drafts are one-hot proposals q, so draft d at row j is accepted with probability p_j(d) (vLLM's
  rule min(1, p/q)); on the first rejection the token is drawn from p_j with d removed and renormalised (the
  residual max(p - q, 0)), else the bonus token from the last row. Each emitted token is distributed as p_j exactly
  (Leviathan et al., 2023). A seeded request draws every random number from its own generator.
"""
from __future__ import annotations

import torch

from pagedllm.model.layers.sampler import Sampler, SamplingRow, to_device


class DraftRow:
    """The sampler's view of one verification row: the request with the first ``num_drafts`` drafts appended (the
    token list is built only when the sampler reads it: penalties and bad words)."""
    __slots__ = ("request", "drafts", "sampling_params", "generator", "num_prompt_tokens", "eos_token_ids",
                 "num_computed_tokens", "prompt_ids_known")

    def __init__(self, request: SamplingRow, drafts: list[int], num_drafts: int):
        self.request = request
        self.drafts = drafts[:num_drafts]
        self.sampling_params = request.sampling_params
        self.generator = request.generator
        self.num_prompt_tokens = request.num_prompt_tokens
        self.prompt_ids_known = request.prompt_ids_known
        self.eos_token_ids = request.eos_token_ids
        # The index of the token this row samples (the request's own count is past all of the step's tokens).
        self.num_computed_tokens = len(request.token_ids) + num_drafts

    @property
    def token_ids(self) -> list[int]:
        return self.request.token_ids + self.drafts

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]


def rejection_sample(sampler: Sampler, logits: torch.Tensor, requests: list[SamplingRow],
                     drafts: list[list[int]]) -> list[tuple[list[int], int]]:
    """``logits``: the requests' rows one after another (len(drafts[i]) + 1 rows for request i). Returns, per
    request, the accepted drafts and the token sampled after them. A few host round trips per step, whatever the
    batch: the argmaxes, the drafts' target probabilities and uniforms, the final draws."""
    rows = [DraftRow(r, d, j) for r, d in zip(requests, drafts) for j in range(len(d) + 1)]
    processed = sampler.processed_logits(logits, rows)
    starts, start = [], 0
    for d in drafts:
        starts.append(start)
        start += len(d) + 1
    results: list[tuple[list[int], int] | None] = [None] * len(requests)
    greedy = [i for i, r in enumerate(requests) if r.sampling_params.greedy]
    if greedy:
        argmax = processed.argmax(dim=-1).tolist()
        for i in greedy:
            d, s = drafts[i], starts[i]
            accepted = 0
            while accepted < len(d) and d[accepted] == argmax[s + accepted]:
                accepted += 1
            results[i] = (d[:accepted], argmax[s + accepted])
    sampled = [i for i, r in enumerate(requests) if not r.sampling_params.greedy]
    if sampled:
        _verify_sampled(sampler, processed, requests, drafts, starts, sampled, results)
    return results


def _verify_sampled(sampler: Sampler, processed: torch.Tensor, requests: list[SamplingRow],
                    drafts: list[list[int]], starts: list[int], which: list[int], results: list) -> None:
    """Rejection sampling of the one-hot drafts of the requests ``which`` against their target distributions."""
    device = processed.device
    # Each request's rows, in order, as rows of ``probs``.
    local = [list(range(starts[i], starts[i] + len(drafts[i]) + 1)) for i in which]
    flat = [row for rows in local for row in rows]
    params = [requests[i].sampling_params for i in which for _ in range(len(drafts[i]) + 1)]
    probs = sampler.sampling_probs(processed[to_device(flat, device)], params)
    offset, pos = [], 0
    for rows in local:
        offset.append(pos)
        pos += len(rows)
    # The target probability of every draft, and a uniform per draft (a seeded request's from its generator).
    draft_rows = [offset[n] + j for n, i in enumerate(which) for j in range(len(drafts[i]))]
    draft_ids = [t for i in which for t in drafts[i]]
    p_draft = probs[to_device(draft_rows, device), to_device(draft_ids, device)].tolist() if draft_rows else []
    uniform = _uniforms([requests[i].generator for i in which], [len(drafts[i]) for i in which], device)
    # Accept while u < p(draft); the row that decides the last token: the first rejected draft's, else the bonus.
    final_rows, removed = [], []
    cursor = 0
    for n, i in enumerate(which):
        k = len(drafts[i])
        accepted = 0
        while accepted < k and uniform[cursor + accepted] < p_draft[cursor + accepted]:
            accepted += 1
        cursor += k
        final_rows.append(offset[n] + accepted)
        removed.append(drafts[i][accepted] if accepted < k else -1)
        results[i] = (drafts[i][:accepted], accepted)
    weights = probs[to_device(final_rows, device)].clone()
    rejected = [n for n, t in enumerate(removed) if t >= 0]
    if rejected:
        # The residual max(p - q, 0) of a one-hot q: p without the rejected draft (renormalising is implicit).
        r_idx, t_idx = to_device(rejected, device), to_device([removed[n] for n in rejected], device)
        kept = weights[r_idx, t_idx].clone()
        weights[r_idx, t_idx] = 0.0
        # p one-hot on the draft up to rounding (then it is never rejected but for that rounding): keep the draft.
        empty = weights[r_idx].sum(dim=-1) <= 0
        weights[r_idx[empty], t_idx[empty]] = kept[empty]
    noise = torch.empty_like(weights)
    unseeded = [n for n, i in enumerate(which) if requests[i].generator is None]
    if unseeded:
        noise[to_device(unseeded, device)] = torch.empty(len(unseeded), weights.shape[1], device=device).exponential_()
    for n, i in enumerate(which):
        if requests[i].generator is not None:
            noise[n].exponential_(generator=requests[i].generator)
    # The exponential race the sampler uses: argmax of w / E, E ~ Exp(1), draws from w without normalising it.
    tokens = (weights / noise).argmax(dim=-1).tolist()
    for n, i in enumerate(which):
        accepted_drafts, _ = results[i]
        results[i] = (accepted_drafts, tokens[n])


def _uniforms(generators: list, counts: list[int], device: torch.device) -> list[float]:
    """``counts[n]`` uniforms for each request, in order; one draw for all unseeded requests."""
    total = sum(counts)
    if total == 0:
        return []
    out = torch.empty(total, device=device)
    unseeded_slots = []
    pos = 0
    for gen, c in zip(generators, counts):
        if gen is None:
            unseeded_slots.extend(range(pos, pos + c))
        elif c:
            out[pos:pos + c] = torch.rand(c, device=device, generator=gen)
        pos += c
    if unseeded_slots:
        out[to_device(unseeded_slots, device)] = torch.rand(len(unseeded_slots), device=device)
    return out.tolist()
