"""Custom logits processors written as vLLM's documentation writes them (the interface imported from vLLM's path),
for tests/unit/test_logits_processors.py; importable by name ("logits_processor_examples.TargetToken")."""
from __future__ import annotations

import torch

from pagedllm.v1.sample.logits_processor import (AdapterLogitsProcessor, BatchUpdate, LogitsProcessor,
                                                 MoveDirectionality)


class TargetToken(LogitsProcessor):
    """vLLM's DummyLogitsProcessor: a request with ``extra_args={"target_token": t}`` can only produce ``t``."""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        target = (sampling_params.extra_args or {}).get("target_token")
        if target is not None and (isinstance(target, bool) or not isinstance(target, int)):
            raise ValueError(f"target_token must be an int, got {target!r}")

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.targets: dict[int, int] = {}
        self.vocab_size = vllm_config.model_config.get_vocab_size()     # as vLLM processors read it

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.targets.pop(index, None)
        for index, params, _, _ in batch_update.added:
            target = (params.extra_args or {}).get("target_token")
            if target is None:
                self.targets.pop(index, None)
            else:
                self.targets[index] = target
        for a, b, direction in batch_update.moved:
            first, second = self.targets.pop(a, None), self.targets.pop(b, None)
            if first is not None:
                self.targets[b] = first
            if second is not None and direction is MoveDirectionality.SWAP:
                self.targets[a] = second

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        assert logits.shape[1] >= self.vocab_size
        for index, target in self.targets.items():
            kept = logits[index, target].clone()
            logits[index] = float("-inf")
            logits[index, target] = kept
        return logits


class BanAfter(AdapterLogitsProcessor):
    """A per-request callable of the two-argument form: ``extra_args={"ban_after": [n, t]}`` bans token ``t`` once
    ``n`` tokens are out."""

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params):
        ban = (params.extra_args or {}).get("ban_after")
        if ban is None:
            return None
        count, token = ban

        def ban_after(output_ids: list[int], row: torch.Tensor) -> torch.Tensor:
            if len(output_ids) >= count:
                row[token] = float("-inf")
            return row
        return ban_after


class NoPromptTokens(AdapterLogitsProcessor):
    """The three-argument form: ``extra_args={"no_prompt_tokens": True}`` never repeats a prompt token."""

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params):
        if not (params.extra_args or {}).get("no_prompt_tokens"):
            return None

        def no_prompt_tokens(prompt_ids: list[int], output_ids: list[int], row: torch.Tensor) -> torch.Tensor:
            row[torch.tensor(sorted(set(prompt_ids)), device=row.device)] = float("-inf")
            return row
        return no_prompt_tokens


class CountCalls(LogitsProcessor):
    """Argmax-invariant (it changes nothing): counts the rows it is applied to, to show that greedy rows skip it."""
    rows_seen = 0

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        pass

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        pass

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        type(self).rows_seen += logits.shape[0]
        return logits


# vLLM's examples/offline_inference/logits_processor/custom.py, written as there (its imports with the package name
# changed): the dict helper and the VllmConfig annotation.
from pagedllm.config import VllmConfig  # noqa: E402
from pagedllm.v1.sample.logits_processor.builtin import process_dict_updates  # noqa: E402


class DummyLogitsProcessor(LogitsProcessor):
    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
        self.req_info: dict[int, int] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None):
        process_dict_updates(self.req_info, batch_update,
                             lambda params, _, __: params.extra_args and params.extra_args.get("target_token"))

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.req_info:
            return logits
        cols = torch.tensor(list(self.req_info.values()), dtype=torch.long, device=logits.device)
        rows = torch.tensor(list(self.req_info.keys()), dtype=torch.long, device=logits.device)
        keep = logits[rows, cols].clone()
        logits[rows] = float("-inf")
        logits[rows, cols] = keep
        return logits
