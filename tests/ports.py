"""A free localhost port for a test's server, taken below the kernel's ephemeral range.

A port from ``bind(("127.0.0.1", 0))`` is an ephemeral one: once the check's socket is closed, the kernel may hand
the same port to any outgoing or gloo connection opened while the server starts (it did, once, in CI: a
tensor-parallel server's workers took the test's port). Ports below the range are only ever taken by an explicit
bind, so a random free one there stays free. (Importable by name: pytest puts tests/, conftest.py's folder, on
sys.path.)
"""
from __future__ import annotations

import random
import socket

_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def free_port() -> int:
    try:
        with open(_RANGE_FILE) as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768                                     # Linux's default when the file is not there
    rng = random.Random()                               # seeded from os.urandom: independent of the tests' seeds
    for _ in range(100):
        port = rng.randrange(max(1024, low - 10000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:                          # all tried were taken: an ephemeral one, as before
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
