"""The servers' listening socket, bound before the engine is built (as vLLM's ``create_server_socket``).

Two reasons to bind first. A port already taken fails the command at once, with a clear message, not after the
model has loaded. And nothing started while the engine builds can take the port: tensor-parallel workers open
gloo connections on ephemeral ports, and a ``--port`` in that range (a test's free port, say) was once taken by one
of them between the check and uvicorn's own bind (CI, 2026-12-05: "address already in use" after the engine was
ready). uvicorn then serves on this socket (``Server.serve(sockets=[sock])``); ``--uds`` stays uvicorn's.
"""
from __future__ import annotations

import socket


def bind_listen_socket(host: str | None, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (all IPv4 interfaces when host is None or empty, as uvicorn's default
    0.0.0.0). Raises SystemExit with the reason when the address cannot be bound."""
    host = host or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise SystemExit(f"error: cannot listen on {host}:{port}: {e.strerror} (--host)") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # uvicorn's setting: a restart need not wait
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise SystemExit(f"error: cannot listen on {host}:{port}: {e.strerror or e} (--host / --port); "
                         f"another server may be using that port") from None
    return sock


def bound_port(sock: socket.socket) -> int:
    """The port the socket is bound to (the one the kernel chose for ``--port 0``)."""
    return sock.getsockname()[1]
