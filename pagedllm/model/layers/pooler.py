"""Poolers: one vector per request from the hidden states of its prompt (embedding and classification models).

One interface, ``Pooler``: a subclass says how a request's rows become one vector (``pool_rows``: MEAN, CLS, LAST);
the base class then applies what every embedder shares, per request: Matryoshka truncation (``dimensions``) and L2
normalization. Which pooler a checkpoint uses comes from its sentence-transformers config (``modules.json``,
``1_Pooling/config.json``, a ``Normalize`` module), else the architecture's default (CLS for encoders, LAST for
decoders, as vLLM).

Sequence classifiers (``ClassifierPooler``) pool the same rows, run the model's classification head on them and apply
the activation of the request's task: ``classify`` as HF's loss for the config's ``problem_type`` (softmax over
several labels, sigmoid for one or for multi-label), ``score`` as the cross-encoder's sentence-transformers
``activation_fn`` (else the same rule); ``use_activation=False`` returns the logits.

The per-token tasks keep every row of a request: ``token_embed`` each row normalized as an embedding,
``token_classify`` the head on each row with ``classify``'s activation (token classifiers, reward models).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from pagedllm.pooling_params import TOKEN_TASKS, PoolingParams


@dataclass
class PoolerConfig:
    pooling_type: str = "LAST"     # "MEAN" | "CLS" | "LAST"
    normalize: bool = True         # the default when a request does not say (PoolingParams.normalize None)


class Pooler:
    """Pools a step's flat hidden states ``[T, H]``, requests back to back (``starts``: each request's first row,
    plus the end), into one float32 vector per request."""
    pooling_type: str = ""

    def __init__(self, config: PoolerConfig):
        self.config = config

    def pool_rows(self, hidden: torch.Tensor, starts: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """``[B, H]``: each request's rows made into one vector."""
        raise NotImplementedError

    def __call__(self, hidden: torch.Tensor, starts: Sequence[int],
                 params: Sequence[PoolingParams | None]) -> list[torch.Tensor]:
        """Each request's output: one vector, or for a per-token task (``token_embed``, ``token_classify``) one
        row per prompt token (``[len, D]``)."""
        bounds = torch.as_tensor(list(starts), device=hidden.device)
        firsts, lens = bounds[:-1], bounds[1:] - bounds[:-1]
        per_token = [i for i, p in enumerate(params) if p is not None and p.task in TOKEN_TASKS]
        if not per_token:
            return self.pool_requests(hidden, firsts, lens, params)
        out: list = [None] * len(params)
        rest = [i for i in range(len(params)) if i not in set(per_token)]
        for group, pool in ((per_token, self.pool_tokens), (rest, self.pool_requests)):
            if group:
                index = torch.tensor(group, device=hidden.device)
                for i, vec in zip(group, pool(hidden, firsts[index], lens[index], [params[i] for i in group])):
                    out[i] = vec
        return out

    def pool_requests(self, hidden: torch.Tensor, firsts: torch.Tensor, lens: torch.Tensor,
                      params: Sequence[PoolingParams | None]) -> list[torch.Tensor]:
        """One vector per request: its rows pooled, then Matryoshka truncation and normalization."""
        vectors = self.pool_rows(hidden, firsts, lens).float()
        return self._finish(vectors, params)

    def pool_tokens(self, hidden: torch.Tensor, firsts: torch.Tensor, lens: torch.Tensor,
                    params: Sequence[PoolingParams | None]) -> list[torch.Tensor]:
        """``token_embed``: every prompt token's hidden state, each normalized as an embedding (ColBERT-style
        multi-vector retrieval)."""
        return [torch.stack(self._finish(hidden[int(f):int(f) + int(n)].float(), [p] * int(n)))
                for f, n, p in zip(firsts.tolist(), lens.tolist(), params)]

    def _finish(self, vectors: torch.Tensor, params: Sequence[PoolingParams | None]) -> list[torch.Tensor]:
        normalize = [self.config.normalize if p is None or p.normalize is None else p.normalize for p in params]
        dims = [None if p is None else p.dimensions for p in params]
        if all(d is None for d in dims):         # the common case: one batched normalize
            if all(normalize):
                return list(F.normalize(vectors, dim=-1).cpu().unbind(0))
            if not any(normalize):
                return list(vectors.cpu().unbind(0))
        out = []
        for vec, norm, dim in zip(vectors.cpu().unbind(0), normalize, dims):
            if dim is not None:
                vec = vec[:dim]
            out.append(F.normalize(vec, dim=-1) if norm else vec)
        return out


class MeanPooler(Pooler):
    pooling_type = "MEAN"

    def pool_rows(self, hidden, starts, lens):
        owner = torch.repeat_interleave(torch.arange(len(lens), device=hidden.device), lens)
        sums = torch.zeros(len(lens), hidden.shape[-1], dtype=torch.float32, device=hidden.device)
        sums.index_add_(0, owner, hidden.float())
        return sums / lens.unsqueeze(-1)


class CLSPooler(Pooler):
    pooling_type = "CLS"

    def pool_rows(self, hidden, starts, lens):
        return hidden[starts]


class LastPooler(Pooler):
    pooling_type = "LAST"

    def pool_rows(self, hidden, starts, lens):
        return hidden[starts + lens - 1]


POOLERS: dict[str, type[Pooler]] = {cls.pooling_type: cls for cls in (MeanPooler, CLSPooler, LastPooler)}


