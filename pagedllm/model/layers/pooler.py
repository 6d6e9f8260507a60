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
``token_classify`` the head on each row with ``classify``'s activation (token classifiers, reward models); vLLM's
STEP pooling (process reward models) keeps only the rows of ``step_tag_id`` tokens, and of them the
``returned_token_ids`` columns.

The user's ``pooler_config`` (pagedllm.config.PoolerConfig, vLLM's) goes over the checkpoint's choices
(``resolve_pooling``): the pooling type, the normalize / activation default, default Matryoshka dimensions, the
classifier logits' calibration ``(logits - logit_mean) / logit_sigma`` and the STEP fields.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pagedllm.config import PoolerConfig
from pagedllm.pooling_params import TOKEN_TASKS, PoolingParams


@dataclass
class PoolingSetup:
    """What the poolers apply: the checkpoint's pooler (``pooler_config_from_checkpoint``) with the user's
    ``pooler_config`` over it (``resolve_pooling``)."""
    pooling_type: str = "LAST"     # "MEAN" | "CLS" | "LAST": a request's one vector
    normalize: bool = True         # embeddings' default when a request does not say (PoolingParams.normalize None)
    use_activation: bool = True    # classifiers' default when a request does not say (PoolingParams.use_activation)
    dimensions: int | None = None  # embeddings' default dimensions (Matryoshka truncation)
    token_pooling_type: str = "ALL"    # per-token tasks: "ALL" every row, "STEP" the rows of step_tag_id tokens
    step_tag_id: int | None = None
    returned_token_ids: list[int] | None = None    # STEP: only these columns of each row
    logit_mean: float | None = None    # classifiers: (logits - logit_mean) / logit_sigma before the activation
    logit_sigma: float | None = None
    # sentence-transformers Dense modules after the pooling, in order: each embedding goes through them before the
    # Matryoshka truncation and normalization (vLLM's projector; LaBSE, embeddinggemma).
    projector: list["DenseLayer"] = field(default_factory=list)


@dataclass
class DenseLayer:
    """A sentence-transformers ``Dense`` module: ``activation(x @ weight.T + bias)``, in float32."""
    weight: torch.Tensor
    bias: torch.Tensor | None
    activation: "Activation"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.device != x.device:       # loaded on the CPU; moved once, to the device of the first step
            self.weight = self.weight.to(x.device)
            self.bias = None if self.bias is None else self.bias.to(x.device)
        return self.activation(F.linear(x, self.weight, self.bias))


