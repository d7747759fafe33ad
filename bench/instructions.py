"""Instructions per request: the gateway's hot path and the bare proxy under callgrind.

A shared machine's speed moves by ±20 % from one round to the next, so a change of a few
per cent in what a request costs cannot be seen in req/s or CPU time. The number of
instructions a process executes per request does not depend on the machine's speed.
Each server runs under valgrind's callgrind with counting off, answers warm-up requests,
then counts the user-space instructions of `settings.instructed` requests sent one at a
time on one keep-alive connection (`callgrind_control` switches counting on, then dumps).
Repeated runs of the same code agree to within 1 %. Not counted: the kernel's
share (system calls, the network stack), and work that depends on time rather than on
requests (a flush every interval) comes in as the run's length under valgrind allows.

Left out (None) where valgrind is not installed.
"""

from __future__ import annotations

import http.client
import re
import subprocess
from pathlib import Path
from typing import Any

from bench.harness import Servers, Settings, program

WARM = 300  # requests before counting: caches filled, code paths taken once


def run(servers: Servers, settings: Settings, hot: str) -> dict[str, Any] | None:
    if program("valgrind") is None or program("callgrind_control") is None:
        return None
    out = servers.log_dir / "callgrind"
    out.mkdir(exist_ok=True)
    n = settings.instructed
    bare, bare_port = servers.bare(under=_callgrind(out / "bare"))
    bare_count = _count(servers, bare, bare_port, hot, n, out / "bare")
    gateway, port, _ = servers.gateway(under=_callgrind(out / "hot"))
    hot_count = _count(servers, gateway, port, hot, n, out / "hot")
    return {"requests": n, "bare": bare_count / n, "hot": hot_count / n}


def _callgrind(path: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={path}"]


def _count(
    servers: Servers, process: subprocess.Popen[bytes], port: int, key: str, n: int, path: Path
) -> int:
    """The instructions `process` executes for `n` requests with `key`; stops it."""
    try:
        _requests(port, key, WARM)
        _control(process.pid, "--instr=on")
        _requests(port, key, n)
        _control(process.pid, "--dump")
    finally:
        servers.stop(process)
    dumps = sorted(path.parent.glob(f"{path.name}.*"))  # the final dump at exit is `path`
    if not dumps:
        raise SystemExit(f"bench: callgrind wrote no dump for {path.name}")
    match = re.search(r"^(?:summary|totals): (\d+)", dumps[0].read_text(errors="replace"), re.M)
    if match is None:
        raise SystemExit(f"bench: no instruction total in {dumps[0]}")
    return int(match[1])


def _control(pid: int, option: str) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], capture_output=True, check=True)


def _requests(port: int, key: str, n: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for _ in range(n):
            connection.request("GET", "/v1/customers", headers={"Authorization": f"Bearer {key}"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"bench: instructions: {response.status} from port {port}")
    finally:
        connection.close()