def pooler_config_from_checkpoint(model_dir: str, default_type: str) -> PoolerConfig:
    """sentence-transformers' pipeline in ``model_dir`` as a PoolerConfig; ``default_type`` and normalization
    without one (vLLM normalizes embeddings by default)."""
    modules_file = os.path.join(model_dir, "modules.json")
    if not os.path.isfile(modules_file):
        return PoolerConfig(default_type, normalize=True)
    with open(modules_file) as f:
        modules = json.load(f)
    pooling_type = default_type
    normalize = False
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith(".Pooling"):
            with open(os.path.join(model_dir, module.get("path", ""), "config.json")) as f:
                pooling = json.load(f)
            pooling_type = _pooling_type(pooling)
        elif kind.endswith(".Normalize"):
            normalize = True
    return PoolerConfig(pooling_type, normalize)


def _pooling_type(pooling: dict) -> str:
    if pooling.get("pooling_mode_mean_tokens"):
        return "MEAN"
    if pooling.get("pooling_mode_cls_token"):
        return "CLS"
    if pooling.get("pooling_mode_lasttoken"):
        return "LAST"
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    raise ValueError(f"Pooling modes {modes} of the checkpoint's sentence-transformers config are not supported "
                     f"yet; supported: mean, cls, lasttoken.")


Activation = Callable[[torch.Tensor], torch.Tensor]


def _labels_activation(logits: torch.Tensor) -> torch.Tensor:
    """One label: its sigmoid (a relevance score); several: softmax over them."""
    return torch.sigmoid(logits) if logits.shape[-1] < 2 else torch.softmax(logits, dim=-1)


def classification_activation(hf_config) -> Activation:
    """``classify``'s activation, as HF's loss for the config's ``problem_type``: regression none, multi-label
    sigmoid, else by the number of labels."""
    problem_type = getattr(hf_config, "problem_type", None)
    if problem_type == "regression":
        return lambda logits: logits
    if problem_type == "multi_label_classification":
        return torch.sigmoid
    return _labels_activation


def cross_encoder_activation(hf_config) -> Activation:
    """``score``'s activation: the sentence-transformers CrossEncoder's own (``config.json``'s
    ``sentence_transformers.activation_fn`` or ``sbert_ce_default_activation_function``, a ``torch.nn`` module),
    else as ``classify``'s without a problem type."""
    name = (getattr(hf_config, "sentence_transformers", None) or {}).get("activation_fn") or \
        getattr(hf_config, "sbert_ce_default_activation_function", None)
    if name is None:
        return _labels_activation
    # Only torch.nn's modules, by name: a checkpoint's config names no code of its own to run.
    module = getattr(torch.nn, name.rpartition(".")[2], None) if name.startswith("torch.nn.modules.") else None
    if not (isinstance(module, type) and issubclass(module, torch.nn.Module)):
        raise ValueError(f"The cross-encoder activation {name!r} of the checkpoint's config is not supported: it "
                         f"must be a torch.nn.modules activation (Identity, Sigmoid, Softmax, Tanh, ...).")
    if module is torch.nn.Identity:
        return lambda logits: logits
    if module in (torch.nn.Sigmoid, torch.nn.Softmax):
        return _labels_activation
    return module()


class ClassifierPooler(Pooler):
    """Sequence classification: each request's pooled row (``rows``: CLS for encoders, LAST for decoders) through
    the model's head (``head``: ``[B, hidden]`` -> ``[B, num_labels]``), then the activation of the request's task
    unless it asked for ``use_activation=False``: one float32 vector of ``num_labels`` per request. ``token_classify``
    runs the head on every prompt token instead (``[len, num_labels]``, ``classify``'s activation per token): the
    only task of a token classifier or a reward model (``per_token_only``)."""

    def __init__(self, rows: Pooler, head: Callable[[torch.Tensor], torch.Tensor], classify: Activation,
                 score: Activation, per_token_only: bool = False):
        super().__init__(rows.config)
        self.rows, self.head = rows, head
        self.activations = {"classify": classify, "score": score, "token_classify": classify}
        self.per_token_only = per_token_only

    def _activate(self, logits: torch.Tensor, params: PoolingParams | None) -> torch.Tensor:
        task = params.task if params is not None and params.task in self.activations else "classify"
        use = params is None or params.use_activation is not False
        return self.activations[task](logits) if use else logits

    def pool_requests(self, hidden, firsts, lens, params):
        if self.per_token_only:     # a request without a task (the engine's own): the model's per-token output
            return self.pool_tokens(hidden, firsts, lens, params)
        logits = self.head(self.rows.pool_rows(hidden, firsts, lens)).float().cpu()
        return [self._activate(row, p) for row, p in zip(logits.unbind(0), params)]

    def pool_tokens(self, hidden, firsts, lens, params):
        index = torch.cat([torch.arange(int(f), int(f) + int(n), device=hidden.device)
                           for f, n in zip(firsts.tolist(), lens.tolist())])
        logits = self.head(hidden[index]).float().cpu().split(lens.tolist())
        return [self._activate(rows, p) for rows, p in zip(logits, params)]


def get_pooler(config: PoolerConfig) -> Pooler:
    if config.pooling_type not in POOLERS:
        raise ValueError(f"pooling_type must be one of {sorted(POOLERS)}, got {config.pooling_type!r}.")
    return POOLERS[config.pooling_type](config)


def get_classifier_pooler(config: PoolerConfig, head: Callable[[torch.Tensor], torch.Tensor],
                          hf_config, per_token_only: bool = False) -> ClassifierPooler:
    return ClassifierPooler(get_pooler(config), head, classification_activation(hf_config),
                            cross_encoder_activation(hf_config), per_token_only)
