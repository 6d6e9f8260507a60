"""The ``bytes`` / ``bytes_only`` embeddings encoding (vLLM's): the response body is every embedding's bytes one after
another; with ``bytes`` a ``metadata`` header (JSON) says where each one starts and ends, its dtype, byte order and
shape; with ``bytes_only`` the client rebuilds that from what it asked (``build_metadata_items``). Those helpers live
in pagedllm.utils.serial_utils (where vLLM's older clients import them) and are re-exported here. And the score of a
pair of embeddings (``pair_score``), for LLM.score and /score, /rerank."""
from __future__ import annotations

import torch

from pagedllm.utils.serial_utils import MetadataItem, build_metadata_items, decode_pooling_output, encode_pooling_bytes

__all__ = ["MetadataItem", "build_metadata_items", "decode_pooling_output", "encode_pooling_bytes", "pair_score"]


def pair_score(first: torch.Tensor, second: torch.Tensor, late_interaction: bool) -> float:
    """An embedding model's score of a text pair: the cosine of the two embeddings, or with ``late_interaction``
    (token embeddings, [tokens, dim] each) ColBERT's MaxSim: each first-text token's best dot product with a
    second-text token, summed (vLLM's compute_maxsim_score, in float32)."""
    if late_interaction:
        return float((first.float() @ second.float().T).amax(dim=-1).sum())
    return float(torch.nn.functional.cosine_similarity(first, second, dim=0))
