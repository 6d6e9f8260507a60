"""Images in prompts, vLLM's way (``{"prompt": ..., "multi_modal_data": {"image": image or [images]}}``), in the
front end: the model's HF processor (``AutoProcessor`` from the model folder) turns each image into its encoder
inputs (``pixel_values``) and tells how many placeholder tokens it takes; each ``<image>`` token of the prompt is
expanded to that many; each image becomes a ``step_data.MultiModalFeature`` (its tensors, its placeholder range,
a digest of its tensors) that travels with the request to the engine core and the workers.

Models: those whose config carries a ``multimodal_config`` (loader.MULTIMODAL_ARCHITECTURES: LLaVA-1.5, Qwen2-VL,
Qwen2.5-VL). Not yet: video, audio, Gemma 3's images, LLaVA-NeXT's anyres tiles.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from pagedllm.step_data import MultiModalFeature

# vLLM's default limit per modality, where limit_mm_per_prompt does not name it.
DEFAULT_LIMIT_PER_PROMPT = 999
_NOT_YET = {"video": "video", "audio": "audio"}
# Processor outputs that are the text's, not an image's.
_TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
# Models whose images take their HF image processor alone (AutoImageProcessor), not the whole processor: transformers
# 5's Qwen2-VL / Qwen2.5-VL processors load a video processor that needs torchvision (an ImportError without it),
# though images need only the image processor (a PIL backend), and the placeholder count is the processor's own
# formula, image_grid_thw's t * h * w / spatial_merge_size ** 2. vLLM's placeholder in a string chat content.
_IMAGE_PROCESSOR_ONLY = {"Qwen2VLForConditionalGeneration": "<|vision_start|><|image_pad|><|vision_end|>",
                         "Qwen2_5_VLForConditionalGeneration": "<|vision_start|><|image_pad|><|vision_end|>"}


@dataclass
class ProcessedMedia:
    """A prompt's multi_modal_data once processed (its prompt_token_ids then hold the expanded placeholders): the
    server processes a chat's images before it sizes max_tokens, and the engine takes them as they are."""
    features: list[MultiModalFeature]


def has_media(prompt: Any) -> bool:
    return isinstance(prompt, dict) and prompt.get("multi_modal_data") is not None


