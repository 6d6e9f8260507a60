"""``FlexibleArgumentParser`` where vLLM's examples import it from (it lives in pagedllm.config)."""
from pagedllm.config import FlexibleArgumentParser

__all__ = ["FlexibleArgumentParser"]
