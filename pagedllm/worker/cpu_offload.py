"""cpu_offload_gb: keep that many GiB of decoder-layer weights in (pinned) CPU memory and stream them to the device
layer by layer, the copy of the next offloaded layer overlapped with the compute of this one.

The first offloaded layers (in model order, whole layers, until ``cpu_offload_gb`` is reached) give their weights to
CPU copies; their parameters then point into one of two device buffer sets ("slots", layer i of the offloaded ones
uses slot i % 2), which is all the device memory they need. A forward pre-hook on offloaded layer i makes the
compute stream wait for its copy (issued earlier on a side stream) and issues the copy of offloaded layer i + 1 into
the other slot, after the compute of the layer that used that slot last (an event). The last offloaded layer's post
hook prefetches the first one for the next forward pass. Every copy is a ``non_blocking`` host-to-device copy from
pinned memory, so the host never waits.

Layers of one model have the same parameter shapes (decoder layers of the Llama family): the slots are built from
the first offloaded layer; a layer of another shape is not offloaded. CUDA graphs are off while offloading (the
copies and their events are not captured). On the CPU device there is nothing to offload to; the class still runs
there (copies between two CPU tensors, no streams), which is how its mechanics are tested.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


class LayerOffloader:
    def __init__(self, layers: list[nn.Module], offload_bytes: int, device: torch.device):
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.layers: list[nn.Module] = []
        self.host: list[dict[str, torch.Tensor]] = []       # each offloaded layer's weights in CPU memory
        shapes = None
        total = 0
        for layer in layers:
            layer_shapes = [(n, p.shape, p.dtype) for n, p in layer.named_parameters()]
            if total >= offload_bytes or (shapes is not None and layer_shapes != shapes):
                break
            shapes = layer_shapes
            host = {}
            for name, param in layer.named_parameters():
                cpu = param.detach().to("cpu")
                host[name] = cpu.pin_memory() if cuda else cpu.clone()
            self.layers.append(layer)
            self.host.append(host)
            total += _param_bytes(layer)
        self.offloaded_bytes = total
        if not self.layers:
            return
        first = dict(self.layers[0].named_parameters())
        self.slots = [{n: torch.empty_like(p) for n, p in first.items()} for _ in range(min(2, len(self.layers)))]
        for i, layer in enumerate(self.layers):
            slot = self.slots[i % len(self.slots)]
            for name, param in layer.named_parameters():
                param.data = slot[name]          # the device copy of the layer's weights is freed here
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        self.copied = [None] * len(self.layers)                      # event: layer i's weights are in its slot
        self.slot_free = [None] * len(self.slots)                    # event: the slot's last user has run
        self._copy(0)
        for i, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(self._make_pre_hook(i))
            layer.register_forward_hook(self._make_post_hook(i))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def _copy(self, i: int) -> None:
        """Copy offloaded layer i's weights into its slot: on the side stream after the slot's last user (CUDA),
        or right away (CPU)."""
        slot = self.slots[i % len(self.slots)]
        if self.stream is None:
            for name, cpu in self.host[i].items():
                slot[name].copy_(cpu)
            return
        free = self.slot_free[i % len(self.slots)]
        with torch.cuda.stream(self.stream):
            if free is not None:
                self.stream.wait_event(free)
            for name, cpu in self.host[i].items():
                slot[name].copy_(cpu, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.copied[i] = event

    def _make_pre_hook(self, i: int):
        def pre_hook(module, args):
            if self.stream is not None:
                event = self.copied[i]
                if event is None:           # not prefetched (cannot happen after __init__; kept safe)
                    self._copy(i)
                    event = self.copied[i]
                torch.cuda.current_stream(self.device).wait_event(event)
                self.copied[i] = None
            if i + 1 < len(self.layers) and len(self.slots) > 1:
                self._copy(i + 1)           # overlaps this layer's compute (the other slot)
        return pre_hook

    def _make_post_hook(self, i: int):
        def post_hook(module, args, output):
            if self.stream is not None:
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(self.device))
                self.slot_free[i % len(self.slots)] = event
            if i + 1 == len(self.layers) or len(self.slots) == 1:
                self._copy((i + 1) % len(self.layers))   # the next forward's first offloaded layer (or the only one)
        return post_hook