class Pooler:
    """Pools a step's flat hidden states ``[T, H]``, requests back to back (``starts``: each request's first row,
    plus the end), into one float32 vector per request."""
    pooling_type: str = ""

    def __init__(self, config: PoolingSetup):
        self.config = config
        self._token_ids: Sequence[int] | None = None     # the step's, while __call__ runs (STEP pooling)

    def pool_rows(self, hidden: torch.Tensor, starts: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """``[B, H]``: each request's rows made into one vector."""
        raise NotImplementedError

    def __call__(self, hidden: torch.Tensor, starts: Sequence[int], params: Sequence[PoolingParams | None],
                 token_ids: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Each request's output: one vector, or for a per-token task (``token_embed``, ``token_classify``) one
        row per prompt token (``[len, D]``; STEP pooling: the rows of the ``step_tag_id`` tokens among the step's
        ``token_ids``)."""
        self._token_ids = token_ids
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
        out = []
        for f, n, p in zip(firsts.tolist(), lens.tolist(), params):
            rows = self._step_rows(hidden[f:f + n].float(), f, n, p)
            out.append(torch.stack(self._finish(rows, [p] * len(rows))) if len(rows) else rows.cpu())
        return out

    def _step_rows(self, rows: torch.Tensor, first: int, n: int, params: PoolingParams | None) -> torch.Tensor:
        """STEP pooling (vLLM's): of one request's per-token rows, those whose prompt token is ``step_tag_id``, and
        of each only the ``returned_token_ids`` columns (the request's, else pooler_config's); ALL: every row."""
        if self.config.token_pooling_type != "STEP":
            return rows
        returned, tag = self.config.returned_token_ids, self.config.step_tag_id
        if params is not None:
            returned = params.returned_token_ids if params.returned_token_ids is not None else returned
            tag = params.step_tag_id if params.step_tag_id is not None else tag
        if returned:
            rows = rows[:, torch.as_tensor(returned, device=rows.device)]
        if tag is not None:
            ids = torch.as_tensor(np.asarray(self._token_ids[first:first + n]), device=rows.device)
            rows = rows[ids == tag]
        return rows

    def _finish(self, vectors: torch.Tensor, params: Sequence[PoolingParams | None]) -> list[torch.Tensor]:
        for layer in self.config.projector:
            vectors = layer(vectors)
        normalize = [self.config.normalize if p is None or p.normalize is None else p.normalize for p in params]
        dims = [self.config.dimensions if p is None or p.dimensions is None else p.dimensions for p in params]
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


def resolve_pooling(model_dir: str, default_type: str, default_token_type: str,
                    user: PoolerConfig | None) -> PoolingSetup:
    """The poolers' setup: the checkpoint's (``pooler_config_from_checkpoint``), then each field the user's
    ``pooler_config`` sets over it (EngineConfig.build has rejected the fields that do not apply to the model)."""
    setup = pooler_config_from_checkpoint(model_dir, default_type)
    setup.token_pooling_type = default_token_type
    if user is None:
        return setup
    if user.seq_pooling_type is not None:
        setup.pooling_type = user.seq_pooling_type
    if user.tok_pooling_type is not None:
        setup.token_pooling_type = user.tok_pooling_type
    if user.use_activation is not None:
        setup.normalize = setup.use_activation = user.use_activation
    for name in ("dimensions", "step_tag_id", "returned_token_ids", "logit_mean", "logit_sigma"):
        if getattr(user, name) is not None:
            setattr(setup, name, getattr(user, name))
    return setup


def pooler_config_from_checkpoint(model_dir: str, default_type: str) -> PoolingSetup:
    """sentence-transformers' pipeline in ``model_dir`` as a PoolingSetup; ``default_type`` and normalization
    without one (vLLM normalizes embeddings by default)."""
    modules_file = os.path.join(model_dir, "modules.json")
    if not os.path.isfile(modules_file):
        return PoolingSetup(default_type, normalize=True)
    with open(modules_file) as f:
        modules = json.load(f)
    pooling_type = default_type
    normalize = False
    projector = []
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith(".Pooling"):
            with open(os.path.join(model_dir, module.get("path", ""), "config.json")) as f:
                pooling = json.load(f)
            pooling_type = _pooling_type(pooling)
        elif kind.endswith(".Normalize"):
            normalize = True
        elif kind.endswith(".Dense"):
            projector.append(_dense_layer(os.path.join(model_dir, module.get("path", ""))))
    return PoolingSetup(pooling_type, normalize, projector=projector)


# sentence-transformers' pooling modes (its Pooling config's ``pooling_mode``, or before its version 6 one
# ``pooling_mode_<name>`` flag each) as the poolers'.
_ST_POOLING_MODES = {"mean": "MEAN", "cls": "CLS", "lasttoken": "LAST"}


def _pooling_type(pooling: dict) -> str:
    mode = pooling.get("pooling_mode")
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if mode is None:        # the older form
        flags = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                 "pooling_mode_lasttoken": "lasttoken"}
        mode = next((name for key, name in flags.items() if pooling.get(key)), None)
        if mode is None:
            mode = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if not isinstance(mode, str) or mode not in _ST_POOLING_MODES:
        raise ValueError(f"Pooling mode {mode!r} of the checkpoint's sentence-transformers config is not supported "
                         f"yet; supported: {', '.join(_ST_POOLING_MODES)}.")
    return _ST_POOLING_MODES[mode]


def dense_configs(model_dir: str, hidden_size: int) -> list[dict]:
    """The config.json of each sentence-transformers Dense module in ``model_dir``'s modules.json, in order; each
    must take what the one before gives (the first: the pooled ``hidden_size``), else a ValueError at load, not a
    failed step."""
    path = os.path.join(model_dir, "modules.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        modules = json.load(f)
    configs = []
    width = hidden_size
    for module in modules:
        if module.get("type", "").endswith(".Dense"):
            with open(os.path.join(model_dir, module.get("path", ""), "config.json")) as f:
                config = json.load(f)
            if config.get("in_features") != width or not isinstance(config.get("out_features"), int):
                raise ValueError(f"The sentence-transformers Dense module {module.get('path')!r} takes in_features="
                                 f"{config.get('in_features')!r} (out_features={config.get('out_features')!r}), but "
                                 f"what reaches it has {width} values.")
            width = config["out_features"]
            configs.append(config)
    return configs


def _dense_layer(folder: str) -> DenseLayer:
    """A Dense module's layer from its folder: config.json (in / out features, bias, activation_function) and its
    weights (model.safetensors or pytorch_model.bin, ``linear.weight`` as sentence-transformers saves it)."""
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    state = None
    if os.path.isfile(os.path.join(folder, "model.safetensors")):
        from safetensors.torch import load_file
        state = load_file(os.path.join(folder, "model.safetensors"))
    elif os.path.isfile(os.path.join(folder, "pytorch_model.bin")):
        state = torch.load(os.path.join(folder, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    key = next((k for k in ("linear.weight", "weight", "dense.weight") if state and k in state), None)
    if key is None:
        raise ValueError(f"The sentence-transformers Dense module in {folder} has no weights (model.safetensors or "
                         f"pytorch_model.bin with linear.weight).")
    weight = state[key].float()
    shape = (config.get("out_features", weight.shape[0]), config.get("in_features", weight.shape[1]))
    if tuple(weight.shape) != shape:
        raise ValueError(f"The sentence-transformers Dense module in {folder}: weight shape {tuple(weight.shape)} "
                         f"differs from its config's (out_features, in_features) {shape}.")
    bias = state.get(key.replace("weight", "bias")) if config.get("bias", True) else None
    # sentence-transformers' Dense defaults to Tanh when its config names no activation
    name = config.get("activation_function", "torch.nn.modules.activation.Tanh")
    return DenseLayer(weight, None if bias is None else bias.float(), _torch_nn_activation(name, "Dense"))


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
    activation = _torch_nn_activation(name, "cross-encoder")
    if isinstance(activation, (torch.nn.Sigmoid, torch.nn.Softmax)):
        return _labels_activation
    return activation


def _torch_nn_activation(name: str, what: str) -> Activation:
    """The ``torch.nn.modules`` activation a checkpoint's config names (``torch.nn.modules.activation.Tanh``):
    only torch.nn's modules, by name, so a checkpoint's config names no code of its own to run."""
    module = getattr(torch.nn, name.rpartition(".")[2], None) if isinstance(name, str) and name.startswith(
        "torch.nn.modules.") else None
    if not (isinstance(module, type) and issubclass(module, torch.nn.Module)):
        raise ValueError(f"The {what} activation {name!r} of the checkpoint's config is not supported: it must be a "
                         f"torch.nn.modules activation (Identity, Sigmoid, Softmax, Tanh, ...).")
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
        use = self.config.use_activation if params is None or params.use_activation is None else \
            params.use_activation
        return self.activations[task](logits) if use else logits

    def pool_requests(self, hidden, firsts, lens, params):
        if self.per_token_only:     # a request without a task (the engine's own): the model's per-token output
            return self.pool_tokens(hidden, firsts, lens, params)
        logits = self.head(self.rows.pool_rows(hidden, firsts, lens)).float().cpu()
        if self.config.logit_mean is not None:      # pooler_config's calibration (Platt scaling)
            logits = logits - self.config.logit_mean
        if self.config.logit_sigma is not None:
            logits = logits / self.config.logit_sigma
        return [self._activate(row, p) for row, p in zip(logits.unbind(0), params)]

    def pool_tokens(self, hidden, firsts, lens, params):
        index = torch.cat([torch.arange(int(f), int(f) + int(n), device=hidden.device)
                           for f, n in zip(firsts.tolist(), lens.tolist())])
        logits = self.head(hidden[index]).float().cpu().split(lens.tolist())
        return [self._activate(self._step_rows(rows, f, n, p), p)
                for rows, f, n, p in zip(logits, firsts.tolist(), lens.tolist(), params)]


def get_pooler(config: PoolingSetup) -> Pooler:
    if config.pooling_type not in POOLERS:
        raise ValueError(f"pooling_type must be one of {sorted(POOLERS)}, got {config.pooling_type!r}.")
    return POOLERS[config.pooling_type](config)


def get_classifier_pooler(config: PoolingSetup, head: Callable[[torch.Tensor], torch.Tensor],
                          hf_config, per_token_only: bool = False) -> ClassifierPooler:
    return ClassifierPooler(get_pooler(config), head, classification_activation(hf_config),
                            cross_encoder_activation(hf_config), per_token_only)
