"""The bench's harness: its settings, the processes it starts and how it loads them.

Owns the run's settings (full or `--quick`), starting and stopping the demo upstream, the
bare proxy, gateways, nginx and Caddy (plain, or with the shipped deploy/ configurations
asking a gateway's `/_gateway/verify`), waiting for them to answer, the wrk runs, and reading a
server's CPU time and the machine's steal share from `/proc`. The scenarios measure with
these; none of them starts a process any other way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from bench.configs import CADDY_CONF, NGINX_CONF, nginx_verify_conf
from gateway.embedded_pg import free_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long and how large the run is; `--quick` is the same, shorter and smaller."""

    quick: bool
    rounds: int
    seconds: int
    warm: int  # seconds of load before measuring a server
    bulk: int  # keys in Postgres
    mix: int  # keys in the rotating-key traffic
    leak_runs: int  # leaked keys timed from the signed POST to refused on two processes
    webhook_events: int  # webhook deliveries timed
    instructed: int  # requests whose instructions callgrind counts, per server
    connections: int = 64

    @classmethod
    def of(cls, quick: bool) -> Settings:
        if quick:
            return cls(
                quick, rounds=2, seconds=3, warm=1, bulk=10_000, mix=1_000,
                leak_runs=10, webhook_events=40, instructed=300,
            )  # fmt: skip
        return cls(
            quick, rounds=5, seconds=6, warm=2, bulk=100_000, mix=10_000,
            leak_runs=50, webhook_events=200, instructed=2_000,
        )  # fmt: skip

    def as_json(self) -> dict[str, int]:
        return {
            "rounds": self.rounds,
            "seconds": self.seconds,
            "connections": self.connections,
            "keys_in_database": self.bulk,
            "keys_in_traffic": self.mix,
            "leak_runs": self.leak_runs,
            "webhook_events": self.webhook_events,
            "instructed_requests": self.instructed,
        }


def in_turn(items: Sequence[T], index: int) -> Sequence[T]:
    """`items` in round `index`: odd rounds measure the other way round, so a drift of the
    machine within a pair does not always favour the same side."""
    return items[:: -1 if index % 2 else 1]


def url_of(port: int, path: str = "") -> str:
    return f"http://127.0.0.1:{port}{path}"


# -- processes --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants that are still alive."""
    total = 0.0
    for child in [pid, *_descendants(pid)]:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    out = [int(c) for c in children]
    for child in list(out):
        out.extend(_descendants(child))
    return out


def cpu_steal() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return values[7], sum(values)


def wait_http(url: str, headers: dict[str, str] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, headers=headers or {})  # noqa: S310
            with urllib.request.urlopen(request, timeout=2):  # noqa: S310
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"bench: {url} did not answer")


