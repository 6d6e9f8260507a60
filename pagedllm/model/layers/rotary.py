"""Rotary position embedding (NeoX / HF "rotate_half" layout), any HF rope type.

The inverse frequencies come from transformers' own ``ROPE_INIT_FUNCTIONS`` (default, linear, llama3, yarn, ...), so
scaled variants match HF exactly without re-deriving each formula here.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pagedllm.config import rope_parameters


def rope_layer_types(hf_config) -> list[str] | None:
    """The layer types with rotary parameters of their own (Gemma 3), or None when every layer rotates alike."""
    params = getattr(hf_config, "rope_parameters", None)
    types = getattr(hf_config, "layer_types", None)
    if not isinstance(params, dict) or not types or not all(isinstance(params.get(t), dict) for t in set(types)):
        return None
    return sorted(set(types))


def _inv_freq(hf_config, head_dim: int, layer_type: str | None = None) -> tuple[torch.Tensor, float]:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    params = rope_parameters(hf_config, layer_type)
    rope_type = params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"
    if rope_type == "default" or rope_type not in ROPE_INIT_FUNCTIONS:
        theta = (params.get("rope_theta") if isinstance(params, dict) else None) \
            or getattr(hf_config, "rope_theta", 10000.0)
        # transformers 5 keeps it in rope_parameters for some models (Phi-3), as an attribute for others.
        partial = (params.get("partial_rotary_factor") if isinstance(params, dict) else None) \
            or getattr(hf_config, "partial_rotary_factor", 1.0)
        dim = int(head_dim * partial)
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        return inv, 1.0
    if rope_type == "dynamic" and params.get("alpha"):
        # Hunyuan's checkpoints label as "dynamic" a fixed NTK alpha, which only stretches the base (HF's
        # HunYuanMoEV1RotaryEmbedding): not length-dependent, so one table serves every position.
        base = params["rope_theta"] * params["alpha"] ** (head_dim / (head_dim - 2))
        return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)), 1.0
    extra = {"layer_type": layer_type} if layer_type is not None else {}
    inv, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu", **extra)
    return inv.float(), float(scaling)


def rotary_dim(hf_config, head_dim: int) -> int:
    """How many of each head's dims the config's rotary embedding turns (``RotaryEmbedding.rotary_dim``)."""
    return _inv_freq(hf_config, head_dim)[0].numel() * 2


def interleaved_to_neox_rows(head_dim: int, rotary_dim: int) -> torch.Tensor:
    """Row order within one head that turns interleaved rotary pairs (2i, 2i+1) of the first ``rotary_dim`` rows
    into NeoX halves (i, i + rotary_dim/2); rows past ``rotary_dim`` stay."""
    return torch.cat([torch.arange(0, rotary_dim, 2), torch.arange(1, rotary_dim, 2),
                      torch.arange(rotary_dim, head_dim)])


def neox_heads(tensor: torch.Tensor, head_dim: int, rotary_dim: int, dim: int = 0) -> torch.Tensor:
    """A Q or K projection's tensor (weight ``[heads * head_dim, in]``, bias, or a per-head norm weight along
    ``dim``) with each head's rows in ``interleaved_to_neox_rows`` order. Models that rotate interleaved pairs
    (ChatGLM, GLM, Cohere) load Q and K so: NeoX halves then turn what the checkpoint's pairs turned, and as Q and K
    get the same order every ``q . k``, hence the attention output, is unchanged. So the torch, Triton and fused
    rotary-decode kernels all run these models through the one NeoX path (partial rotary included)."""
    order = interleaved_to_neox_rows(head_dim, rotary_dim).to(tensor.device)
    shape = tensor.shape
    heads = tensor.reshape(*shape[:dim], -1, head_dim, *shape[dim + 1:])
    return heads.index_select(dim + 1, order).reshape(shape)


class RotaryEmbedding(nn.Module):
    def __init__(self, hf_config, head_dim: int, max_position: int, layer_type: str | None = None):
        """``layer_type``: the rotary parameters of that layer type (rope_layer_types), else the config's."""
        super().__init__()
        # The inverse frequencies on the CPU (transformers' rope functions are given "cpu", as HF builds them), the
        # tables on the device the model is built on (the loader's torch.device context). A scaled rope (llama3,
        # yarn, longrope, linear) had its frequencies on the CPU and its positions on the GPU: building a Llama 3.x,
        # gpt-oss or DeepSeek model on a GPU failed with a device mismatch (found in session 34).
        build_device = torch.empty(0).device
        with torch.device("cpu"):
            inv_freq, scaling = _inv_freq(hf_config, head_dim, layer_type)
        inv_freq = inv_freq.to(build_device)
        self.rotary_dim = inv_freq.numel() * 2
        t = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        # [max_pos, rotary_dim/2] each; kept fp32 and cast at use so bf16 models rotate like HF.
        self.register_buffer("cos", (freqs.cos() * scaling), persistent=False)
        self.register_buffer("sin", (freqs.sin() * scaling), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, Hq, D], k: [T, Hkv, D] -> rotated (in place on CUDA, copies on CPU)."""
        if q.is_cuda:
            from pagedllm.kernels.triton_rotary import rotary_inplace
            rotary_inplace(positions, q, k, self.cos, self.sin)
            return q, k
        # Every layer of a step rotates by the same positions (one shared module): look the rows up and cast them
        # once per step, not once per layer (the cast is the one _rotate would do). Keyed on the positions' values
        # (a copy), so a reused or rewritten positions buffer cannot get stale rows.
        step = self._step
        if step is None or step[1] != q.dtype or step[0].shape != positions.shape \
                or not torch.equal(step[0], positions):
            cos = self.cos[positions].unsqueeze(1).to(q.dtype)
            sin = self.sin[positions].unsqueeze(1).to(q.dtype)
            # [cos, cos] and [-sin, sin] over the whole rotary dim, for _rotate_whole.
            step = self._step = (positions.clone(), q.dtype, cos, sin, torch.cat((cos, cos), dim=-1),
                                 torch.cat((-sin, sin), dim=-1))
        rotate = self._rotate_whole if self.rotary_dim == q.shape[-1] else self._rotate
        cos, sin = (step[4], step[5]) if self.rotary_dim == q.shape[-1] else (step[2], step[3])
        qk = _adjacent_heads(q, k)
        if qk is not None:
            # q and k are neighbouring views of the fused QKV output: rotate both in one pass (the same
            # elementwise math, so the same values; 148 -> 65 us per layer at batch 1 on the 2-core EPYC).
            return rotate(qk, cos, sin).split([q.shape[1], k.shape[1]], dim=1)
        return rotate(q, cos, sin), rotate(k, cos, sin)

    _step: tuple | None = None

    def forward_mrope(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                      section: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """M-RoPE (Qwen2-VL): ``positions`` [3, T] (temporal, height, width); the i-th slice of ``section`` (sizes
        summing to rotary_dim / 2) of each token's frequencies turns by position row ``i % 3`` (HF's
        ``mrope_section`` recomposition). Torch ops on every device (steps with image rows run eagerly); with three
        equal rows it is ``forward``'s rotation."""
        if sum(section) != self.rotary_dim // 2:
            raise ValueError(f"mrope_section {list(section)} must sum to half the rotary dim ({self.rotary_dim // 2}).")
        cos3, sin3 = self.cos[positions], self.sin[positions]        # [3, T, rotary_dim / 2]
        bounds = np.cumsum((0, *section))
        cos = torch.cat([cos3[i % 3, :, a:b] for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))], dim=-1)
        sin = torch.cat([sin3[i % 3, :, a:b] for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))], dim=-1)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def _rotate_whole(self, x: torch.Tensor, cos2: torch.Tensor, sin2: torch.Tensor) -> torch.Tensor:
        """``_rotate`` where the rotary dim is the whole head, from ``cos2 = [cos, cos]`` and ``sin2 = [-sin, sin]``:
        ``[x1, x2] * cos2 + [x2, x1] * sin2`` is the same products and sums (``a + (-b)`` is ``a - b`` exactly),
        so the same values, in 6 ops instead of 12 (a CPU decode step of SmolLM2 issues ~75 per layer)."""
        t, h, d = x.shape
        swapped = x.view(t, h, 2, d // 2).flip(2).reshape(t, h, d)
        return x * cos2 + swapped * sin2

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rot = x[..., :self.rotary_dim]
        half = self.rotary_dim // 2
        x1, x2 = rot[..., :half], rot[..., half:]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        if self.rotary_dim < x.shape[-1]:
            out = torch.cat((out, x[..., self.rotary_dim:]), dim=-1)
        return out


def _adjacent_heads(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """``[T, Hq + Hkv, D]`` over the memory of ``q`` ``[T, Hq, D]`` and ``k`` ``[T, Hkv, D]`` when k's heads follow
    q's in every row (as ``split`` of a fused QKV projection leaves them), else None."""
    if q.dim() != 3 or k.dim() != 3 or q.dtype != k.dtype or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        return None
    t, hq, d = q.shape
    if q.stride(2) != 1 or k.stride(2) != 1 or q.stride(1) != d or k.stride(1) != d \
            or (t > 1 and q.stride(0) != k.stride(0)) \
            or k.data_ptr() != q.data_ptr() + hq * d * q.element_size() \
            or q.untyped_storage().data_ptr() != k.untyped_storage().data_ptr():
        return None
    return q.as_strided((t, hq + k.shape[1], d), (q.stride(0), d, 1))
