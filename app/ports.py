"""Listening sockets bound before anything else starts, so a busy port is one clear error."""

from __future__ import annotations

import errno
import socket

from app import errors


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (not yet listening; uvicorn does that), or ConfigError (exit 2).

    Binding first, before the store, the session or any task is opened, means a port conflict has
    nothing to clean up; uvicorn then serves on this very socket, so there is no race either.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise errors.ConfigError(f"--host: cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise errors.ConfigError(f"port {port} on {host} is in use (choose another with --port)") from None
        raise errors.ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
