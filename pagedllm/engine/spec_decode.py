"""Speculative decoding's proposer: n-gram prompt lookup (vLLM's ``method="ngram"``), on the host.

Each step, a running request with one token left to compute looks for an earlier occurrence of its last
``prompt_lookup_max`` .. ``prompt_lookup_min`` tokens (the longest n first) in its prompt and output, and proposes the
tokens that followed it. The scheduler sends them with the step (``SchedulerOutput.spec_token_ids``); the worker
computes the request's last token and the drafts in one (1 + k)-token query and its rejection sampler
(model/layers/rejection_sampler.py) keeps the drafts the model agrees with plus one token of its own.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def propose_ngram(token_ids: list[int], min_n: int, max_n: int, k: int) -> list[int]:
    """Up to ``k`` tokens that followed the earliest earlier occurrence of the longest suffix of ``token_ids`` of
    ``min_n`` to ``max_n`` tokens; [] when no such suffix occurred before. vLLM's rule (v1 NgramProposer): longest
    n-gram first, its earliest position, the drafts cut at the end of the tokens.

    Cost: one vectorised comparison of the context with each n-gram size tried (numpy), per request per step."""
    total = len(token_ids)
    if k <= 0 or total < min_n + 1:
        return []
    tokens = np.asarray(token_ids, dtype=np.int64)
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        suffix = tokens[total - n:]
        # Windows starting at 0 .. total - n - 1: an occurrence before the suffix itself (it may overlap it).
        windows = sliding_window_view(tokens[:total - 1], n)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[0]) + n
            return token_ids[start:start + k]
    return []
