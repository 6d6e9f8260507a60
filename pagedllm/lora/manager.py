"""The worker's adapters: loaded once into CPU memory (up to ``max_cpu_loras``, least recently used dropped), copied
into one of the ``max_loras`` slots of every targeted layer when a step needs them, and each step's per-token slot
mask. The scheduler keeps the adapters of the running requests within ``max_loras`` (engine/scheduler.py), so a
step always finds a slot for each of its adapters."""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch

from pagedllm.lora.layers import LoRASlots, LoRAStep
from pagedllm.lora.peft import LORA_TARGET_MODULES, PEFTAdapter, load_adapter, unexpected_modules
from pagedllm.lora.request import LoRARequest

logger = logging.getLogger(__name__)

# The model's modules that get adapter slots (pagedllm's names): the Llama decoder's projections, the plain MLP's
# fc1 / fc2 (the LayerNorm decoders', OPT's) and OPT's out_proj.
_SLOT_MODULES = LORA_TARGET_MODULES + ("out_proj", "fc1", "fc2")


def _part_size(module: torch.nn.Module, shard) -> int:
    if hasattr(module, "q_size"):        # QKV: [q | k | v]
        return {"q": module.q_size, "k": module.kv_size, "v": module.kv_size}[shard]
    return module.output_sizes[shard]    # merged column layer (gate | up)


