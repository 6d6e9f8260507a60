"""vLLM's ``vllm.utils`` helpers that its example scripts import (``from vllm.utils.argparse_utils import
FlexibleArgumentParser``, ``from vllm.utils.print_utils import print_embeddings``; before vLLM 0.11 the parser came
from ``vllm.utils`` itself), at the same paths under ``pagedllm``: an example runs with the package name changed."""
from pagedllm.config import FlexibleArgumentParser

__all__ = ["FlexibleArgumentParser"]
