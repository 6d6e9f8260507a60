"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``), images
only: a vision transformer over 14 px patches (2 x 2 patches merged into one placeholder token) and Qwen2's language
model with M-RoPE.

The vision transformer is transformers' own (``Qwen2VisionTransformerPretrainedModel`` /
``Qwen2_5_VisionTransformerPretrainedModel``: Qwen2.5-VL's window-attention and full-attention blocks, its 2D rotary
and patch merger), built from the checkpoint's ``vision_config`` and filled by ``load_state_dict`` from the
checkpoint's ``visual.`` tensors, whose names are its own (as LLaVA uses CLIPVisionModel): it is the field's library,
HF's numerics by construction, and it runs once per image, eagerly, outside our kernels, graphs and tensor-parallel
splits (every rank runs it whole, as LLaVA's tower). It takes the processor's packed patches of several images of any
sizes with their ``image_grid_thw`` and attends within each image (and window), so a step's images go in one call.

M-RoPE: a placeholder token's rotary position is three numbers (temporal, height, width), each turning its own slice
of the rotary frequencies (``mrope_section``); a text token's three are equal, and the text after an image continues
from the image's largest position + 1 (HF's ``get_rope_index``), so a request's positions run behind its token
indices by ``delta`` (<= 0) after its images. ``mrope_input_positions`` computes them once per request on the worker
(model_runner); with three equal positions M-RoPE is the plain rotary of that position, so every row but an image's
takes the plain path (positions + delta: decode, CUDA graphs, the fused rotary decode kernel); a step with image rows
runs eagerly and rotates here (LlamaVariant.mrope_section, ForwardBatch.mrope_positions).

LoRA adapters apply to the language model's projections, as vLLM's; an adapter's vision-transformer module is refused
by name. Not here yet: video (refused by the front end), pipeline parallel, quantized checkpoints.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np
import torch

from pagedllm.config import rope_parameters
from pagedllm.model.models.llama import LlamaVariant
from pagedllm.model.models.qwen2 import Qwen2ForCausalLM

# Qwen2-VL's image processor's default largest image (max_pixels = 16384 placeholder tokens of 28 x 28 px), used
# where the checkpoint's preprocessor_config.json does not say (memory profiling's image).
DEFAULT_MAX_PIXELS = 28 * 28 * 16384


def mrope_section(hf_config) -> tuple[int, ...]:
    params = rope_parameters(hf_config)
    section = params.get("mrope_section") if isinstance(params, dict) else None
    if not section:
        raise ValueError(f"{hf_config.architectures[0]}: the config's rope_parameters have no mrope_section.")
    return tuple(int(s) for s in section)


