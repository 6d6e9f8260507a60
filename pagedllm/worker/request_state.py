"""The worker's own state of one request, kept from the scheduler's diffs (pagedllm/step_data.py)."""
from __future__ import annotations

import torch

from pagedllm.sampling_params import SamplingParams
from pagedllm.step_data import NewRequestData


class CachedRequestState:
    """What the model runner and the sampler read about a request: its tokens on this host (the prompt, then each
    token this worker sampled), where its KV lives, how to sample it."""
    __slots__ = ("req_id", "token_ids", "num_prompt_tokens", "sampling_params", "eos_token_ids", "block_ids",
                 "num_computed_tokens", "generator", "pooling_params", "lora_request", "prompt_embeds",
                 "prompt_ids_known", "mm_features", "encoder_outputs", "mrope_positions", "mrope_delta")

    def __init__(self, req_id: str, prompt_token_ids: list[int], sampling_params: SamplingParams,
                 eos_token_ids: frozenset[int], block_ids: list[int], num_computed_tokens: int,
                 generator: torch.Generator | None = None, pooling_params=None, lora_request=None,
                 prompt_embeds: torch.Tensor | None = None):
        self.req_id = req_id
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_ids = eos_token_ids
        self.block_ids = list(block_ids)
        # Tokens whose K/V are in the cache, or being computed by the step in flight (so during sampling, the index
        # of the token being sampled).
        self.num_computed_tokens = num_computed_tokens
        self.generator = generator          # a seeded request's own random stream (kept across preemptions)
        self.pooling_params = pooling_params    # PoolingParams of a pooling request (dimensions, normalize)
        self.lora_request = lora_request        # its LoRA adapter (pagedllm.lora.LoRARequest), None: the base model
        # A prompt_embeds prompt's embeddings on the device (first pipeline stage only): read instead of the
        # embedding of the placeholder ids whenever its prompt positions are computed (again, after a preemption).
        self.prompt_embeds = prompt_embeds
        # (the sampler's SamplingRow) False for a prompt_embeds prompt, on every pipeline stage.
        self.prompt_ids_known = True
        # Images: step_data.MultiModalFeature per image (encoder inputs, kept on the host: they go to the device
        # only while the encoder runs; placeholder ranges), and the encoder's output of each image whose
        # placeholders are being computed (feature index -> [length, hidden] on the device):
        # made when a chunk first reaches the image, dropped when a chunk reaches its end (a recomputation after a
        # preemption runs the encoder again).
        self.mm_features = None
        self.encoder_outputs: dict[int, torch.Tensor] = {}
        # M-RoPE models (Qwen2-VL), a request with images: its prompt's [3, prompt tokens] rotary positions and the
        # delta of the later tokens' (index + delta), made by the model runner at the request's first step.
        self.mrope_positions = None
        self.mrope_delta = 0

    @classmethod
    def from_new(cls, new: NewRequestData, device: torch.device, keep_embeds: bool = True) -> "CachedRequestState":
        """``keep_embeds``: this worker embeds the inputs (the first pipeline stage) and keeps prompt_embeds."""
        generator = None
        if new.sampling_params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(new.sampling_params.seed)
        embeds = None
        if new.prompt_embeds is not None and keep_embeds:
            embeds = new.prompt_embeds.to(device, non_blocking=True)
        state = cls(new.req_id, new.prompt_token_ids, new.sampling_params, new.eos_token_ids, new.block_ids,
                    new.num_computed_tokens, generator, new.pooling_params, new.lora_request, embeds)
        state.prompt_ids_known = new.prompt_embeds is None
        if new.mm_features and keep_embeds:
            state.mm_features = new.mm_features
        return state

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    def __repr__(self) -> str:
        return (f"CachedRequestState({self.req_id!r}, tokens={len(self.token_ids)}, "
                f"computed={self.num_computed_tokens}, blocks={self.block_ids})")
