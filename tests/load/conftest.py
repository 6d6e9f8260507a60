"""The load and fault suite (issue 17). A bounded subset runs in the main CI suite; ``PAGEDLLM_LOAD_FULL=1 pytest -q -s
tests/load`` runs the full counts (500 streams, a longer fuzz run, the starvation measurement). Each test prints its
figures on a line starting with ``LOAD``."""
from __future__ import annotations

import os

FULL = os.environ.get("PAGEDLLM_LOAD_FULL", "") not in ("", "0")
