"""``from vllm.v1.sample.logits_processor import LogitsProcessor, BatchUpdate, ...`` for pagedllm: the custom logits
processor interface (implemented in pagedllm/model/layers/logits_processors.py)."""
from pagedllm.model.layers.logits_processors import (AdapterLogitsProcessor, AddedRequest, BatchUpdate,
                                                     LogitsProcessor, MovedRequest, MoveDirectionality,
                                                     RemovedRequest, RequestLogitsProcessor)

__all__ = ["AdapterLogitsProcessor", "AddedRequest", "BatchUpdate", "LogitsProcessor", "MovedRequest",
           "MoveDirectionality", "RemovedRequest", "RequestLogitsProcessor"]
