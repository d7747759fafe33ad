"""`free_port`: the port a test or `make run` picks for a server that binds it later."""

from __future__ import annotations

import socket
from pathlib import Path

from gateway.embedded_pg import free_port


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    # Outgoing connections and bind(0) take their ports from the ephemeral range: none of
    # them can take one of these between free_port() and the server's bind.
    assert all(1024 <= port < low for port in ports), (low, sorted(ports)[-5:])
    for port in ports[:20]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_something_listens_on_is_never_chosen() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    listeners = []  # every 20th port of the range free_port draws from, listened on
    try:
        for port in range(low - 10_000, low, 20):
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sock.listen()
            listeners.append(sock)
        taken = {sock.getsockname()[1] for sock in listeners}
        assert len(taken) > 400
        assert not taken & {free_port() for _ in range(500)}
    finally:
        for sock in listeners:
            sock.close()
