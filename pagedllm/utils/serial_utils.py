"""Embeddings as bytes (vLLM's ``vllm.utils.serial_utils``): the server's base64 / bytes encodings in a chosen dtype
and byte order, and the inverse its example clients decode with."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch


@dataclass(frozen=True)
class DTypeInfo:
    torch_dtype: torch.dtype
    view_dtype: torch.dtype      # the same bytes as a dtype numpy has (bfloat16 as float16, fp8 as uint8)
    numpy_dtype: type

    @property
    def nbytes(self) -> int:
        return self.torch_dtype.itemsize


EmbedDType = Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"]
Endianness = Literal["native", "big", "little"]
EMBED_DTYPES: dict[str, DTypeInfo] = {
    "float32": DTypeInfo(torch.float32, torch.float32, np.float32),
    "float16": DTypeInfo(torch.float16, torch.float16, np.float16),
    "bfloat16": DTypeInfo(torch.bfloat16, torch.float16, np.float16),
    "fp8_e4m3": DTypeInfo(torch.float8_e4m3fn, torch.uint8, np.uint8),
    "fp8_e5m2": DTypeInfo(torch.float8_e5m2, torch.uint8, np.uint8),
}
ENDIANNESS: tuple[str, ...] = get_args(Endianness)


def _swap(endianness: str) -> bool:
    return endianness != "native" and endianness != sys.byteorder


def tensor2binary(tensor: torch.Tensor, embed_dtype: str, endianness: str) -> bytes:
    """The tensor's values in ``embed_dtype``, flattened, in ``endianness`` byte order ("native": this machine's)."""
    info = EMBED_DTYPES[embed_dtype]
    array = tensor.detach().cpu().to(info.torch_dtype).flatten().contiguous().view(info.view_dtype).numpy()
    return (array.byteswap() if _swap(endianness) else array).tobytes()


def binary2tensor(binary: bytes, shape: tuple[int, ...], embed_dtype: str, endianness: str) -> torch.Tensor:
    """``tensor2binary``'s inverse: a tensor of ``embed_dtype`` and ``shape`` (-1 allowed)."""
    info = EMBED_DTYPES[embed_dtype]
    array = np.frombuffer(binary, dtype=info.numpy_dtype).reshape(shape)
    if _swap(endianness):
        array = array.byteswap()
    return torch.from_numpy(array.copy()).view(info.torch_dtype)
