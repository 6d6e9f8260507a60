"""``print_embeddings``, the one-line summary vLLM's embedding examples print."""
from __future__ import annotations

from typing import Sequence


def print_embeddings(embeds: Sequence[float], prefix: str = "Embeddings") -> None:
    """``Embeddings: [a, b, c, d, ...] (size=N)``: the first four values, then the length."""
    shown = list(embeds[:4])
    text = str(shown)[:-1] + ", ...]" if len(embeds) > 4 else str(shown)
    print(f"{prefix}: {text} (size={len(embeds)})")
