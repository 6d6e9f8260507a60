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
                 "num_computed_tokens")

    def __init__(self, request: SamplingRow, drafts: list[int], num_drafts: int):
        self.request = request
        self.drafts = drafts[:num_drafts]
        self.sampling_params = request.sampling_params
        self.generator = request.generator
        self.num_prompt_tokens = request.num_prompt_tokens
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
    request, the accepted drafts and the token sampled after them."""
    rows = [DraftRow(r, d, j) for r, d in zip(requests, drafts) for j in range(len(d) + 1)]
    processed = sampler.processed_logits(logits, rows)
    device = processed.device
    greedy_rows = [i for i, row in enumerate(rows) if row.sampling_params.greedy]
    argmax = processed.argmax(dim=-1).tolist() if greedy_rows else None
    probs = None
    random_rows = [i for i, row in enumerate(rows) if not row.sampling_params.greedy]
    if random_rows:
        idx = to_device(random_rows, device)
        probs_random = sampler.sampling_probs(processed[idx], [rows[i].sampling_params for i in random_rows])
        probs = {i: probs_random[j] for j, i in enumerate(random_rows)}
    results = []
    start = 0
    for request, d in zip(requests, drafts):
        k = len(d)
        if request.sampling_params.greedy:
            accepted = 0
            while accepted < k and d[accepted] == argmax[start + accepted]:
                accepted += 1
            results.append((d[:accepted], argmax[start + accepted]))
        else:
            results.append(_verify_random([probs[start + j] for j in range(k + 1)], d, request.generator))
        start += k + 1
    return results


def _verify_random(probs: list[torch.Tensor], drafts: list[int],
                   generator: torch.Generator | None) -> tuple[list[int], int]:
    """Rejection sampling of one request's one-hot drafts against the target rows ``probs`` (k + 1 of them)."""
    device = probs[0].device
    k = len(drafts)
    uniform = torch.rand(k, device=device, generator=generator).tolist() if k else []
    for j, d in enumerate(drafts):
        p = probs[j]
        if uniform[j] < float(p[d]):
            continue
        residual = p.clone()
        residual[d] = 0.0
        if not bool(residual.any()):     # p is one-hot on d up to rounding: nothing else could be drawn
            continue
        return drafts[:j], _draw(residual, generator)
    return list(drafts), _draw(probs[k], generator)


def _draw(weights: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token with probability proportional to ``weights`` (the exponential race the sampler uses: argmax of
    w / E, E ~ Exp(1), needs no normalisation)."""
    noise = torch.empty_like(weights).exponential_(generator=generator)
    return int((weights / noise).argmax())