def tensors_digest(data: dict[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes: the same image processed the same way gives the same
    digest in every process; any other pixel gives another."""
    h = hashlib.sha256()
    for key in sorted(data):
        t = data[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class MediaProcessor:
    """The engine's media front end: limits (limit_mm_per_prompt), the HF processor, placeholder expansion."""

    def __init__(self, config: Any, tokenizer: Any):
        hf = config.hf_config
        self.mm_config = getattr(hf, "multimodal_config", None)
        self.architecture = (getattr(hf, "architectures", None) or ["this model"])[0]
        limits = config.args.limit_mm_per_prompt or {}
        self.limits = {k: (v.get("count", DEFAULT_LIMIT_PER_PROMPT) if isinstance(v, dict) else v)
                       for k, v in limits.items()}
        self.processor = None
        if self.mm_config is None:
            return
        # disable_chunked_mm_input: an image whose placeholders outnumber a step's token budget could never run.
        self.whole_image_budget = config.max_num_batched_tokens if config.args.disable_chunked_mm_input else None
        from transformers import AutoImageProcessor, AutoProcessor
        image_only = self.architecture in _IMAGE_PROCESSOR_ONLY
        try:
            self.processor = (AutoImageProcessor if image_only else AutoProcessor).from_pretrained(
                config.model.model_dir, trust_remote_code=config.args.trust_remote_code)
        except Exception as e:
            raise ValueError(f"{self.architecture} reads images through its HF processor, which could not be "
                             f"loaded from {config.model.model_dir!r}: {e}") from None
        index = getattr(self.mm_config, "image_token_index", None)
        self.image_token_id: int = index if index is not None else self.mm_config.image_token_id
        self.merge_size = self.mm_config.vision_config.spatial_merge_size if image_only else None
        self.image_token: str = getattr(self.processor, "image_token", "<image>")
        self._placeholder = _IMAGE_PROCESSOR_ONLY.get(self.architecture, self.image_token)
        if image_only:
            self.image_token = (tokenizer.convert_ids_to_tokens(self.image_token_id) if tokenizer is not None
                                else "<|image_pad|>")
        self.engine_kwargs = config.args.mm_processor_kwargs or {}
        self.call_kwargs = self._call_kwargs(self.engine_kwargs, image_only)
        # The processor's chat template (chat_template.json) before the tokenizer's, as vLLM resolves it: LLaVA's
        # renders the image parts (a template given to chat / --chat-template still wins).
        template = getattr(self.processor, "chat_template", None)
        if image_only:       # the image processor carries none: the folder's processor template, if any
            template = _processor_chat_template(config.model.model_dir)
        if tokenizer is not None and isinstance(template, str) and template:
            tokenizer.chat_template = template

    def _call_kwargs(self, kwargs: dict, image_only: bool) -> dict:
        """mm_processor_kwargs as the image processor's call takes them: Qwen2-VL's min_pixels / max_pixels are its
        size's shortest_edge / longest_edge (pixel counts); any other key is refused, not passed on unchecked."""
        if not kwargs:
            return {}
        allowed = ("min_pixels", "max_pixels") if image_only else ()
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"mm_processor_kwargs {unknown} are not supported for {self.architecture} (supported: "
                             f"{', '.join(allowed) or 'none'}).")
        size = {k: getattr(self.processor.size, k, None) for k in ("shortest_edge", "longest_edge")}
        for key, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            if key in kwargs:
                if not isinstance(kwargs[key], int) or kwargs[key] < 1:
                    raise ValueError(f"mm_processor_kwargs[{key!r}] must be a positive number of pixels, got "
                                     f"{kwargs[key]!r}.")
                size[edge] = kwargs[key]
        if size["shortest_edge"] > size["longest_edge"]:
            raise ValueError(f"mm_processor_kwargs: min_pixels {size['shortest_edge']} is above max_pixels "
                             f"{size['longest_edge']}.")
        return {"size": size}

    @property
    def supports_images(self) -> bool:
        return self.processor is not None

    @property
    def image_placeholder(self) -> str | None:
        """What stands for an image in a prompt's text ("<image>"; Qwen2-VL's "<|vision_start|><|image_pad|>
        <|vision_end|>"), None for a model without images."""
        return self._placeholder if self.supports_images else None

    def check_image_count(self, count: int) -> None:
        """limit_mm_per_prompt for images, in vLLM's words (0 for a model that reads text only)."""
        limit = self.limits.get("image", DEFAULT_LIMIT_PER_PROMPT) if self.supports_images else 0
        if count <= limit:
            return
        message = f"At most {limit} image(s) may be provided in one prompt."
        if self.supports_images:
            message += " Set `--limit-mm-per-prompt` to increase this limit."
        else:
            message += (f" {self.architecture} reads text only: images are supported for LLaVA-1.5 "
                        f"(LlavaForConditionalGeneration), Qwen2-VL and Qwen2.5-VL; not yet for Gemma 3 or "
                        f"LLaVA-NeXT.")
        raise ValueError(message)

    def image_items(self, mm_data: Any) -> list:
        """multi_modal_data's images as a list, after the limits (vLLM's wording); other modalities refused."""
        if not isinstance(mm_data, dict):
            raise ValueError(f"multi_modal_data must be a dict of modality -> data (e.g. {{'image': image}}), got "
                             f"{type(mm_data).__name__}.")
        for modality, data in mm_data.items():
            if modality != "image":
                what = _NOT_YET.get(modality, repr(modality))
                raise ValueError(f"multi_modal_data[{modality!r}]: {what} inputs are not supported yet by pagedllm "
                                 f"(images only: LLaVA-1.5, Qwen2-VL, Qwen2.5-VL).")
        images = mm_data.get("image")
        # vLLM's reading (multimodal/parse.py): a 3-D torch tensor, or a list of 2-D ones, is image embeddings (not
        # pixels: taken as an image it gave other tokens, silently); a 4-D array or tensor is a batch of images.
        if (isinstance(images, torch.Tensor) and images.ndim == 3) or (
                isinstance(images, (list, tuple)) and images and isinstance(images[0], torch.Tensor)
                and images[0].ndim == 2):
            raise ValueError("multi_modal_data['image'] holds image embeddings (a 3-D torch tensor [images, "
                             "features, hidden] or a list of 2-D tensors, as vLLM reads them); precomputed image "
                             "embeddings are not supported yet by pagedllm: pass the images (PIL images, or numpy "
                             "arrays / lists of [C, H, W] torch tensors of pixels).")
        if _is_image(images) and getattr(images, "ndim", 0) == 4:      # (PIL images have no ndim)
            images = list(images)
        images = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
        self.check_image_count(len(images))
        for i, image in enumerate(images):
            if not _is_image(image):
                raise ValueError(f"multi_modal_data['image'][{i}] must be a PIL image (or a numpy array / torch "
                                 f"tensor of pixels), got {type(image).__name__}.")
        return images

    def prompt_call_kwargs(self, processor_kwargs: Any) -> dict:
        """A prompt's own mm_processor_kwargs (vLLM's per-prompt field, LLM.chat's keyword) over the engine's, as the
        processor's call takes them. Its max_pixels may not pass the engine's: the memory profile sized the largest
        image by that."""
        if processor_kwargs is None or self.processor is None:
            return self.call_kwargs if self.processor is not None else {}
        if not isinstance(processor_kwargs, dict) or not all(isinstance(k, str) for k in processor_kwargs):
            raise ValueError(f"mm_processor_kwargs must be a dict of the processor's settings (e.g. {{'max_pixels': "
                             f"1003520}}), got {processor_kwargs!r}.")
        kwargs = self._call_kwargs({**self.engine_kwargs, **processor_kwargs}, self.merge_size is not None)
        largest = self.call_kwargs.get("size", {}).get("longest_edge", getattr(self.processor.size, "longest_edge",
                                                                                None))
        asked = kwargs.get("size", {}).get("longest_edge")
        if largest is not None and asked is not None and asked > largest:
            raise ValueError(f"mm_processor_kwargs max_pixels {asked} is above the engine's {largest} (the largest "
                             f"image its memory profile planned for); raise the engine's mm_processor_kwargs "
                             f"(LLM(mm_processor_kwargs=...), --mm-processor-kwargs) instead.")
        return kwargs

    def process(self, ids: list[int], mm_data: Any,
                processor_kwargs: dict | None = None) -> tuple[list[int], ProcessedMedia]:
        """The prompt's ids with each image placeholder expanded, and its images' features, in prompt order. Ids
        whose placeholders are expanded already (one run of each image's count, e.g. a prompt_token_ids that came
        back from an earlier output) are taken as they are, as vLLM does. ``processor_kwargs``: the prompt's own
        mm_processor_kwargs."""
        call_kwargs = self.prompt_call_kwargs(processor_kwargs)
        images = self.image_items(mm_data)
        places = [i for i, t in enumerate(ids) if t == self.image_token_id] if images else []
        if len(places) < len(images):
            raise ValueError(self._count_error(len(places), len(images)))
        processed = [self._one_image(image, call_kwargs) for image in images]
        for _, length in processed:
            if self.whole_image_budget is not None and length > self.whole_image_budget:
                raise ValueError(f"An image takes {length} placeholder tokens, more than max_num_batched_tokens="
                                 f"{self.whole_image_budget}: with disable_chunked_mm_input=True it could never be "
                                 f"scheduled. Raise max_num_batched_tokens or leave disable_chunked_mm_input False.")
        if len(places) > len(images):          # already expanded?
            runs = _runs(places)
            if [n for _, n in runs] != [length for _, length in processed]:
                raise ValueError(self._count_error(len(runs), len(images)))
            return ids, ProcessedMedia([MultiModalFeature("image", data, offset, length, tensors_digest(data))
                                        for (offset, _), (data, length) in zip(runs, processed)])
        out: list[int] = []
        features: list[MultiModalFeature] = []
        start = 0
        for place, (data, length) in zip(places, processed):
            out.extend(ids[start:place])
            features.append(MultiModalFeature("image", data, len(out), length, tensors_digest(data)))
            out.extend([self.image_token_id] * length)
            start = place + 1
        out.extend(ids[start:])
        return out, ProcessedMedia(features)

    def _count_error(self, num_places: int, num_images: int) -> str:
        return (f"The prompt has {num_places} image placeholder(s) ({self.image_token!r}) for {num_images} image(s): "
                f"put one {self.image_token!r} where each image goes.")

    def _one_image(self, image: Any, call_kwargs: dict) -> tuple[dict[str, torch.Tensor], int]:
        """The processor's tensors for one image and its placeholder count (the processor expands one
        ``<image>``: that count is the model's, e.g. 576 for LLaVA-1.5 at 336 px)."""
        try:
            if self.merge_size is not None:       # the image processor alone (_IMAGE_PROCESSOR_ONLY)
                batch = self.processor(images=[image], return_tensors="pt", **call_kwargs)
            else:
                batch = self.processor(text=self.image_token, images=[image], return_tensors="pt")
        except Exception as e:
            raise ValueError(f"The image could not be processed: {type(e).__name__}: {e}") from None
        if self.merge_size is not None:
            length = int(batch["image_grid_thw"][0].prod()) // self.merge_size ** 2
        else:
            length = int((batch["input_ids"][0] == self.image_token_id).sum())
        data = {k: v for k, v in batch.items() if k not in _TEXT_KEYS and isinstance(v, torch.Tensor)}
        return data, length


def _processor_chat_template(model_dir: str) -> str | None:
    """The processor's chat template in a model folder: chat_template.jinja (transformers 5) or chat_template.json
    (Qwen2-VL's hub folders, transformers 4), None without one."""
    import json
    import os
    path = os.path.join(model_dir, "chat_template.jinja")
    if os.path.isfile(path):
        with open(path) as f:
            return f.read()
    path = os.path.join(model_dir, "chat_template.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f).get("chat_template")
    return None


def _runs(places: list[int]) -> list[tuple[int, int]]:
    """(start, length) of each run of consecutive positions."""
    runs: list[tuple[int, int]] = []
    for p in places:
        if runs and runs[-1][0] + runs[-1][1] == p:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((p, 1))
    return runs


def _is_image(x: Any) -> bool:
    import numpy as np
    import PIL.Image
    return isinstance(x, (PIL.Image.Image, np.ndarray, torch.Tensor))
