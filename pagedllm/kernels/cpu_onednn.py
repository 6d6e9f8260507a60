"""CPU GEMMs through oneDNN with the weight reordered once into its blocked layout (what vLLM's CPU backend and
inductor's CPU path do): the dense linear layers and the LM head (model/layers)."""
from __future__ import annotations

import torch

from pagedllm.kernels import settings as kernel_settings

# On a 2-core AVX512 EPYC, SmolLM2-135M's 30 layers of projections take 33 ms (fp32, 1 token) / 35 ms (fp32, 16
# tokens) instead of 66 / 85 ms through ``F.linear`` (MKL), and bf16 16 / 22 ms instead of 24 / 32 ms. fp32 results
# differ from MKL's by ~1e-6 (another summation order). --no-cpu-onednn (default env PAGEDLLM_CPU_ONEDNN) turns it
# off (A/B runs).
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def onednn_enabled() -> bool:
    return (kernel_settings.current.cpu_onednn
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def onednn_pack(weight: torch.Tensor) -> torch.Tensor | None:
    """``weight`` [out, in] reordered for ``onednn_linear``, or None where that path does not apply."""
    if weight.device.type != "cpu" or weight.dtype not in _ONEDNN_DTYPES or weight.dim() != 2 \
            or weight.numel() == 0 or not onednn_enabled():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 16)
    except RuntimeError:
        return None


def onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
