"""The ``bytes`` / ``bytes_only`` embeddings encoding (vLLM's): the response body is every embedding's bytes one after
another; with ``bytes`` a ``metadata`` header (JSON) says where each one starts and ends, its dtype, byte order and
shape; with ``bytes_only`` the client rebuilds that from what it asked (``build_metadata_items``). And the score of a
pair of embeddings (``pair_score``), for LLM.score and /score, /rerank."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pagedllm.utils.serial_utils import EMBED_DTYPES, binary2tensor, tensor2binary


@dataclass
class MetadataItem:
    index: int
    embed_dtype: str
    endianness: str
    start: int
    end: int
    shape: tuple[int, ...]


def build_metadata_items(embed_dtype: str, endianness: str, shape: tuple[int, ...],
                         n_request: int) -> list[MetadataItem]:
    """Where each of ``n_request`` embeddings of ``shape`` lies in a ``bytes_only`` body."""
    size = math.prod(shape) * EMBED_DTYPES[embed_dtype].nbytes
    return [MetadataItem(i, embed_dtype, endianness, i * size, (i + 1) * size, tuple(shape))
            for i in range(n_request)]


def encode_pooling_bytes(vectors: list[torch.Tensor], embed_dtype: str,
                         endianness: str) -> tuple[bytes, list[dict]]:
    """The body (every vector's bytes in order) and the metadata items, as dicts, that locate them."""
    body, items = [], []
    offset = 0
    for index, vector in enumerate(vectors):
        binary = tensor2binary(vector, embed_dtype, endianness)
        items.append({"index": index, "embed_dtype": embed_dtype, "endianness": endianness, "start": offset,
                      "end": offset + len(binary), "shape": list(vector.shape)})
        body.append(binary)
        offset += len(binary)
    return b"".join(body), items


def decode_pooling_output(items: list[MetadataItem], body: bytes) -> list[torch.Tensor]:
    """The embeddings of a bytes body, in index order."""
    return [binary2tensor(body[item.start:item.end], tuple(item.shape), item.embed_dtype, item.endianness)
            for item in sorted(items, key=lambda item: item.index)]


def pair_score(first: torch.Tensor, second: torch.Tensor, late_interaction: bool) -> float:
    """An embedding model's score of a text pair: the cosine of the two embeddings, or with ``late_interaction``
    (token embeddings, [tokens, dim] each) ColBERT's MaxSim: each first-text token's best dot product with a
    second-text token, summed (vLLM's compute_maxsim_score, in float32)."""
    if late_interaction:
        return float((first.float() @ second.float().T).amax(dim=-1).sum())
    return float(torch.nn.functional.cosine_similarity(first, second, dim=0))
