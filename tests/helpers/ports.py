"""Free loopback TCP ports for tests."""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nodelay_env() -> dict[str, str]:
    """The environment for dcmtk and Orthanc: Debian's builds stall ~40 ms per image without it."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env