class Qwen2VLForConditionalGeneration(Qwen2ForCausalLM):
    """Built from the checkpoint's ``text_config`` (loader._text_part), whose ``multimodal_config`` is the whole
    config."""
    supports_tensor_parallel = True
    supports_pipeline_parallel = False
    supports_quantization = False
    supports_lora = True            # the language model's projections (the vision transformer: no_lora below)
    supported_modalities = ("image",)
    vision_module = "qwen2_vl.modeling_qwen2_vl.Qwen2VisionTransformerPretrainedModel"

    @classmethod
    def variant(cls, hf_config) -> LlamaVariant:
        return dataclasses.replace(super().variant(hf_config), mrope_section=mrope_section(hf_config))

    def __init__(self, hf_config, engine_config):
        super().__init__(hf_config, engine_config)
        mm = hf_config.multimodal_config
        self.vision_config = mm.vision_config
        self.vision_config._attn_implementation = "sdpa"
        module, name = self.vision_module.rsplit(".", 1)
        import importlib
        self.visual = getattr(importlib.import_module(f"transformers.models.{module}"), name)(self.vision_config)
        # LoRA: an adapter's modules here are refused by name (LoRAManager), as vLLM adapts the language model only.
        self.visual.no_lora = "the vision transformer"
        self.merge = self.vision_config.spatial_merge_size
        args = getattr(engine_config, "args", None)
        self.max_pixels = ((getattr(args, "mm_processor_kwargs", None) or {}).get("max_pixels")
                           or _max_pixels(getattr(getattr(engine_config, "model", None), "model_dir", None)))

    # ---- images ---------------------------------------------------------------------------------------------------
    @property
    def tokens_per_image(self) -> int:
        """Placeholder tokens of the largest image the processor makes (one per 28 x 28 px at merge size 2;
        mm_processor_kwargs' max_pixels, else the folder's)."""
        side = self.vision_config.patch_size * self.merge
        return max(1, self.max_pixels // (side * side))

    def dummy_multimodal_inputs(self, num_items: int) -> tuple[str, dict[str, torch.Tensor]]:
        """``num_items`` of the largest square-ish images (memory profiling), packed as the processor packs them."""
        cfg = self.vision_config
        side = int(self.tokens_per_image ** 0.5)
        grid = [1, side * self.merge, side * self.merge]       # an image is one temporal patch
        patches = grid[0] * grid[1] * grid[2]
        width = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2
        weight = self.visual.patch_embed.proj.weight
        return "image", {"pixel_values": torch.zeros(num_items * patches, width, dtype=weight.dtype,
                                                     device=weight.device),
                         "image_grid_thw": torch.tensor([grid] * num_items, device=weight.device)}

    def embed_multimodal(self, modality: str, data: dict[str, Any]) -> torch.Tensor:
        """Images' input embeddings for their placeholder tokens, one image after the other: packed patches
        ``pixel_values`` [patches, 3 * 2 * 14 * 14] of the images ``image_grid_thw`` [k, 3] -> [placeholders, hidden]
        (HF's ``get_image_features``)."""
        assert modality == "image", modality
        pixels = data["pixel_values"].to(self.visual.patch_embed.proj.weight.dtype)
        return self.visual(pixels, grid_thw=data["image_grid_thw"]).pooler_output

    def mrope_input_positions(self, num_prompt_tokens: int,
                              features: list) -> tuple[np.ndarray, int]:
        """The prompt's M-RoPE positions ``[3, num_prompt_tokens]`` (temporal, height, width) and the delta of the
        positions after it (HF's ``get_rope_index`` for images; ``features``: the request's
        step_data.MultiModalFeature list): text tokens count on from the largest position
        before them + 1, all three alike; an image's placeholders are its merged grid's (t, row, col) from there."""
        out = np.empty((3, num_prompt_tokens), dtype=np.int64)
        pos = index = 0
        for f in sorted(features, key=lambda f: f.offset):
            t, h, w = (int(x) for x in f.data["image_grid_thw"].reshape(-1, 3)[0])
            h, w = h // self.merge, w // self.merge
            if t * h * w != f.length:
                raise ValueError(f"An image's grid {t}x{h}x{w} (after merging) does not match its {f.length} "
                                 f"placeholder tokens.")
            out[:, index:f.offset] = np.arange(pos, pos + f.offset - index)
            pos += f.offset - index
            tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
            out[:, f.offset:f.end] = np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + pos
            pos += max(t, h, w)
            index = f.end
        out[:, index:] = np.arange(pos, pos + num_prompt_tokens - index)
        pos += num_prompt_tokens - index
        return out, pos - num_prompt_tokens

    # ---- weights --------------------------------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """transformers 4.x checkpoints (and 5.25's save_pretrained: ``model.``, ``lm_head.``, ``visual.``) and
        transformers 5's module names (``model.language_model.``, ``model.visual.``)."""
        visual: dict[str, torch.Tensor] = {}

        def text_weights():
            for name, tensor in weights:
                name = _our_name(name)
                if name.startswith("visual."):
                    visual[name.removeprefix("visual.")] = tensor
                else:
                    yield name, tensor

        loaded = super().load_weights(text_weights())
        with torch.no_grad():
            missing, unexpected = self.visual.load_state_dict(visual, strict=False)
        if unexpected or missing:
            raise ValueError(f"{type(self).__name__}: the checkpoint's vision tensors do not match the vision "
                             f"transformer (unexpected: {sorted(unexpected)[:5]}, missing: {sorted(missing)[:5]}).")
        return loaded | {"visual." + k for k in visual}

    def lora_module_parts(self, module: str, b: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """An adapter's module as PEFT names it on HF's model (transformers 5's ``model.language_model.layers...``,
        4's ``model.layers...``) in our names, as the checkpoint's tensors."""
        return [(_our_name(module), b)]


def _our_name(name: str) -> str:
    """A checkpoint tensor's (or an adapter module's) name in ours: the language model's under ``model.``, the
    vision transformer's under ``visual.``."""
    if name.startswith("model.visual."):
        return name.removeprefix("model.")
    if name.startswith("model.language_model."):
        return "model." + name.removeprefix("model.language_model.")
    return name


class Qwen2_5_VLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    """Qwen2.5-VL: the same language model; its vision transformer has window-attention blocks between the
    full-attention ones (``fullatt_block_indexes``), RMSNorms and a gated MLP."""
    vision_module = "qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VisionTransformerPretrainedModel"


def _max_pixels(model_dir: str | None) -> int:
    """The image processor's largest image in pixels (preprocessor_config.json's max_pixels or size.longest_edge)."""
    import json
    import os
    if model_dir and os.path.isfile(os.path.join(model_dir, "preprocessor_config.json")):
        with open(os.path.join(model_dir, "preprocessor_config.json")) as f:
            cfg = json.load(f)
        size = cfg.get("size") or {}
        value = cfg.get("max_pixels") or (size.get("longest_edge") if isinstance(size, dict) else None)
        if value:
            return int(value)
    return DEFAULT_MAX_PIXELS
