"""Instructions per request under callgrind: the bare proxy, the hot path, a key mix and
the verify listener.

A shared machine's speed moves by ±20 % from one round to the next, so a change of a few
per cent in what a request costs cannot be seen in req/s or CPU time. The number of
instructions a process executes per request does not depend on the machine's speed.
Each server runs under valgrind's callgrind with counting off, answers warm-up requests,
then counts the user-space instructions of `settings.instructed` requests sent one at a
time on one keep-alive connection (`callgrind_control` dumps the counts before and after
them): the bare proxy, the gateway's hot path (one key), then on the same gateway a mix
of `MIX_KEYS` keys in rotation, each of them used once before counting; then, on a
gateway trusting 127.0.0.1 as its ingress, the hot key's verify requests on the verify
listener (`proxy.verify_port`), with the headers deploy/nginx/ sends. Repeated runs of
the same code agree to within 1 %. Not counted: the kernel's share (system calls, the
network stack). Work that depends on time rather than on requests (a flush every
interval) comes in as the run's length under valgrind allows.

Left out (None) where valgrind is not installed.
"""

from __future__ import annotations

import http.client
import re
import subprocess
from pathlib import Path
from typing import Any

from bench.harness import Servers, Settings, program
from gateway.embedded_pg import free_port

WARM = 300  # requests before counting: caches filled, code paths taken once
MIX_KEYS = 1_000  # cheap argon2 (bench/data.py): under valgrind, verified in seconds


def run(servers: Servers, settings: Settings, hot: str, mix: list[str]) -> dict[str, Any] | None:
    if program("valgrind") is None or program("callgrind_control") is None:
        return None
    out = servers.log_dir / "callgrind"
    out.mkdir(exist_ok=True)
    n = settings.instructed
    mix = mix[:MIX_KEYS]
    bare, bare_port = servers.bare(under=_callgrind(out / "bare"))
    try:
        _requests(bare_port, [hot], WARM)
        _control(bare.pid, "--instr=on")
        bare_count = _counted(bare.pid, bare_port, [hot], n, out / "bare")
    finally:
        servers.stop(bare)
    gateway, port, _ = servers.gateway(under=_callgrind(out / "gateway"))
    try:
        _requests(port, [hot], WARM)
        _control(gateway.pid, "--instr=on")
        hot_count = _counted(gateway.pid, port, [hot], n, out / "gateway")
        _requests(port, mix, len(mix))  # each key verified and cached: not counted
        mix_count = _counted(gateway.pid, port, mix, n, out / "gateway")
    finally:
        servers.stop(gateway)
    verify_port = free_port()
    gateway, _, _ = servers.gateway(
        under=_callgrind(out / "verify"),
        GATEWAY__PROXY__TRUSTED_PROXIES="[127.0.0.1/32]",
        GATEWAY__PROXY__VERIFY_PORT=str(verify_port),
    )
    try:
        _requests(verify_port, [hot], WARM, verify=True)
        _control(gateway.pid, "--instr=on")
        verify_count = _counted(gateway.pid, verify_port, [hot], n, out / "verify", verify=True)
    finally:
        servers.stop(gateway)
    return {
        "requests": n,
        "mix_keys": len(mix),
        "bare": bare_count / n,
        "hot": hot_count / n,
        "mix": mix_count / n,
        "verify": verify_count / n,
    }


def _callgrind(path: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={path}"]


def _counted(
    pid: int, port: int, keys: list[str], n: int, path: Path, *, verify: bool = False
) -> int:
    """The instructions the server `pid` executes for `n` requests with `keys` in turn.
    A dump before them and one after: callgrind zeroes its counts at each dump, and the
    second (`path`.<part>) holds these requests alone."""
    _control(pid, "--dump")
    _requests(port, keys, n, verify=verify)
    _control(pid, "--dump")
    last = max(path.parent.glob(f"{path.name}.*"), key=lambda p: int(p.suffix[1:]))
    match = re.search(r"^summary: (\d+)", last.read_text(errors="replace"), re.M)
    if match is None:
        raise SystemExit(f"bench: no instruction count in {last}")
    return int(match[1])


def _control(pid: int, option: str) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], capture_output=True, check=True)


# What nginx sends the verify listener with deploy/nginx/ (beside the client's headers).
_NGINX_VERIFY = {
    "Host": "growpanel_gateway",
    "X-Original-Method": "GET",
    "X-Original-URI": "/v1/customers",
    "X-Forwarded-For": "127.0.0.1",
    "X-Forwarded-Proto": "http",
    "X-Request-Id": "2b9f6c1e8d0a4f7b9c3e5d1a7f2b4c6e",
}


def _requests(port: int, keys: list[str], n: int, *, verify: bool = False) -> None:
    """`n` requests one after the other on one connection, with `keys` in turn: proxied,
    or asked about as nginx asks (`verify`)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    path, extra = ("/_gateway/verify", _NGINX_VERIFY) if verify else ("/v1/customers", {})
    try:
        for i in range(n):
            authorization = f"Bearer {keys[i % len(keys)]}"
            connection.request("GET", path, headers={**extra, "Authorization": authorization})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"bench: instructions: {response.status} from port {port}")
    finally:
        connection.close()
