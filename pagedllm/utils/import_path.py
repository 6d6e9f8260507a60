"""Objects named by a user's import path (``module.name``): --middleware, worker_extension_cls."""
from __future__ import annotations

import importlib
from typing import Any


def import_by_path(path: str) -> Any:
    """The object ``path`` names. ValueError: the path has no module part ("give its import path, module.name"),
    or the module or the name could not be imported (the import's own message)."""
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise ValueError("give its import path, module.name")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(str(e)) from None
