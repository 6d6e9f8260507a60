"""``LoRARequest`` (vLLM's ``vllm.lora.request.LoRARequest``): which adapter a request runs with."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(eq=False)
class LoRARequest:
    """An adapter: a name (what the server's ``"model"`` field and ``/v1/models`` show), an id > 0 that identifies
    its weights in the engine (two requests with the same id share them, and their prefix-cache blocks), and the
    local folder of its PEFT files (``adapter_config.json`` + ``adapter_model.safetensors``). ``load_inplace``
    (vLLM's): read the folder again even if the id is loaded, replacing its weights (e.g. after a training step
    rewrote them), once per LoRARequest object (``add_lora`` always); later requests of the id never reuse
    prefix-cache blocks of the weights it replaced. Without it, an id once loaded keeps its weights until
    ``remove_lora``, whatever its files become (vLLM's rule too)."""
    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    lora_local_path: str | None = None           # vLLM's older name of lora_path
    long_lora_max_len: int | None = None
    base_model_name: str | None = None
    tensorizer_config_dict: dict | None = None
    load_inplace: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.lora_int_id, bool) or not isinstance(self.lora_int_id, int) or self.lora_int_id < 1:
            raise ValueError(f"id must be > 0, got {self.lora_int_id}")
        if self.lora_local_path:
            self.lora_path = self.lora_path or self.lora_local_path
        if not self.lora_path:
            raise ValueError("lora_path cannot be empty")
        if self.long_lora_max_len is not None:
            raise ValueError("long_lora_max_len is not supported yet by pagedllm (long-context LoRA).")
        if self.tensorizer_config_dict is not None:
            raise ValueError("tensorizer_config_dict is not supported yet by pagedllm: give the adapter's folder.")

    @property
    def adapter_id(self) -> int:
        return self.lora_int_id

    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def path(self) -> str:
        return self.lora_path

    @property
    def local_path(self) -> str:
        return self.lora_path

    def __eq__(self, other: object) -> bool:      # vLLM's: adapters are told apart by name
        return isinstance(other, LoRARequest) and self.lora_name == other.lora_name

    def __hash__(self) -> int:
        return hash(self.lora_name)


def needs_loading(added: dict[int, LoRARequest], request: LoRARequest) -> bool:
    """Whether ``request``'s adapter is new to an engine that has loaded ``added`` (id -> its request), or is to be
    read again: a ``load_inplace`` request object not loaded yet (once: the prompts of one generate() that share it
    run one set of weights). An id already loaded from another folder is a ValueError: the engine would otherwise
    run the first adapter's weights under the second's name (vLLM does so silently)."""
    known = added.get(request.lora_int_id)
    if known is None or (request.load_inplace and known is not request):
        return True
    if _folder(known.lora_path) != _folder(request.lora_path):
        raise ValueError(f"LoRA id {request.lora_int_id} is already used by adapter {known.lora_name!r} "
                         f"({known.lora_path}); adapter {request.lora_name!r} ({request.lora_path}) needs a "
                         f"lora_int_id of its own (or remove_lora({request.lora_int_id}) first).")
    return False


def _folder(path: str) -> str:
    import os
    return os.path.abspath(os.path.expanduser(path))
