"""Support for the production-topology tests (`test_haproxy`, `test_pgbouncer`,
`test_tls`, `test_prometheus`, `test_deploy`): real daemons from Debian's packages, which
`make test` installs, and `gateway serve` replicas that can be stopped and started again
on the same ports, as in a rolling restart.

A daemon that is not installed skips its test with the reason, except under CI=true,
where a missing component is a failure: CI must test the real thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway.embedded_pg import _make_traversable, _service_user, free_port

from .helpers import FAST_ARGON2, REPO_ROOT, gateway_command, served_config_file, wait_for

DEPLOY = REPO_ROOT / "deploy"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def require(program: str, package: str) -> str:
    """The path of `program`, or skip (fail under CI=true) naming the Debian package."""
    path = shutil.which(program, path=SBIN_PATH)
    if path is None:
        message = (
            f"{program} is not installed (Debian package {package!r}; `make test` installs it"
            " when it runs as root)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must run this test")
        pytest.skip(message)
    return path


class Daemon:
    """A foreground process with its output in a file, stopped at the end of the test."""

    def __init__(self, args: Sequence[str], log_path: Path, **popen: Any) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(args), stdout=log, stderr=subprocess.STDOUT, **popen
            )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in reversed(started):
            daemon.stop()


def start_pgbouncer(database_url: str, directory: Path, pool_size: int) -> tuple[Daemon, str]:
    """A PgBouncer in transaction pooling in front of `database_url`'s server, with
    `pool_size` server connections; the daemon and the URL through it."""
    program = require("pgbouncer", "pgbouncer")
    target = URL(database_url)
    directory.mkdir()
    port = free_port()
    server = f"host={target.host} port={target.port} user={target.user}"
    if target.password:
        server += f" password={target.password}"
    (directory / "userlist.txt").write_text(f'"{target.user}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = {server}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 500\n"
    )
    popen: dict[str, Any] = {}
    user = _service_user()  # PgBouncer refuses to run as root
    if user is not None:
        _make_traversable(directory)
        for path in (directory, *directory.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
        popen = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    daemon = Daemon(
        [program, str(directory / "pgbouncer.ini")], directory.with_suffix(".log"), **popen
    )
    return daemon, str(target.with_host("127.0.0.1").with_port(port))


class Replica:
    """One `gateway serve` on fixed ports, so that it can be restarted in place."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, workers: int = 1) -> None:
        self.name = name
        self.proxy_port = free_port()
        self.admin_port = free_port()
        self.workers = workers
        self.env = {
            **os.environ,
            "GATEWAY__PROXY__PORT": str(self.proxy_port),
            "GATEWAY__ADMIN__PORT": str(self.admin_port),
            "GATEWAY__KEYS__ARGON2__TIME_COST": str(FAST_ARGON2["time_cost"]),
            "GATEWAY__KEYS__ARGON2__MEMORY_KIB": str(FAST_ARGON2["memory_kib"]),
            "GATEWAY__USAGE__FLUSH_INTERVAL_SECONDS": "0.5",
            **env,
        }
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.scheme = "http"

    @property
    def proxy_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.proxy_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, *extra: str) -> None:
        args = ["--config", str(served_config_file()), "serve", *extra]
        if self.workers > 1:
            args += ["--workers", str(self.workers)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                gateway_command(*args), env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("logger") == "gateway.access":
                    lines.append(record)
        return lines

    async def wait_ready(self, timeout: float = 30, **client: Any) -> None:
        async def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, self.logs()
            try:
                async with aiohttp.ClientSession() as session:
                    url = f"{self.proxy_url}/_gateway/ready"
                    async with session.get(url, **client) as response:
                        return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_for(ready, timeout=timeout, interval=0.05)

    async def terminate(self, timeout: float = 40) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
