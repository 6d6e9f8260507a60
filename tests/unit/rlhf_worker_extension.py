"""Worker extension classes for tests/unit/test_worker_extension.py (importable by name in the worker processes,
which get the test process's sys.path), written as vLLM's RLHF examples write theirs."""
from __future__ import annotations

import torch


class WeightSync:
    def update_weight(self, name: str, tensor: torch.Tensor) -> None:
        """A trainer's updated tensor, by its checkpoint name: each rank loads its part."""
        self.model_runner.model.load_weights(weights=[(name, tensor.to(self.device))])

    def runner_class_name(self) -> str:
        return type(self).__name__


class Clashing:
    def get_model(self):          # the worker's own method: not to be overridden silently
        return None
