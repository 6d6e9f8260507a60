"""The ``server`` fixture: ``pagedllm serve`` with the bundled model, one per test module (helpers live in
server_utils.py, a name no other test folder uses)."""
from __future__ import annotations

import pytest

from server_utils import MODEL, SERVER_ARGS, start_servers


@pytest.fixture(scope="module")
def server():
    """``pagedllm serve`` with the bundled model."""
    (s,) = start_servers(["serve", MODEL] + SERVER_ARGS)
    yield s
    s.stop()
