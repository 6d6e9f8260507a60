"""Where a kernel test runs: on a CUDA GPU, or under ``TRITON_INTERPRET=1`` on CPU tensors (tests/gpu/conftest.py).
A test module imports these and sets ``pytestmark = NEEDS_GPU_OR_INTERPRETER``."""
import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
NEEDS_GPU_OR_INTERPRETER = pytest.mark.skipif(not torch.cuda.is_available() and not INTERPRET,
                                              reason="needs a CUDA GPU")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton 3.6's interpreter mis-converts fp32 -> bf16 (see test_triton_attention.py): fp16 stands in for bf16 there.
HALF = torch.float16 if INTERPRET else torch.bfloat16
