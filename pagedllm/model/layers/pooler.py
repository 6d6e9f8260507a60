"""Poolers: one vector per request from the hidden states of its prompt (embedding models).

One interface, ``Pooler``: a subclass says how a request's rows become one vector (``pool_rows``: MEAN, CLS, LAST);
the base class then applies what every embedder shares, per request: Matryoshka truncation (``dimensions``) and L2
normalization. Which pooler a checkpoint uses comes from its sentence-transformers config (``modules.json``,
``1_Pooling/config.json``, a ``Normalize`` module), else the architecture's default (CLS for encoders, LAST for
decoders, as vLLM).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from pagedllm.pooling_params import PoolingParams


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
        bounds = torch.as_tensor(list(starts), device=hidden.device)
        vectors = self.pool_rows(hidden, bounds[:-1], bounds[1:] - bounds[:-1]).float()
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


def get_pooler(config: PoolerConfig) -> Pooler:
    if config.pooling_type not in POOLERS:
        raise ValueError(f"pooling_type must be one of {sorted(POOLERS)}, got {config.pooling_type!r}.")
    return POOLERS[config.pooling_type](config)
