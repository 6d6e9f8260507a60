"""Speculative decoding's proposer: n-gram prompt lookup (vLLM's ``method="ngram"``), on the host.

Each step, a running request with one token left to compute looks for an earlier occurrence of its last
``prompt_lookup_max`` .. ``prompt_lookup_min`` tokens (the longest n first) in its prompt and output, and proposes the
tokens that followed it. The scheduler sends them with the step (``SchedulerOutput.spec_token_ids``); the worker
computes the request's last token and the drafts in one (1 + k)-token query and its rejection sampler
(model/layers/rejection_sampler.py) keeps the drafts the model agrees with plus one token of its own.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class TokenBuffer:
    """A request's tokens as a growing numpy array, so that each step's lookup costs the new tokens' copy, not the
    whole context's (``np.asarray`` of an 8k-token list each step of each request was the larger part)."""
    __slots__ = ("array", "length")

    def __init__(self) -> None:
        self.array = np.empty(64, dtype=np.int64)
        self.length = 0

    def sync(self, token_ids: Sequence[int]) -> np.ndarray:
        """The buffer holding ``token_ids`` (which only ever grow), as a view of their length."""
        n = len(token_ids)
        if n < self.length:          # cannot happen for a request's tokens; start over rather than be wrong
            self.length = 0
        if n > self.array.shape[0]:
            grown = np.empty(max(n, 2 * self.array.shape[0]), dtype=np.int64)
            grown[:self.length] = self.array[:self.length]
            self.array = grown
        if n > self.length:
            self.array[self.length:n] = token_ids[self.length:n]
            self.length = n
        return self.array[:n]


def propose_ngram(tokens: Sequence[int] | np.ndarray, min_n: int, max_n: int, k: int) -> list[int]:
    """Up to ``k`` tokens that followed the earliest earlier occurrence of the longest suffix of ``tokens`` of
    ``min_n`` to ``max_n`` tokens; [] when no such suffix occurred before. vLLM's rule (v1 NgramProposer): longest
    n-gram first, its earliest position, the drafts cut at the end of the tokens.

    Cost: one vectorised comparison of the context with its last token, then ``max_n`` steps over the places that
    matched it (few, for all but the commonest tokens)."""
    tokens = np.asarray(tokens)
    total = tokens.shape[0]
    if k <= 0 or total < min_n + 1:
        return []
    # Where an earlier occurrence could end: an earlier copy of the last token (never the last token itself).
    ends = np.flatnonzero(tokens[:total - 1] == tokens[total - 1])
    if ends.size == 0:
        return []
    matched = np.ones(ends.shape[0], dtype=np.int64)    # each candidate's match length, so far
    for d in range(1, max_n):
        alive = (matched == d) & (ends >= d)
        if not alive.any():
            break
        idx = np.flatnonzero(alive)
        same = tokens[ends[idx] - d] == tokens[total - 1 - d]
        matched[idx[same]] += 1
    best = int(matched.max())
    if best < min_n:
        return []
    start = int(ends[int(np.argmax(matched == best))]) + 1      # the earliest of the longest
    return tokens[start:start + k].tolist()
