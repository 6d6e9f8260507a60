"""What a request returns: RequestOutput / CompletionOutput / Logprob, with vLLM's field names."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One dict per position: token id -> its Logprob (the sampled token plus the top-k).
SampleLogprobs = list[dict[int, Logprob]]
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: SampleLogprobs | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: Any = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: PromptLogprobs | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = None
    lora_request: Any = None
    encoder_prompt: str | None = None
    encoder_prompt_token_ids: list[int] | None = None
    num_cached_tokens: int = 0
    kv_transfer_params: dict | None = None


@dataclass
class BeamSearchSequence:
    tokens: list[int]
    logprobs: list[dict[int, Logprob]]
    cum_logprob: float = 0.0
    text: str | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: Any = None


@dataclass
class BeamSearchOutput:
    sequences: list[BeamSearchSequence] = field(default_factory=list)


# ---- pooling models (LLM.embed / encode / score): vLLM's names and fields --------------------------------------------
@dataclass
class PoolingOutput:
    data: Any                                    # torch.Tensor [hidden] (float32, on the CPU)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PoolingOutput) and bool((self.data == other.data).all())


@dataclass
class EmbeddingOutput:
    embedding: list[float]

    @classmethod
    def from_base(cls, output: PoolingOutput) -> "EmbeddingOutput":
        return cls(embedding=output.data.tolist())

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass
class ClassificationOutput:
    probs: list[float]                           # one per class: probabilities, or logits with use_activation=False

    @classmethod
    def from_base(cls, output: PoolingOutput) -> "ClassificationOutput":
        return cls(probs=output.data.tolist())

    @property
    def num_classes(self) -> int:
        return len(self.probs)


@dataclass
class ScoringOutput:
    score: float

    @classmethod
    def from_base(cls, output: PoolingOutput) -> "ScoringOutput":
        """A cross-encoder's one-label output as its score."""
        if output.data.numel() != 1:
            raise ValueError(f"A score is one value, got {output.data.numel()}.")
        return cls(score=float(output.data.reshape(-1)[0]))


@dataclass
class PoolingRequestOutput:
    """A finished pooling request: ``outputs`` is a ``PoolingOutput`` (``LLM.encode``), an ``EmbeddingOutput``
    (``LLM.embed``: ``EmbeddingRequestOutput``), a ``ClassificationOutput`` (``LLM.classify``:
    ``ClassificationRequestOutput``) or a ``ScoringOutput`` (``LLM.score``)."""
    request_id: str
    outputs: Any
    prompt_token_ids: list[int]
    finished: bool = True
    prompt: str | None = None
    # vLLM's field: prompt tokens found in the prefix cache (0 here: pooling runs without the prefix cache).
    num_cached_tokens: int = 0

    @classmethod
    def _with_outputs(cls, request_output: "PoolingRequestOutput", outputs: Any):
        """``request_output`` as this class, every field kept but ``outputs`` (the task's typed view of it)."""
        kept = {f.name: getattr(request_output, f.name) for f in fields(PoolingRequestOutput)}
        return cls(**{**kept, "outputs": outputs})


class EmbeddingRequestOutput(PoolingRequestOutput):
    @classmethod
    def from_base(cls, request_output: PoolingRequestOutput) -> "EmbeddingRequestOutput":
        return cls._with_outputs(request_output, EmbeddingOutput.from_base(request_output.outputs))


class ClassificationRequestOutput(PoolingRequestOutput):
    @classmethod
    def from_base(cls, request_output: PoolingRequestOutput) -> "ClassificationRequestOutput":
        return cls._with_outputs(request_output, ClassificationOutput.from_base(request_output.outputs))


class ScoringRequestOutput(PoolingRequestOutput):
    @classmethod
    def from_base(cls, request_output: PoolingRequestOutput) -> "ScoringRequestOutput":
        return cls._with_outputs(request_output, ScoringOutput.from_base(request_output.outputs))
