"""vLLM's ``vllm.logprobs`` import path (``from vllm.logprobs import Logprob``): the types live in pagedllm.outputs, and
``FlatLogprobs``, the form ``SamplingParams(flat_logprobs=True)`` returns logprobs in."""
from __future__ import annotations

from collections.abc import Iterator, MutableSequence
from dataclasses import dataclass, field

from pagedllm.outputs import Logprob, PromptLogprobs, SampleLogprobs

__all__ = ["FlatLogprobs", "Logprob", "LogprobsOnePosition", "PromptLogprobs", "SampleLogprobs"]

LogprobsOnePosition = dict[int, Logprob]


@dataclass
class FlatLogprobs(MutableSequence):
    """A request's logprobs as vLLM's flat columns: position ``i``'s entries are ``token_ids``, ``logprobs``,
    ``ranks`` and ``decoded_tokens`` in ``[start_indices[i], end_indices[i])``. It reads as the list of
    ``{token_id: Logprob}`` dicts (indexing, slicing, iterating, ``len``); a position without logprobs (a prompt's
    first) reads as ``{}``. Appended to, never changed in place, as vLLM's."""
    start_indices: list[int] = field(default_factory=list)
    end_indices: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    ranks: list[int | None] = field(default_factory=list)
    decoded_tokens: list[str | None] = field(default_factory=list)

    @classmethod
    def from_positions(cls, positions: list) -> "FlatLogprobs":
        flat = cls()
        flat.extend(positions)
        return flat

    def append(self, logprobs_one_position: LogprobsOnePosition | None) -> None:
        self.start_indices.append(len(self.logprobs))
        for token_id, logprob in (logprobs_one_position or {}).items():
            self.token_ids.append(token_id)
            self.logprobs.append(logprob.logprob)
            self.ranks.append(logprob.rank)
            self.decoded_tokens.append(logprob.decoded_token)
        self.end_indices.append(len(self.logprobs))

    def extend(self, logprobs_multi_positions) -> None:
        for one in logprobs_multi_positions:
            self.append(one)

    def __len__(self) -> int:
        return len(self.start_indices)

    def __getitem__(self, index):
        if isinstance(index, slice):
            starts, ends = self.start_indices[index], self.end_indices[index]
            if not starts:
                return FlatLogprobs()
            lo, hi = min(starts), max(ends)
            return FlatLogprobs([s - lo for s in starts], [e - lo for e in ends], self.token_ids[lo:hi],
                                self.logprobs[lo:hi], self.ranks[lo:hi], self.decoded_tokens[lo:hi])
        return {self.token_ids[i]: Logprob(self.logprobs[i], self.ranks[i], self.decoded_tokens[i])
                for i in range(self.start_indices[index], self.end_indices[index])}

    def __iter__(self) -> Iterator[LogprobsOnePosition]:
        return (self[i] for i in range(len(self)))

    def __setitem__(self, index, value) -> None:
        raise TypeError("Cannot set logprobs in FlatLogprobs")

    def __delitem__(self, index) -> None:
        raise TypeError("Cannot delete logprobs from FlatLogprobs")

    def insert(self, index, value) -> None:
        raise TypeError("Cannot insert logprobs to FlatLogprobs")