def start_upstream() -> tuple[subprocess.Popen[bytes], str]:
    """The demo upstream every proxy forwards to, and its URL."""
    port = free_port()
    process = subprocess.Popen(
        [PY, "-m", "gateway.cli", "demo-upstream", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(url_of(port, "/v1/customers"))
    return process, url_of(port)


def program(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin")


_STARTED = 30.0  # seconds for a server to answer once started
_STARTED_UNDER = 600.0  # ... under valgrind, which runs Python's start-up some 50x slower


class Servers:
    """Every process the bench starts, stopped in reverse order at the end."""

    def __init__(
        self, database_url: str, upstream_url: str, log_dir: Path, *, upstream_pid: int = 0
    ) -> None:
        self.database_url = database_url
        self.upstream_url = upstream_url
        self.upstream_pid = upstream_pid  # whose CPU the ingress scenario reports too
        self.log_dir = log_dir
        self.running: list[subprocess.Popen[bytes]] = []

    def gateway(
        self,
        *args: str,
        config: Path = ROOT / "config.yaml",
        under: Sequence[str] = (),
        **env: str,
    ) -> tuple[subprocess.Popen[bytes], int, int]:
        """A gateway process (`under` a command such as valgrind, if given) and its
        public and admin ports, once both answer."""
        port, admin_port = free_port(), free_port()
        environment = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "GATEWAY__PROXY__UPSTREAM": self.upstream_url,
            "GATEWAY__PROXY__PORT": str(port),
            "GATEWAY__ADMIN__PORT": str(admin_port),
            "GATEWAY_OPERATOR_TOKEN": "",
            **env,
        }
        environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
        log = open(self.log_dir / f"gateway-{port}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [*under, PY, "-m", "gateway.cli", "--config", str(config), "serve", *args],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.running.append(process)
        started = _STARTED_UNDER if under else _STARTED
        wait_http(url_of(admin_port, "/readyz"), timeout=started)
        wait_http(url_of(port, "/"), timeout=started)
        return process, port, admin_port

    def bare(self, under: Sequence[str] = ()) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        process = subprocess.Popen(
            [
                *under,
                PY,
                str(ROOT / "bench" / "bare_proxy.py"),
                "--port",
                str(port),
                "--upstream",
                self.upstream_url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.running.append(process)
        wait_http(url_of(port, "/v1/customers"), timeout=_STARTED_UNDER if under else _STARTED)
        return process, port

    def nginx(self) -> tuple[subprocess.Popen[bytes], int] | None:
        """nginx as a pass-through proxy (one worker, keep-alive to the upstream), the
        optional reference of a C proxy; None when nginx is not installed."""
        binary = program("nginx")
        if binary is None:
            return None
        port = free_port()
        home = self.log_dir / f"nginx-{port}"
        home.mkdir(exist_ok=True)
        upstream = self.upstream_url.removeprefix("http://")
        (home / "nginx.conf").write_text(NGINX_CONF.format(home=home, upstream=upstream, port=port))
        return self._nginx(binary, home, port)

    def nginx_verify(self, gateway_port: int) -> tuple[subprocess.Popen[bytes], int] | None:
        """nginx with deploy/nginx/ as shipped, asking the gateway on `gateway_port`
        (which must trust 127.0.0.1) about each request; None without nginx."""
        binary = program("nginx")
        if binary is None:
            return None
        port = free_port()
        home = self.log_dir / f"nginx-verify-{port}"
        home.mkdir(exist_ok=True)
        conf = nginx_verify_conf(
            home, port, f"127.0.0.1:{gateway_port}", self.upstream_url.removeprefix("http://")
        )
        (home / "nginx.conf").write_text(conf)
        return self._nginx(binary, home, port)

    def _nginx(self, binary: str, home: Path, port: int) -> tuple[subprocess.Popen[bytes], int]:
        process = subprocess.Popen(
            [binary, "-p", str(home), "-c", str(home / "nginx.conf"), "-e", "stderr"],
            stdout=subprocess.DEVNULL,
            stderr=open(home / "error.log", "wb"),  # noqa: SIM115
        )
        self.running.append(process)
        wait_http(url_of(port, "/v1/customers"))  # any answer: with verify, a 401
        return process, port

    def caddy(self, gateway_port: int | None = None) -> tuple[subprocess.Popen[bytes], int] | None:
        """Caddy as a plain reverse proxy, or with `gateway_port`: deploy/caddy/Caddyfile
        as shipped, asking that gateway about each request; None without Caddy."""
        binary = program("caddy")
        if binary is None:
            return None
        port = free_port()
        home = self.log_dir / f"caddy-{port}"
        home.mkdir(exist_ok=True)
        upstream = self.upstream_url.removeprefix("http://")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_DATA_HOME": str(home)}
        if gateway_port is None:
            (home / "Caddyfile").write_text(CADDY_CONF.format(port=port, upstream=upstream))
            config = home / "Caddyfile"
        else:
            config = ROOT / "deploy" / "caddy" / "Caddyfile"
            env.update(
                GROWPANEL_SITE=f"http://127.0.0.1:{port}",
                GROWPANEL_GATEWAY=f"127.0.0.1:{gateway_port}",
                GROWPANEL_UPSTREAM=upstream,
                GROWPANEL_CADDY_ADMIN=f"127.0.0.1:{free_port()}",
            )
        process = subprocess.Popen(
            [binary, "run", "--adapter", "caddyfile", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(home / "caddy.log", "wb"),  # noqa: SIM115
        )
        self.running.append(process)
        wait_http(url_of(port, "/v1/customers"))
        return process, port

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with contextlib.suppress(ValueError):
            self.running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.running)):
            self.stop(process)


# -- load -------------------------------------------------------------------------------


def wrk(
    url: str,
    seconds: float,
    connections: int,
    *,
    key: str | None = None,
    script: Path | None = None,
    latency: bool = False,
) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    if key:
        command += ["-H", f"Authorization: Bearer {key}"]
    if script:
        command += ["-s", str(script)]
    if latency:
        command.append("--latency")
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    result = {
        "requests": float(re.search(r"(\d+) requests in", out)[1]),  # type: ignore[index]
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "non_2xx": float(m[1])
        if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out))
        else 0.0,
    }
    if latency:
        result.update(_percentiles(out))
    return result


def _percentiles(out: str) -> dict[str, float]:
    """p50 and p99 in ms from wrk's `--latency` distribution."""
    result = {}
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]
        result[f"p{pct}_ms"] = float(match[1]) * scale
    return result


def measured(pid: int, *args: Any, **kwargs: Any) -> dict[str, float]:
    """wrk(*args, **kwargs), plus the server's CPU per request and the steal share."""
    steal0, total0 = cpu_steal()
    cpu0 = cpu_seconds(pid)
    result = wrk(*args, **kwargs)
    cpu1 = cpu_seconds(pid)
    steal1, total1 = cpu_steal()
    result["cpu_us_per_request"] = (cpu1 - cpu0) / max(1.0, result["requests"]) * 1e6
    result["steal"] = (steal1 - steal0) / max(1, total1 - total0)
    return result


def rotating_script(path: Path, keys: list[str]) -> Path:
    """A wrk Lua script that sends each request with the next of `keys`, round and round."""
    lines = [
        "keys = {",
        *(f'"{k}",' for k in keys),
        "}",
        "local i = 0",
        "request = function()",
        "  i = i % #keys + 1",
        '  return wrk.format("GET", "/v1/customers", {["Authorization"] = "Bearer " .. keys[i]})',
        "end",
    ]
    path.write_text("\n".join(lines))
    return path
