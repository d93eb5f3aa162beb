"""A free TCP port on 127.0.0.1, for the servers tests start (Serve, a Ray head, llama-server)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
