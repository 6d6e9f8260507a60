"""``vllm.v1.sample.logits_processor.builtin``'s helper that custom processors import (``process_dict_updates``)."""
from pagedllm.model.layers.logits_processors import process_dict_updates

__all__ = ["process_dict_updates"]
