"""``vllm.benchmarks.datasets``'s ``add_dataset_parser`` / ``get_samples`` (features/speculative_decoding/
spec_decode_offline.py draws its prompts with them) over pagedllm/bench/datasets.py: the same flags and defaults
(the random dataset, 1000 prompts, seed 0), and ``SampleRequest``s with vLLM's ``prompt`` / ``multi_modal_data``."""
from __future__ import annotations

import argparse

from pagedllm.bench.datasets import SampleRequest, add_dataset_args, sample_requests

__all__ = ["SampleRequest", "add_dataset_parser", "get_samples"]


def add_dataset_parser(parser: argparse.ArgumentParser) -> None:
    """vLLM's dataset flags on ``parser``: --dataset-name (default random), --dataset-path, --num-prompts, --seed, the
    per-dataset lengths, --trust-remote-code and --enable-multimodal-chat (text-only here: an error when set)."""
    parser.add_argument("--trust-remote-code", action="store_true", help="Trust remote code from the hub.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-prompts", type=int, default=1000, help="Number of prompts to process.")
    parser.add_argument("--enable-multimodal-chat", action="store_true",
                        help="vLLM's multimodal chat prompts; not supported (pagedllm runs text-only models).")
    add_dataset_args(parser)


def get_samples(args: argparse.Namespace, tokenizer) -> list[SampleRequest]:
    """``args.num_prompts`` requests of the dataset ``args`` names (the flags of ``add_dataset_parser``)."""
    if getattr(args, "enable_multimodal_chat", False):
        raise ValueError("enable_multimodal_chat is not supported: pagedllm runs text-only models.")
    return sample_requests(args, tokenizer, args.num_prompts)
