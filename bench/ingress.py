"""Ingress scenarios: nginx and Caddy moving the bytes, the gateway's `/_gateway/verify`
deciding each request (deploy/nginx and deploy/caddy as shipped), against the gateway's
own proxy and against the same daemon proxying with no check.

- throughput (req/s, and server CPU per request: the daemon's and the gateway's apart, so
  it shows where the time goes), each round measuring the gateway's proxy and each
  ingress back to back, in turn the other way round; same hot key, same two cores;
- latency at concurrency 1 (p50, p99) of plain nginx, nginx + verify, plain Caddy and
  Caddy + verify, in the same interleaved rounds;
- revocation through each ingress: keys deleted through the admin API, timed from its
  answer to the first 401 through nginx, and through Caddy (bench/revocation.py's timing).

One gateway serves all of it, trusting 127.0.0.1 (the daemons) as its proxies; the daemons
ask its verify listener (`proxy.verify_port`), as docs/ingress.md recommends, and for
comparison one more nginx asks `/_gateway/verify` on the public listener (throughput
only). Left out, with a note, where nginx or Caddy is not installed.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from bench import revocation
from bench.harness import Servers, Settings, cpu_seconds, in_turn, url_of, wrk
from gateway.embedded_pg import free_port

Rows = dict[str, list[dict[str, float]]]
REVOKED = 50  # keys deleted per ingress, from the bulk (revocation.py takes the last 100)


def run(
    servers: Servers,
    settings: Settings,
    hot: str,
    owner_token: str,
    keys: list[str],
    key_ids: list[uuid.UUID],
) -> dict[str, Any] | None:
    verify_port = free_port()
    gateway, port, admin = servers.gateway(
        GATEWAY__PROXY__TRUSTED_PROXIES="[127.0.0.1/32]",
        GATEWAY__PROXY__VERIFY_PORT=str(verify_port),
        GATEWAY_OPERATOR_TOKEN="",
    )
    started = {
        "nginx": servers.nginx(),
        "nginx_verify": servers.nginx_verify(verify_port),
        "nginx_verify_public": servers.nginx_verify(port),
        "caddy": servers.caddy(),
        "caddy_verify": servers.caddy(verify_port),
    }
    daemons = {name: d for name, d in started.items() if d is not None}
    if not daemons:
        servers.stop(gateway)
        print("bench: neither nginx nor Caddy is installed: the ingress figures are left out")
        return None
    path = "/v1/customers"
    # name -> (the daemon's pid or None, URL, key)
    targets: dict[str, tuple[int | None, str, str | None]] = {
        "proxy": (None, url_of(port, path), hot)
    }
    for name, (process, daemon_port) in daemons.items():
        targets[name] = (process.pid, url_of(daemon_port, path), hot if "verify" in name else None)
    for _, url, key in targets.values():
        wrk(url, settings.warm, settings.connections, key=key)
    figures: dict[str, Any] = {
        "throughput": _throughput(settings, gateway.pid, servers.upstream_pid, targets),
        "latency_c1": _latency(settings, targets),
    }
    # Keys of their own for each ingress: a deleted key the gateway has already refused
    # is no longer cached, and each further try with it is a failed verification, charged
    # to the address (the daemons') until its budget runs out.
    end = len(keys) - revocation.COUNT
    for name in ("nginx_verify", "caddy_verify"):
        if name in daemons:
            chosen = slice(end - REVOKED, end)
            end -= REVOKED
            figures[f"{name}_revocation"] = asyncio.run(
                revocation.revocation(
                    url_of(admin),
                    owner_token,
                    [url_of(daemons[name][1])],
                    keys[chosen],
                    key_ids[chosen],
                )
            )
    for process, _ in daemons.values():
        servers.stop(process)
    servers.stop(gateway)
    return figures


def _throughput(
    settings: Settings,
    gateway_pid: int,
    upstream_pid: int,
    targets: dict[str, tuple[int | None, str, str | None]],
) -> Rows:
    """The gateway's proxy and each ingress with verify, paired in every round."""
    names = [n for n in ("nginx_verify", "nginx_verify_public", "caddy_verify") if n in targets]
    rows: Rows = {}
    for name in names:  # each with its own row of the proxy's runs, measured beside it
        rows[name], rows[f"{name}_proxy"] = [], []
    for index in range(settings.rounds):
        for name in names:
            for one, row in in_turn(((name, name), ("proxy", f"{name}_proxy")), index):
                daemon_pid, url, key = targets[one]
                rows[row].append(
                    _measured(settings, gateway_pid, daemon_pid, url, key, upstream_pid)
                )
    return rows


def _measured(
    settings: Settings, gateway_pid: int, daemon_pid: int | None, url: str, key: str | None,
    upstream_pid: int,
) -> dict[str, float]:  # fmt: skip
    pids = {"gateway": gateway_pid, "daemon": daemon_pid, "upstream": upstream_pid}
    before = {name: cpu_seconds(pid) if pid else 0.0 for name, pid in pids.items()}
    result = wrk(url, settings.seconds, settings.connections, key=key)
    requests = max(1.0, result["requests"])
    for name, pid in pids.items():
        used = (cpu_seconds(pid) - before[name]) if pid else 0.0
        result[f"{name}_cpu_us_per_request"] = used / requests * 1e6
    return result


def _latency(settings: Settings, targets: dict[str, tuple[int | None, str, str | None]]) -> Rows:
    names = [name for name in targets if name != "nginx_verify_public"]
    rows: Rows = {name: [] for name in names}
    for index in range(settings.rounds):
        for name in in_turn(names, index):
            _, url, key = targets[name]
            rows[name].append(wrk(url, settings.seconds, 1, key=key, latency=True))
    return rows
