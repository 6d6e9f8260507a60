"""PoolingParams: what a pooling request (embed / encode / score) asks for, with vLLM's field names.

A pooling request is prompt-only: the engine runs its prompt once, pools the hidden states into one vector and
finishes it, so none of the sampling settings apply.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from pagedllm.sampling_params import RequestOutputKind, check_truncate_prompt_tokens

POOLING_TASKS = ("embed", "encode", "score")
# vLLM's other pooling tasks: classification / reward heads, per-token outputs, IO-processor plugins.
VLLM_POOLING_TASKS_NOT_SUPPORTED = ("classify", "token_classify", "token_embed", "plugin", "embed&token_classify")


@dataclass
class PoolingParams:
    # Keep only the first ``dimensions`` values of the vector (Matryoshka models only), before normalizing.
    dimensions: int | None = None
    # L2-normalize the vector; None: the checkpoint's choice (its sentence-transformers Normalize module, else on).
    normalize: bool | None = None
    # Truncate the prompt to this many tokens (-1: to max_model_len); text prompts are truncated by the tokenizer
    # (its truncation side, keeping [CLS] ... [SEP], as sentence-transformers does), token-id prompts keep the end.
    truncate_prompt_tokens: int | None = None
    task: str | None = None
    output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY    # one output, when the vector is ready

    def __post_init__(self) -> None:
        if self.dimensions is not None and (not isinstance(self.dimensions, int) or isinstance(self.dimensions, bool)
                                            or self.dimensions < 1):
            raise ValueError(f"Dimensions must be greater than 0, got {self.dimensions!r}.")
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be True, False or None, got {self.normalize!r:.100}.")
        check_truncate_prompt_tokens(self.truncate_prompt_tokens)
        if self.task in VLLM_POOLING_TASKS_NOT_SUPPORTED:
            raise ValueError(f"Pooling task {self.task!r} is not supported yet by pagedllm: it pools one vector per "
                             f"prompt from an embedding model (tasks {', '.join(POOLING_TASKS)}).")
        if self.task is not None and self.task not in POOLING_TASKS:
            raise ValueError(f"task must be one of {POOLING_TASKS}, got {self.task!r}.")

    def clone(self) -> "PoolingParams":
        return copy.copy(self)

    def verify_dimensions(self, hidden_size: int, matryoshka_dimensions: list[int] | None, is_matryoshka: bool,
                          model_name: str) -> None:
        """vLLM's rule: ``dimensions`` only for Matryoshka models, and only to a size they were trained for."""
        if self.dimensions is None:
            return
        if not is_matryoshka:
            raise ValueError(f'Model "{model_name}" does not support matryoshka representation, changing output '
                             f'dimensions will lead to poor results.')
        if matryoshka_dimensions and self.dimensions not in matryoshka_dimensions:
            raise ValueError(f'Model "{model_name}" only supports {matryoshka_dimensions} matryoshka dimensions, '
                             f'use other output dimensions will lead to poor results.')
        if self.dimensions > hidden_size:
            raise ValueError(f"dimensions ({self.dimensions}) is larger than the model's embedding size "
                             f"({hidden_size}).")
