"""cpu_offload_gb's layer streaming (worker/cpu_offload.py), its mechanics on the CPU device: the chosen layers'
weights move to separate host copies, their parameters share two slot buffers, and the hooks copy each layer in
before it runs, so the outputs are the unoffloaded model's. The CUDA path (side stream, events, pinned memory):
tests/gpu/test_cpu_offload_gpu.py. On a CPU engine cpu_offload_gb is rejected (test_options_honoured.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pagedllm.worker.cpu_offload import LayerOffloader


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


def model(num_layers: int = 5, width: int = 8) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[Block(width) for _ in range(num_layers)])


LAYER_BYTES = (8 * 16 + 16 + 16 * 8 + 8) * 4


@pytest.mark.parametrize("num_offloaded", [1, 2, 3, 5])
def test_offloaded_layers_give_the_same_outputs(num_offloaded):
    net = model()
    x = torch.randn(4, 8)
    expected = net(x)
    originals = [{n: p.detach().clone() for n, p in layer.named_parameters()} for layer in net]
    offloader = LayerOffloader(list(net), num_offloaded * LAYER_BYTES - 1, torch.device("cpu"))
    assert offloader.num_layers == num_offloaded and offloader.offloaded_bytes == num_offloaded * LAYER_BYTES
    # Weights moved out: host copies equal the originals, parameters point into the (at most two) slot buffers.
    slot_ptrs = {t.data_ptr() for slot in offloader.slots for t in slot.values()}
    for i, layer in enumerate(net):
        for name, param in layer.named_parameters():
            if i < num_offloaded:
                assert param.data_ptr() in slot_ptrs
                assert torch.equal(offloader.host[i][name], originals[i][name])
                assert offloader.host[i][name].data_ptr() != param.data_ptr()
            else:
                assert param.data_ptr() not in slot_ptrs
    assert len(slot_ptrs) == min(2, num_offloaded) * 4
    for _ in range(3):                          # every forward streams the layers in again
        assert torch.equal(net(x), expected)


def test_nothing_offloaded_for_zero_bytes():
    net = model()
    offloader = LayerOffloader(list(net), 0, torch.device("cpu"))
    assert offloader.num_layers == 0 and offloader.offloaded_bytes == 0
