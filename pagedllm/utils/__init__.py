"""vLLM's ``vllm.utils`` helpers that its example scripts import (``from vllm.utils.argparse_utils import
FlexibleArgumentParser``, ``from vllm.utils.print_utils import print_embeddings``; before vLLM 0.11 the parser came
from ``vllm.utils`` itself; ``random_uuid`` names requests in scripts over AsyncLLM), at the same paths under
``pagedllm``: an example runs with the package name changed. The parser loads on first use (it lives in
pagedllm.config, which imports torch; serial_utils' users do not)."""
import uuid

__all__ = ["FlexibleArgumentParser", "random_uuid"]


def random_uuid() -> str:
    """vLLM's: a random 32-hex-digit id (the server's request ids, and scripts' own)."""
    return uuid.uuid4().hex


def __getattr__(name: str):
    if name == "FlexibleArgumentParser":
        from pagedllm.config import FlexibleArgumentParser
        return FlexibleArgumentParser
    raise AttributeError(f"module 'pagedllm.utils' has no attribute {name!r}")
