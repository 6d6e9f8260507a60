"""vLLM's ``worker_extension_cls``: a user class whose methods join every worker, for ``collective_rpc``.

RLHF frameworks written for vLLM pass ``worker_extension_cls="pkg.module.Class"`` and then call
``llm.collective_rpc("update_weight", args=(name, tensor))``, the method running on every rank with ``self`` the
worker: ``self.model_runner.model.load_weights(weights=[(name, tensor)])``, ``self.device``. Here the worker is the
ModelRunner (``model_runner`` and ``get_model()`` give it and its model, as on vLLM's workers); each process builds
its runner from ``ModelRunner`` and the class together. As vLLM, a method the runner already has is an error, not a
silent override of the engine's own.
"""
from __future__ import annotations

import inspect

from pagedllm.utils.import_path import import_by_path


def load_extension_class(path: str) -> type:
    try:
        cls = import_by_path(path)
    except ValueError as e:
        raise ValueError(f"worker_extension_cls={path!r}: {e}") from None
    if not inspect.isclass(cls):
        raise ValueError(f"worker_extension_cls={path!r} is a {type(cls).__name__}, not a class.")
    return cls


def runner_class(base: type, path: str) -> type:
    """``base`` (the ModelRunner), or a subclass of it and the extension class at ``path`` ("" for none)."""
    if not path:
        return base
    ext = load_extension_class(path)
    clashes = sorted(n for n in vars(ext) if not (n.startswith("__") and n.endswith("__")) and hasattr(base, n))
    if clashes:
        raise ValueError(f"worker_extension_cls={path!r} defines {', '.join(clashes)}, which the worker already has; "
                         f"rename them.")
    return type(f"{base.__name__}With{ext.__name__}", (base, ext), {"__module__": base.__module__})
