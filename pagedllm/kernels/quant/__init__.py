"""Quantized matmul kernels: the canonical packed integer form (packed.py) and its torch / Triton matmuls."""
