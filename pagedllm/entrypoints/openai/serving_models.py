"""The served models (vLLM's OpenAIServingModels): the base model's names and the LoRA adapters (--lora-modules,
and /v1/load_lora_adapter / /v1/unload_lora_adapter with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). A request's
``"model"`` picks one: a base name runs the base model, an adapter's name runs that adapter."""
from __future__ import annotations

import itertools
import logging
from typing import Sequence

from pagedllm.engine.async_engine import AsyncLLMEngine
from pagedllm.entrypoints.openai.protocol import ModelCard, RequestError
from pagedllm.lora.request import LoRARequest

logger = logging.getLogger("pagedllm.entrypoints.openai")


class ServingModels:
    def __init__(self, engine: AsyncLLMEngine, base_model_names: Sequence[str], model_path: str,
                 task: str = "generate"):
        self.engine = engine
        self.base_model_names = list(base_model_names)
        self.model_path, self.task = model_path, task
        self.lora_requests: dict[str, LoRARequest] = {}      # by name, in load order
        self._ids = itertools.count(1)

    def resolve(self, model: str | None) -> LoRARequest | None:
        """The adapter ``model`` names (None: the base model); an unknown name is vLLM's 404."""
        if not model or model in self.base_model_names:
            return None
        lora = self.lora_requests.get(model)
        if lora is None:
            raise RequestError(f"The model `{model}` does not exist.", "model", 404, "NotFoundError")
        return lora

    def response_model(self, model: str | None) -> str:
        """The "model" of a response: the adapter's name for an adapter's request, else the first served name."""
        return model if model in self.lora_requests else self.base_model_names[0]

    def cards(self) -> list[ModelCard]:
        max_len = self.engine.config.max_model_len
        cards = [ModelCard(id=name, root=self.model_path, max_model_len=max_len, task=self.task)
                 for name in self.base_model_names]
        cards += [ModelCard(id=lora.lora_name, root=lora.lora_path, max_model_len=max_len, task=self.task,
                            parent=lora.base_model_name or self.base_model_names[0])
                  for lora in self.lora_requests.values()]
        return cards

    async def load_lora_adapter(self, lora_name: str | None, lora_path: str | None,
                                base_model_name: str | None = None, load_inplace: bool = False) -> str:
        """Load and check an adapter now (vLLM's messages: 400 for a bad request or adapter, 404 for a folder that
        is not there). ``load_inplace``: an adapter of that name is replaced by the new weights (a new id, so no
        request or prefix-cache block of the old weights is mistaken for the new ones)."""
        if not lora_name or not lora_path:
            raise RequestError("Both 'lora_name' and 'lora_path' must be provided.", None, 400, "InvalidUserInput")
        old = self.lora_requests.get(lora_name) if load_inplace else None
        if lora_name in self.lora_requests and old is None:
            raise RequestError(f"The lora adapter '{lora_name}' has already been loaded. If you want to load the "
                               "adapter in place, set 'load_inplace' to True.", "lora_name", 400, "InvalidUserInput")
        if lora_name in self.base_model_names:
            raise RequestError(f"The lora adapter '{lora_name}' has the name of a served base model.", "lora_name",
                               400, "InvalidUserInput")
        # vLLM's current rule: a base_model_name that is no served name is dropped (the card's parent is then the
        # first served name).
        lora = LoRARequest(lora_name, next(self._ids), lora_path,
                           base_model_name=base_model_name if base_model_name in self.base_model_names else None)
        try:
            await self.engine.add_lora(lora)
        except ValueError as e:
            not_found = "No adapter found" in str(e)
            raise RequestError(str(e), "lora_path", 404 if not_found else 400,
                               "NotFoundError" if not_found else "BadRequestError") from None
        self.lora_requests[lora_name] = lora
        if old is not None:
            await self.engine.remove_lora(old.lora_int_id)
            logger.info("Reloaded LoRA adapter in place: name '%s', path '%s'", lora_name, lora_path)
        else:
            logger.info("Loaded new LoRA adapter: name '%s', path '%s'", lora_name, lora_path)
        return f"Success: LoRA adapter '{lora_name}' added successfully."

    async def unload_lora_adapter(self, lora_name: str | None, lora_int_id: int | None = None) -> str:
        if not lora_name and not lora_int_id:
            # vLLM's current words (its request takes lora_name only; lora_int_id, its older field, still works).
            raise RequestError("'lora_name' needs to be provided to unload a LoRA adapter.", None, 400,
                               "InvalidUserInput")
        name = lora_name or next((n for n, r in self.lora_requests.items() if r.lora_int_id == lora_int_id), None)
        lora = self.lora_requests.pop(name, None) if name else None
        if lora is None:
            raise RequestError(f"The lora adapter '{lora_name or lora_int_id}' cannot be found.", "lora_name", 404,
                               "NotFoundError")
        await self.engine.remove_lora(lora.lora_int_id)
        logger.info("Removed LoRA adapter: name '%s'", lora.lora_name)
        return f"Success: LoRA adapter '{lora.lora_name}' removed successfully."
