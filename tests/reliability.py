"""Support for the fault, hostile-input and soak tests (the `test_faults*`, `test_hostile*`,
`test_soak*` files): real `gateway serve` processes watched from the outside (their logs,
`/metrics`, `/proc`), and raw upstreams that misbehave on purpose or record byte for byte
what the gateway sent them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httptools
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.embedded_pg import free_port

from .helpers import FAST_ARGON2, gateway_command, served_config_file, wait_for

# Limits no test here means to reach: these tests are about faults, not rate limiting.
NO_LIMITS = {
    "GATEWAY__RATE_LIMITS__PER_MINUTE": "10000000",
    "GATEWAY__RATE_LIMITS__PER_DAY": "100000000",
}


# -- a real `gateway serve` --------------------------------------------------------------


@dataclasses.dataclass
class Served:
    """One `gateway serve` process (with `--workers N`, the supervisor)."""

    process: subprocess.Popen[bytes]
    proxy_port: int
    admin_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs().splitlines() if line.startswith("{")]

    def trouble(self) -> list[str]:
        """Lines that mean something went wrong: errors, tracebacks, anything not JSON."""
        bad = []
        for line in self.logs().splitlines():
            if not line.startswith("{") or json.loads(line)["level"] in ("error", "critical"):
                bad.append(line)
        return bad

    def fds(self) -> int:
        """Open file descriptors of the process (sockets included)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{self.admin_url}/metrics") as response:
                text = await response.text()
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for (sample, sample_labels), value in (await self.metrics()).items():
            if sample == name and set(labels.items()) <= set(sample_labels):
                total += value
        return total

    async def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, timeout)


StartServe = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(database_url: str, tmp_path: Path) -> AsyncIterator[StartServe]:
    """`await serve(upstream_url, workers=1, starting=None, **env)`: a ready `gateway serve`
    on this test's database, with the repository's config.yaml, fast argon2 and `env` on
    top; `await starting(served)` runs once the process is started, before it is ready."""
    started: list[Served] = []

    async def start(
        upstream_url: str,
        *,
        workers: int = 1,
        starting: Callable[[Served], Awaitable[None]] | None = None,
        **env: str,
    ) -> Served:
        proxy_port, admin_port = free_port(), free_port()
        log_path = tmp_path / f"serve-{len(started)}.log"
        environment = {
            **os.environ,
            "DATABASE_URL": database_url,
            "GATEWAY__PROXY__UPSTREAM": upstream_url,
            "GATEWAY__PROXY__PORT": str(proxy_port),
            "GATEWAY__ADMIN__PORT": str(admin_port),
            "GATEWAY__KEYS__ARGON2__TIME_COST": str(FAST_ARGON2["time_cost"]),
            "GATEWAY__KEYS__ARGON2__MEMORY_KIB": str(FAST_ARGON2["memory_kib"]),
            "GATEWAY__USAGE__FLUSH_INTERVAL_SECONDS": "0.5",
            **env,
        }
        environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
        args = ["--config", str(served_config_file()), "serve"]
        if workers > 1:
            args += ["--workers", str(workers)]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                gateway_command(*args), env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        served = Served(process, proxy_port, admin_port, log_path)
        started.append(served)
        if starting is not None:  # what the test does before the process is ready
            await starting(served)

        async def ready() -> bool:
            assert process.poll() is None, served.logs()
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"{served.admin_url}/readyz") as response:
                        if response.status != 200:
                            return False
                    async with session.get(f"{served.proxy_url}/") as response:
                        return response.status == 401
            except aiohttp.ClientConnectionError:
                return False

        await wait_for(ready, timeout=30)
        return served

    yield start
    for served in started:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait()


# -- raw upstreams -----------------------------------------------------------------------


@dataclasses.dataclass
class Received:
    """One request as the upstream parsed it, with the connection it came on."""

    connection: int
    method: str = ""
    target: str = ""
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


Behaviour = Callable[[Received, asyncio.Transport], Awaitable[None]]


