"""PoolingParams: what a pooling request (embed / encode / classify / score) asks for, with vLLM's field names.

A pooling request is prompt-only: the engine runs its prompt once, pools the hidden states into one vector (an
embedding, or a classifier's class probabilities) and finishes it, so none of the sampling settings apply.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from pagedllm.sampling_params import RequestOutputKind, check_truncate_prompt_tokens

POOLING_TASKS = ("embed", "encode", "classify", "score", "token_embed", "token_classify")
# Tasks with one output row per prompt token: token_embed (multi-vector retrieval), token_classify (NER, rewards).
TOKEN_TASKS = ("token_embed", "token_classify")
# vLLM's other pooling tasks: IO-processor plugins, two outputs at once.
VLLM_POOLING_TASKS_NOT_SUPPORTED = ("plugin", "embed&token_classify")
# The request fields each task takes (vLLM's rule: another one set is an error, not ignored).
_TASK_FIELDS = {"embed": ("dimensions", "use_activation"), "encode": ("dimensions", "use_activation"),
                "classify": ("use_activation",), "score": ("use_activation",),
                "token_embed": ("dimensions", "use_activation"), "token_classify": ("use_activation",)}
# The embedding tasks, whose activation is the L2 normalization: vLLM (since its PR 32243, January 2026) spells it
# use_activation; normalize, its older name (removed by vLLM 0.22), is still taken for them.
_EMBED_TASKS = ("embed", "encode", "token_embed")


def check_returned_token_ids(ids, width: int | None = None, where: str = "") -> None:
    """STEP pooling's ``returned_token_ids``: None or token ids, each below ``width`` (the per-token rows' columns)
    when given; ``where`` prefixes the field's name in the error ("pooler_config ")."""
    if ids is None:
        return
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                     for i in ids):
        raise ValueError(f"{where}returned_token_ids must be a list of token ids, got {ids!r:.100}.")
    bad = [i for i in ids if width is not None and i >= width]
    if bad:
        raise ValueError(f"{where}returned_token_ids {bad} are out of range: this model's per-token rows have {width} "
                         f"columns.")


@dataclass
class PoolingParams:
    # Keep only the first ``dimensions`` values of the vector (Matryoshka models only), before normalizing.
    dimensions: int | None = None
    # L2-normalize the vector; None: the checkpoint's choice (its sentence-transformers Normalize module, else on).
    normalize: bool | None = None
    # Truncate the prompt to this many tokens (-1: to max_model_len); text prompts are truncated by the tokenizer
    # (its truncation side, keeping [CLS] ... [SEP], as sentence-transformers does), token-id prompts keep the end.
    truncate_prompt_tokens: int | None = None
    # Classification and scoring: apply the head's activation (softmax / sigmoid, or a cross-encoder's own) to the
    # logits; False: the raw logits. None: True. ``activation`` and ``softmax`` are vLLM's older names for it.
    use_activation: bool | None = None
    activation: bool | None = None
    softmax: bool | None = None
    # STEP pooling (process reward models; pooler_config's are the defaults): only the rows whose prompt token is
    # step_tag_id, and of each only the returned_token_ids columns. An error where the model does not pool STEP.
    step_tag_id: int | None = None
    returned_token_ids: list[int] | None = None
    task: str | None = None
    # Internal: where a cross-encoder pair's second text starts among the prompt's tokens (BERT's token type 1 from
    # there on: ``token_type_ids`` of a tokenized pair, compressed as vLLM does); None: one segment.
    second_segment_start: int | None = None
    output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY    # one output, when the vector is ready

    def __post_init__(self) -> None:
        if self.dimensions is not None and (not isinstance(self.dimensions, int) or isinstance(self.dimensions, bool)
                                            or self.dimensions < 1):
            raise ValueError(f"Dimensions must be greater than 0, got {self.dimensions!r}.")
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be True, False or None, got {self.normalize!r:.100}.")
        check_truncate_prompt_tokens(self.truncate_prompt_tokens)
        if self.step_tag_id is not None and (not isinstance(self.step_tag_id, int) or isinstance(self.step_tag_id,
                                                                                                   bool)):
            raise ValueError(f"step_tag_id must be a token id, got {self.step_tag_id!r:.100}.")
        check_returned_token_ids(self.returned_token_ids)
        for name in ("use_activation", "activation", "softmax"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be True, False or None, got {value!r:.100}.")
        for old in ("activation", "softmax"):      # vLLM's deprecated spellings of use_activation
            value = getattr(self, old)
            if value is not None:
                if self.use_activation is not None and self.use_activation != value:
                    raise ValueError(f"{old}={value} contradicts use_activation={self.use_activation}; {old} is the "
                                     f"older name of use_activation: set only use_activation.")
                self.use_activation = value
        if self.task in _EMBED_TASKS and self.use_activation is not None:
            if self.normalize is not None and self.normalize != self.use_activation:
                raise ValueError(f"use_activation={self.use_activation} contradicts normalize={self.normalize}; for "
                                 f"embeddings they are one setting (normalize is its older name): set only "
                                 f"use_activation.")
            self.normalize, self.use_activation = self.use_activation, None
        if self.task in VLLM_POOLING_TASKS_NOT_SUPPORTED:
            raise ValueError(f"Pooling task {self.task!r} is not supported yet by pagedllm (tasks "
                             f"{', '.join(POOLING_TASKS)}).")
        if self.task is not None and self.task not in POOLING_TASKS:
            raise ValueError(f"task must be one of {POOLING_TASKS}, got {self.task!r}.")
        if self.task is not None:
            allowed = _TASK_FIELDS[self.task] + (("normalize",) if self.task in _EMBED_TASKS else ())
            wrong = [name for name in ("dimensions", "normalize", "use_activation")
                     if getattr(self, name) is not None and name not in allowed]
            if wrong:
                raise ValueError(f"Task {self.task} only supports {list(_TASK_FIELDS[self.task])} parameters, does "
                                 f"not support {wrong} parameters")

    def clone(self) -> "PoolingParams":
        return copy.copy(self)

    def verify_step_pooling(self, token_pooling_type: str, width: int) -> None:
        """vLLM's rule: ``step_tag_id`` / ``returned_token_ids`` only on a per-token task of a model that pools
        STEP; ``width``: the columns of its per-token rows."""
        wrong = [name for name in ("step_tag_id", "returned_token_ids") if getattr(self, name) is not None]
        if not wrong:
            return
        if token_pooling_type != "STEP" or (self.task is not None and self.task not in TOKEN_TASKS):
            task = self.task or "token_classify"
            raise ValueError(f"Task {task} only supports {list(_TASK_FIELDS.get(task, ()))} parameters, does not "
                             f"support {wrong} parameters (they apply to STEP pooling: pooler_config "
                             f"pooling_type='STEP', a process reward model's default)")
        check_returned_token_ids(self.returned_token_ids, width)

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
