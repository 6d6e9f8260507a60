"""Embeddings as bytes (vLLM's ``vllm.utils.serial_utils``): the server's base64 / bytes encodings in a chosen dtype
and byte order, and the inverse its example clients decode with."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

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