class LoRAManager:
    def __init__(self, model: torch.nn.Module, max_loras: int, max_lora_rank: int, max_cpu_loras: int,
                 dtype: torch.dtype, device: torch.device, hf_token: bool | str | None = None):
        self.max_loras, self.max_lora_rank, self.max_cpu_loras = max_loras, max_lora_rank, max_cpu_loras
        self.dtype, self.device = dtype, device
        self.hf_token = hf_token          # adapters named by a Hub repository id download with it
        # A model whose projections have other names lists them (``lora_slot_modules``: DeepSeek's MLA projections,
        # ChatGLM's; only that model's modules of those names get slots).
        slot_modules = _SLOT_MODULES + tuple(getattr(model, "lora_slot_modules", ()))
        fused: dict[str, list] = {}
        for leaf, (fused_leaf, shard) in getattr(model, "packed_modules_mapping", {}).items():
            if leaf in slot_modules:
                fused.setdefault(fused_leaf, []).append((leaf, shard))
        # PEFT module name (model.layers.0.self_attn.q_proj) -> (its layer's slots, its part there, the layer, the
        # part's shard id: how the layer cuts it for tensor parallel, LinearBase.lora_shard)
        self.targets: dict[str, tuple[LoRASlots, int, torch.nn.Module, object]] = {}
        # Pipeline parallel: the modules of other stages' layers (an adapter's weights for them are not this rank's).
        skipped = getattr(model, "pp_skipped_checkpoint_prefixes", None)
        self._other_stages: tuple[str, ...] = tuple(skipped()) if skipped is not None else ()
        self.layers: list[LoRASlots] = []
        # Modules whose projections take no adapter, and why (``no_lora``: True for a mixture-of-experts layer's
        # experts, or what the module is: "the vision tower"); an adapter for one of them is refused by name.
        self._why_no_lora = {f"{name}.": module.no_lora for name, module in model.named_modules()
                             if getattr(module, "no_lora", False)}
        self._no_lora = tuple(self._why_no_lora)
        for name, module in model.named_modules():
            parent, _, leaf = name.rpartition(".")
            if name.startswith(self._no_lora) and self._no_lora:
                continue
            if not hasattr(module, "input_size") or not hasattr(module, "output_size"):
                continue
            if leaf in fused:
                names = [f"{parent}.{part}" for part, _ in fused[leaf]]
                sizes = [_part_size(module, shard) for _, shard in fused[leaf]]
                shards = [shard for _, shard in fused[leaf]]
            elif leaf in slot_modules:
                names, sizes, shards = [name], [module.output_size], [None]
            else:
                continue
            slots = LoRASlots(module.input_size, sizes, max_loras, max_lora_rank, dtype, device)
            module.lora = slots
            self.layers.append(slots)
            for i, peft_name in enumerate(names):
                self.targets[peft_name] = (slots, i, module, shards[i])
        # A checkpoint's fused projections that adapters target whole (Phi-3's qkv_proj, gate_up_proj): leaf ->
        # [(part leaf, part rows)]; an adapter's B is cut into those parts, each keeping the shared A.
        fused_modules = getattr(model, "lora_checkpoint_fused_modules", None)
        self._checkpoint_fused: dict[str, list[tuple[str, int]]] = fused_modules() if fused_modules else {}
        # The module names (leaves) an adapter may target, as PEFT saves them: the checkpoint's names.
        self.target_modules = (tuple(getattr(model, "lora_target_modules", LORA_TARGET_MODULES))
                               + tuple(self._checkpoint_fused))
        # An adapter's module (the checkpoint's name) and its B -> [(the model's module, its rows of B)]: the model's
        # names and row order where its checkpoint's differ (renamed, fused Q/K/V cut, Q/K rows reordered).
        self._module_parts = getattr(model, "lora_module_parts", None)
        self._cpu: OrderedDict[int, PEFTAdapter] = OrderedDict()    # least recently used first
        self._requests: dict[int, LoRARequest] = {}                  # to load an adapter again from its folder
        self._slot_of: OrderedDict[int, int] = OrderedDict()          # adapter id -> slot, least recently used first
        self._pinned: set[int] = set()        # pin_lora: never dropped from CPU memory

    @property
    def weights_bytes(self) -> int:
        return sum(s.a.numel() * s.a.element_size() + s.b.numel() * s.b.element_size() for s in self.layers)

    # ---- adapters -------------------------------------------------------------------------------------------------
    def add_adapter(self, request: LoRARequest) -> bool:
        """Load ``request``'s adapter into CPU memory, checked against the model's layers (False: it was there).
        ``load_inplace``: read again, and the old weights replaced once the new ones load (their slot copied anew)."""
        if request.lora_int_id in self._cpu and not request.load_inplace:
            self._cpu.move_to_end(request.lora_int_id)
            return False
        adapter = load_adapter(request, self.max_lora_rank, self.dtype, self.hf_token, self.target_modules)
        mine = {}        # this rank's parts (tensor parallel) of this stage's modules (pipeline parallel)
        unexpected = set()
        ignored = []       # modules of a part that takes no adapter (a vision tower): skipped with a warning
        for module, a, b, peft_module in self._model_modules(request, adapter.weights):
            why = next((w for prefix, w in self._why_no_lora.items() if module.startswith(prefix)), None)
            if why is True:
                raise ValueError(f"Loading lora {request.lora_name} failed: {peft_module} is an expert of a "
                                 "mixture-of-experts layer, and LoRA on the experts is not supported yet by "
                                 "pagedllm (adapters of the attention and shared-expert projections are).")
            if why:
                ignored.append(f"{peft_module} ({why})")      # vLLM's behaviour: the language model's part runs
                continue
            if peft_module.rpartition(".")[2] not in self.target_modules:
                unexpected.add(peft_module.rpartition(".")[2])
                continue
            if module.startswith(self._other_stages) and self._other_stages:
                continue
            if module not in self.targets:
                raise ValueError(f"Loading lora {request.lora_name} failed: the model has no module {peft_module} "
                                 f"(is the adapter for another model?).")
            slots, part, layer, shard = self.targets[module]
            full = (tuple(a.shape), tuple(b.shape))
            try:
                a, b = layer.lora_shard(a, b, shard)
            except ValueError:
                a = None
            if a is None or a.shape[1] != slots.in_features or b.shape[0] != slots.part_sizes[part]:
                raise ValueError(f"Loading lora {request.lora_name} failed: {peft_module} has lora_A {full[0]} and "
                                 f"lora_B {full[1]}, which do not fit the model's layer (is the adapter for another "
                                 f"model?).")
            mine[module] = (a.contiguous(), b.contiguous())
        if unexpected:
            raise unexpected_modules(request, self.target_modules, unexpected)
        if ignored:
            # As vLLM ("only supports adding LoRA to language model, ... will be ignored"): the adapter runs without
            # these modules, so its outputs differ from the adapter merged whole; said, never silent.
            logger.warning("LoRA adapter %r: LoRA applies to the language model only; %d of its modules will be "
                           "ignored: %s", request.lora_name, len(ignored),
                           ", ".join(ignored[:3]) + (", ..." if len(ignored) > 3 else ""))
        adapter.weights = mine
        self._slot_of.pop(request.lora_int_id, None)      # load_inplace: the next step copies the new weights
        self._cpu[request.lora_int_id] = adapter
        self._requests[request.lora_int_id] = request
        droppable = [i for i in self._cpu if i not in self._pinned and i != request.lora_int_id]
        for old in droppable[:max(len(self._cpu) - self.max_cpu_loras, 0)]:
            del self._cpu[old]
            if old not in self._slot_of:
                self._requests.pop(old, None)
        logger.info("Loaded LoRA adapter %r (id %d, rank %d) from %s", request.lora_name, request.lora_int_id,
                    adapter.rank, request.lora_path)
        return True

    def _model_modules(self, request: LoRARequest, weights: dict):
        """(the model's module, A, its rows of B, the adapter's module) for each of the adapter's modules (PEFT's
        names: the checkpoint's): renamed, cut and reordered as the model loads its checkpoint (the model's
        ``lora_module_parts``), and each of the checkpoint's fused projections that the model holds as parts (Phi-3's
        qkv_proj) cut into them: x A^T B^T cut by output rows is the same product."""
        for peft_module, (a, b) in weights.items():
            pieces = self._module_parts(peft_module, b) if self._module_parts is not None else [(peft_module, b)]
            for module, piece in pieces:
                parent, _, leaf = module.rpartition(".")
                parts = self._checkpoint_fused.get(leaf)
                if parts is None:
                    yield module, a, piece, peft_module
                    continue
                rows = [n for _, n in parts]
                if piece.shape[0] != sum(rows):
                    raise ValueError(f"Loading lora {request.lora_name} failed: {peft_module} has lora_B "
                                     f"{tuple(piece.shape)}, but the model's {leaf} has {sum(rows)} output rows (is "
                                     f"the adapter for another model?).")
                for (part, _), rows_of_part in zip(parts, piece.split(rows)):
                    yield f"{parent}.{part}", a, rows_of_part, peft_module

    def pin_adapter(self, lora_int_id: int) -> bool:
        """Keep a loaded adapter in CPU memory whatever max_cpu_loras says (vLLM's pin_lora)."""
        if lora_int_id not in self._cpu:
            raise ValueError(f"LoRA {lora_int_id} is not loaded: add_lora (or a request with it) first.")
        self._pinned.add(lora_int_id)
        return True

    def remove_adapter(self, lora_int_id: int) -> bool:
        found = lora_int_id in self._cpu or lora_int_id in self._slot_of
        self._pinned.discard(lora_int_id)
        self._cpu.pop(lora_int_id, None)
        self._slot_of.pop(lora_int_id, None)
        self._requests.pop(lora_int_id, None)
        return found

    def list_adapters(self) -> set[int]:
        return set(self._cpu) | set(self._slot_of)

    def _activate(self, ids: set[int], requests: dict[int, LoRARequest]) -> None:
        """Give each of ``ids`` a slot, copying adapters in over the least recently used ones the step does not use."""
        for lora_id in ids:
            if lora_id in self._slot_of:
                self._slot_of.move_to_end(lora_id)
                continue
            used = set(self._slot_of.values())
            free = [s for s in range(self.max_loras) if s not in used]
            if free:
                slot = free[0]
            else:
                victim = next(i for i in self._slot_of if i not in ids)
                slot = self._slot_of.pop(victim)
            if lora_id not in self._cpu:
                self.add_adapter(self._requests.get(lora_id) or requests[lora_id])
            adapter = self._cpu[lora_id]
            for layer in self.layers:
                layer.clear(slot)
            for module, (a, b) in adapter.weights.items():
                slots, part, _, _ = self.targets[module]
                slots.set(slot, part, a, b)
            self._slot_of[lora_id] = slot

    def step_inputs(self, lora_requests: Sequence[LoRARequest | None], num_tokens: Sequence[int]) -> LoRAStep | None:
        """Each token's adapter slot (mask and slot index, LoRAStep) for a step whose requests (in batch order) run
        ``num_tokens`` tokens each with these adapters (None: the base model); None when no request has one."""
        ids = {r.lora_int_id for r in lora_requests if r is not None}
        if not ids:
            return None
        if len(ids) > self.max_loras:      # the scheduler never does this
            raise AssertionError(f"{len(ids)} adapters in one step, max_loras={self.max_loras}")
        self._activate(ids, {r.lora_int_id: r for r in lora_requests if r is not None})
        slot_of_request = np.array([-1 if r is None else self._slot_of[r.lora_int_id] for r in lora_requests])
        per_token = np.repeat(slot_of_request, np.asarray(num_tokens))
        mask = np.zeros((len(per_token), self.max_loras), dtype=np.float32)
        rows = np.nonzero(per_token >= 0)[0]
        mask[rows, per_token[rows]] = 1.0
        return LoRAStep(torch.from_numpy(mask).to(self.device, self.dtype, non_blocking=True),
                        torch.from_numpy(per_token.astype(np.int32)).to(self.device, non_blocking=True))
