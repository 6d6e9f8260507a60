"""Embeddings as bytes (vLLM's ``vllm.utils.serial_utils``): the server's base64 / bytes encodings in a chosen dtype
and byte order, and the inverse its example clients decode with. The ``bytes`` encoding's metadata items and their
decoder live here too, under the names vLLM's older example clients import from this module (its newer ones import
them from ``vllm.entrypoints.pooling.utils``, which re-exports them)."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DTypeInfo:
    """A dtype by torch's name, the dtype numpy reads its bytes as (bfloat16 as float16, fp8 as uint8) and its size.
    Names, not dtypes: the server's request models import this module, and they stay free of torch."""
    torch_name: str
    view_name: str
    nbytes: int


EmbedDType = Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"]
Endianness = Literal["native", "big", "little"]
EMBED_DTYPES: dict[str, DTypeInfo] = {
    "float32": DTypeInfo("float32", "float32", 4),
    "float16": DTypeInfo("float16", "float16", 2),
    "bfloat16": DTypeInfo("bfloat16", "float16", 2),
    "fp8_e4m3": DTypeInfo("float8_e4m3fn", "uint8", 1),
    "fp8_e5m2": DTypeInfo("float8_e5m2", "uint8", 1),
}
ENDIANNESS: tuple[str, ...] = get_args(Endianness)
EMBED_DTYPE_TO_N_BYTES: dict[str, int] = {name: info.nbytes for name, info in EMBED_DTYPES.items()}


def __getattr__(name: str) -> Any:
    # vLLM's EMBED_DTYPE_TO_TORCH_DTYPE, built on first use: importing this module does not import torch.
    if name == "EMBED_DTYPE_TO_TORCH_DTYPE":
        import torch
        return {dtype: getattr(torch, info.torch_name) for dtype, info in EMBED_DTYPES.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _swap(endianness: str) -> bool:
    return endianness != "native" and endianness != sys.byteorder


def tensor2binary(tensor: "torch.Tensor", embed_dtype: str, endianness: str) -> bytes:
    """The tensor's values in ``embed_dtype``, flattened, in ``endianness`` byte order ("native": this machine's)."""
    import torch
    info = EMBED_DTYPES[embed_dtype]
    array = (tensor.detach().cpu().to(getattr(torch, info.torch_name)).flatten().contiguous()
             .view(getattr(torch, info.view_name)).numpy())
    return (array.byteswap() if _swap(endianness) else array).tobytes()


def binary2tensor(binary: bytes, shape: tuple[int, ...], embed_dtype: str, endianness: str) -> "torch.Tensor":
    """``tensor2binary``'s inverse: a tensor of ``embed_dtype`` and ``shape`` (-1 allowed)."""
    import numpy as np
    import torch
    info = EMBED_DTYPES[embed_dtype]
    array = np.frombuffer(binary, dtype=info.view_name).reshape(shape)
    if _swap(endianness):
        array = array.byteswap()
    return torch.from_numpy(array.copy()).view(getattr(torch, info.torch_name))


@dataclass
class MetadataItem:
    """Where one embedding lies in a ``bytes`` body, and how to read it."""
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


def encode_pooling_bytes(vectors: list["torch.Tensor"], embed_dtype: str,
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


def decode_pooling_output(items: list[MetadataItem], body: bytes) -> list["torch.Tensor"]:
    """The embeddings of a bytes body, in index order."""
    return [binary2tensor(body[item.start:item.end], tuple(item.shape), item.embed_dtype, item.endianness)
            for item in sorted(items, key=lambda item: item.index)]
