"""Gemma 3 text (``Gemma3ForCausalLM``: gemma-3-1b; and the language model of the image-text checkpoints):
Gemma 2's decoder with per-head ``1 + w`` RMSNorms on Q and K, no soft-capping (its config says None), local layers
(a sliding window of 512 / 1,024, five of every six) rotating with parameters of their own and global ones with
theirs (``rope_parameters`` per layer type; rotary.rope_layer_types)."""
from __future__ import annotations

from typing import Iterable

import torch

from pagedllm.model.models.gemma2 import Gemma2ForCausalLM


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    qk_norm = True


class Gemma3ForConditionalGeneration(Gemma3ForCausalLM):
    """The language model of an image-text Gemma 3 checkpoint (4B / 12B / 27B), built from its ``text_config``
    (loader._text_part): the checkpoint's ``language_model.`` tensors, the vision tower's and the projector's
    skipped."""
    supports_pipeline_parallel = False      # its skipped prefixes are the text model's names, not the checkpoint's

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(
            (name.removeprefix("language_model."), tensor) for name, tensor in weights
            if not name.startswith(("vision_tower.", "multi_modal_projector.")))
