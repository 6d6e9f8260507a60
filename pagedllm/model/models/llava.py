"""LLaVA-1.5 (``LlavaForConditionalGeneration``: llava-hf/llava-1.5-7b-hf and -13b-hf): a CLIP vision tower, a
two-layer projector and a Llama language model. An image's placeholder tokens (``image_token_index``, expanded by
the front end's HF processor) take the projector's output as their input embeddings; the rest is our Llama.

The vision tower is transformers' ``CLIPVisionModel``: the field's library, built from the checkpoint's
``vision_config`` and filled by ``load_state_dict`` from the checkpoint's ``vision_tower.`` tensors, whose names are
its own. It runs once per image (a few hundred tokens through 24 layers for CLIP-L/336), eagerly on CPU and CUDA, so
none of our kernels, CUDA graphs or tensor-parallel splitting would pay for a copy of it here; and its numerics are
HF's by construction. Layers after ``vision_feature_layer`` (the last one of CLIP-L for LLaVA-1.5) are not built or
loaded, as vLLM does.

Tensor parallel splits the Llama as usual; every rank runs the whole vision tower and projector (replicated: a few
percent of a 7B's FLOPs per image) and puts the image rows into the all-reduced embeddings. LoRA adapters apply to
the language model's projections, as vLLM's; an adapter's vision-tower or projector module is refused by name. Not
here yet: LLaVA-NeXT's anyres tiles, pipeline parallel, quantized checkpoints.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import nn

from pagedllm.model.models.llama import LlamaForCausalLM

# The language models a LLaVA checkpoint may name that our Llama decoder runs.
_TEXT_MODEL_TYPES = ("llama", "mistral")


class LlavaMultiModalProjector(nn.Module):
    """vision features -> text hidden size: linear, activation, linear (HF's names, so its tensors load as is)."""

    def __init__(self, in_features: int, hidden: int, act: str, bias: bool):
        super().__init__()
        from transformers.activations import ACT2FN
        self.linear_1 = nn.Linear(in_features, hidden, bias=bias)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(hidden, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class LlavaForConditionalGeneration(LlamaForCausalLM):
    """Built from the checkpoint's ``text_config`` (the engine sees a Llama; loader._text_part), whose
    ``multimodal_config`` is the whole LLaVA config."""
    supports_tensor_parallel = True
    supports_pipeline_parallel = False
    supports_quantization = False
    supports_lora = True            # the language model's projections (the vision side: no_lora below)
    supported_modalities = ("image",)

    def __init__(self, hf_config, engine_config):
        mm = hf_config.multimodal_config
        if hf_config.model_type not in _TEXT_MODEL_TYPES:
            raise ValueError(f"LlavaForConditionalGeneration with a {hf_config.model_type!r} language model is not "
                             f"supported yet (supported: {', '.join(_TEXT_MODEL_TYPES)}).")
        vision = mm.vision_config
        if vision.model_type != "clip_vision_model":
            raise ValueError(f"LlavaForConditionalGeneration with a {vision.model_type!r} vision tower is not "
                             f"supported yet (supported: CLIP).")
        strategy = getattr(mm, "vision_feature_select_strategy", "default")
        if strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy={strategy!r} is not supported (default, full).")
        super().__init__(hf_config, engine_config)
        layers = mm.vision_feature_layer
        self.feature_layers = [layers] if isinstance(layers, int) else list(layers)
        n = vision.num_hidden_layers
        # hidden_states[k] is the output of k encoder layers (0: the embeddings): build up to the deepest one read.
        self.feature_layers = [k % (n + 1) for k in self.feature_layers]
        vision = copy.deepcopy(vision)
        vision.num_hidden_layers = max(self.feature_layers)
        vision._attn_implementation = "sdpa"
        from transformers import CLIPVisionModel
        self.vision_tower = CLIPVisionModel(vision)
        self.drop_cls = strategy == "default"
        self.multi_modal_projector = LlavaMultiModalProjector(
            vision.hidden_size * len(self.feature_layers), hf_config.hidden_size, mm.projector_hidden_act,
            getattr(mm, "multimodal_projector_bias", True))
        # LoRA: an adapter's modules here are refused by name (LoRAManager), as vLLM adapts the language model only.
        self.vision_tower.no_lora = "LLaVA's vision tower"
        self.multi_modal_projector.no_lora = "LLaVA's multimodal projector"

    @property
    def tokens_per_image(self) -> int:
        """Placeholder tokens of one image (576 for LLaVA-1.5 at 336 px / 14 px patches)."""
        cfg = self.vision_tower.config
        return (cfg.image_size // cfg.patch_size) ** 2 + (0 if self.drop_cls else 1)

    def dummy_multimodal_inputs(self, num_items: int) -> tuple[str, dict[str, torch.Tensor]]:
        """Inputs of ``num_items`` images as the processor makes them (memory profiling)."""
        cfg = self.vision_tower.config
        weight = self.multi_modal_projector.linear_1.weight
        return "image", {"pixel_values": torch.zeros(num_items, cfg.num_channels, cfg.image_size, cfg.image_size,
                                                     dtype=weight.dtype, device=weight.device)}

    def embed_multimodal(self, modality: str, data: dict[str, Any]) -> torch.Tensor:
        """Images' input embeddings for their placeholder tokens, one image after the other: pixel_values [k, 3, H, W]
        -> [k x placeholders, hidden] (HF's ``get_image_features``: the selected layers' patch features,
        projected)."""
        assert modality == "image", modality
        pixels = data["pixel_values"].to(self.multi_modal_projector.linear_1.weight.dtype)
        out = self.vision_tower(pixels, output_hidden_states=True, return_dict=True)
        features = torch.cat([out.hidden_states[k] for k in self.feature_layers], dim=-1)
        if self.drop_cls:
            features = features[:, 1:]
        return self.multi_modal_projector(features).flatten(0, 1)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The hub's names (``language_model.model.``, ``language_model.lm_head.``, ``vision_tower.vision_model.``,
        ``multi_modal_projector.``; transformers 5.25's save_pretrained writes these too, without ``vision_model.``)
        and transformers 5's module names (``model.language_model.``, ``model.vision_tower.``, ``lm_head.``)."""
        vision: dict[str, torch.Tensor] = {}

        def text_weights():
            for name, tensor in weights:
                name = _our_name(name)
                if name.startswith(("vision_tower.", "multi_modal_projector.")):
                    vision[name] = tensor
                else:
                    yield name, tensor

        loaded = super().load_weights(text_weights())
        # transformers 5's CLIPVisionModel has no ``vision_model.`` level (its save_pretrained writes none; the hub's
        # checkpoints have it).
        tower = {k.removeprefix("vision_tower.").removeprefix("vision_model."): v for k, v in vision.items()
                 if k.startswith("vision_tower.")}
        tower = {k: v for k, v in tower.items() if not _is_unused(k, self.vision_tower.config.num_hidden_layers)}
        projector = {k.removeprefix("multi_modal_projector."): v for k, v in vision.items()
                     if k.startswith("multi_modal_projector.")}
        with torch.no_grad():
            for module, state, prefix in ((self.vision_tower, tower, "vision_tower."),
                                          (self.multi_modal_projector, projector, "multi_modal_projector.")):
                missing, unexpected = module.load_state_dict(state, strict=False)
                if unexpected:
                    raise ValueError(f"Unexpected checkpoint tensors for the LLaVA {prefix[:-1]}: "
                                     f"{sorted(prefix + k for k in unexpected)[:5]}")
                loaded |= {prefix + k for k in state}
        return loaded

    def lora_module_parts(self, module: str, b: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """An adapter's module as PEFT names it on HF's model (``model.language_model.layers.0.self_attn.q_proj``,
        transformers 4's ``language_model.model.layers...``) in our names, as the checkpoint's tensors."""
        return [(_our_name(module), b)]


def _our_name(name: str) -> str:
    """A checkpoint tensor's (or an adapter module's) name in ours: the language model's without its prefix, the
    vision tower's and the projector's from ``vision_tower.`` / ``multi_modal_projector.``."""
    if name.startswith(("model.vision_tower.", "model.multi_modal_projector.")):
        return name.removeprefix("model.")
    if name.startswith("model.language_model."):
        return "model." + name.removeprefix("model.language_model.")
    return name.removeprefix("language_model.")


def _is_unused(name: str, num_layers: int) -> bool:
    """A vision-tower tensor of a layer past the ones built (not read: vision_feature_layer comes before it), or an
    old checkpoint's position_ids buffer (transformers makes it itself)."""
    if name.endswith("position_ids"):
        return True
    return name.startswith("encoder.layers.") and int(name.split(".")[2]) >= num_layers