def answer(body: bytes = b"ok", status: str = "200 OK", *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def ok(request: Received, transport: asyncio.Transport) -> None:
    transport.write(answer())


class RawUpstream:
    """An HTTP/1.1 upstream on plain asyncio: llhttp parses each request, a behaviour chosen
    by the longest matching path prefix answers it (default: 200 "ok", keep-alive).

    Every byte received is kept per connection (`raw`), so a test can show exactly what
    the gateway sent; `accepted` and `open` count connections.
    """

    def __init__(self, behaviours: dict[str, Behaviour] | None = None, record: bool = True) -> None:
        self.behaviours = sorted((behaviours or {}).items(), key=lambda kv: -len(kv[0]))
        self.record = record  # False: count requests and connections, keep no bytes
        self.received: list[Received] = []
        self.raw: list[bytearray] = []
        self.accepted = 0
        self.open = 0
        # The most connections open when a request arrived. Counted then, not at accept:
        # a connection the gateway has just closed is still open here until its end is
        # read, which can come after the accept of the connection that replaces it.
        self.most_open = 0
        self.requests = 0
        self.parse_errors = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.Transport] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RawUpstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self._transports):
            transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def behaviour_for(self, target: str) -> Behaviour:
        path = target.split("?", 1)[0]
        for prefix, behaviour in self.behaviours:
            if path.startswith(prefix):
                return behaviour
        return ok

    def respond(self, request: Received, transport: asyncio.Transport) -> asyncio.Task[None]:
        task = asyncio.create_task(self._respond(request, transport))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _respond(self, request: Received, transport: asyncio.Transport) -> None:
        with contextlib.suppress(ConnectionError):
            await self.behaviour_for(request.target)(request, transport)


class _Conn(asyncio.Protocol):
    def __init__(self, server: RawUpstream) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.index = len(server.raw)
        server.raw.append(bytearray())
        self.current: Received | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.accepted += 1
        self.server.open += 1
        self.server._transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open -= 1
        assert self.transport is not None
        self.server._transports.discard(self.transport)
        for task in self.tasks:  # a behaviour still waiting has nobody left to answer
            task.cancel()

    def data_received(self, data: bytes) -> None:
        if self.server.record:
            self.server.raw[self.index] += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.server.parse_errors += 1
            assert self.transport is not None
            self.transport.close()

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self.current = Received(self.index)

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.target += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.method = self.parser.get_method().decode()

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None and self.transport is not None
        self.server.requests += 1
        self.server.most_open = max(self.server.most_open, self.server.open)
        if self.server.record:
            self.server.received.append(self.current)
        task = self.server.respond(self.current, self.transport)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.current = None


@contextlib.asynccontextmanager
async def raw_upstream(
    behaviours: dict[str, Behaviour] | None = None, record: bool = True
) -> AsyncIterator[RawUpstream]:
    upstream = await RawUpstream(behaviours, record).start()
    try:
        yield upstream
    finally:
        await upstream.close()


# -- raw clients -------------------------------------------------------------------------


async def exchange(port: int, data: bytes, responses: int = 1, timeout: float = 10.0) -> bytes:
    """Send raw bytes and read until `responses` whole responses came, the server closed,
    or `timeout` passed; return every byte read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    complete = 0

    class _Counter:
        def on_message_complete(self) -> None:
            nonlocal complete
            complete += 1

    parser = httptools.HttpResponseParser(_Counter())
    chunks = []
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError, TimeoutError, httptools.HttpParserError):
            await writer.drain()
            async with asyncio.timeout(timeout):
                while complete < responses and (chunk := await reader.read(65536)):
                    chunks.append(chunk)
                    parser.feed_data(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def status_codes(raw: bytes) -> list[int]:
    """The status of every response in a raw byte stream, parsed with llhttp."""
    codes: list[int] = []

    class _Statuses:
        def on_headers_complete(self) -> None:
            codes.append(parser.get_status_code())

    parser = httptools.HttpResponseParser(_Statuses())
    with contextlib.suppress(httptools.HttpParserError):
        parser.feed_data(raw)
    return codes


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def proc_fds_settle(read: Callable[[], int], at_most: int, timeout: float = 15) -> None:
    """Wait until `read()` (a count of fds, tasks, connections) is at most `at_most`."""
    await wait_for(lambda: read() <= at_most, timeout=timeout, interval=0.1)


def socket_peers(pid: int | str = "self", accepted_on: tuple[int, ...] = ()) -> dict[str, int]:
    """How many of the process's TCP sockets are connected to each remote port
    ("listen:<port>" for listening sockets, "accepted:<port>" for connections accepted on
    one of `accepted_on`), read from /proc: sockets by inode, inodes in /proc/net/tcp."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    peers: dict[str, int] = {}
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] not in inodes:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[3] == "0A":
                name = f"listen:{local_port}"
            elif local_port in accepted_on:
                name = f"accepted:{local_port}"
            else:
                name = str(remote_port)
            peers[name] = peers.get(name, 0) + 1
    return peers
