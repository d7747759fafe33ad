"""Clients that misbehave, against a real `gateway serve` watched through /proc (SPEC §8):
slow request heads (slowloris), thousands of idle keep-alive connections, uploads and
downloads abandoned half way, a reader that stops reading. None of them may leak a file
descriptor or an upstream connection, grow memory without bound, or keep other clients
from being served.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import time

import aiohttp
from aiohttp.test_utils import TestServer
from yarl import URL

from .conftest import Seed
from .helpers import wait_for
from .reliability import NO_LIMITS, Served, StartServe, bearer, serve, socket_peers  # noqa: F401

KEEPALIVE = 6.0  # server.keepalive_timeout_seconds in these tests


async def served_ok(gateway: Served, key: str, n: int) -> list[int]:
    """`n` requests on fresh connections, as new clients would make them."""
    statuses = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(n):
            async with session.get(f"{gateway.proxy_url}/v1/customers", headers=bearer(key)) as r:
                await r.read()
                statuses.append(r.status)
    return statuses


async def open_connections(port: int, n: int) -> list[asyncio.StreamWriter]:
    writers: list[asyncio.StreamWriter] = []
    for start in range(0, n, 100):  # in batches, within the listen backlog
        pairs = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(min(100, n - start)))
        )
        writers += [writer for _, writer in pairs]
    return writers


def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.transport.abort()


def own_fds(gateway: Served, upstream: TestServer, database_url: str) -> int:
    """The gateway's fds less its pooled upstream and database connections."""
    peers = socket_peers(gateway.pid)
    pooled = peers.get(str(upstream.port), 0) + peers.get(str(URL(database_url).port), 0)
    return gateway.fds() - pooled


async def test_slow_heads_and_idle_connections_are_closed_and_others_are_served(
    serve: StartServe,  # noqa: F811
    seed: Seed,
    upstream: TestServer,
    database_url: str,
) -> None:
    gateway = await serve(
        str(upstream.make_url("")).rstrip("/"),
        **NO_LIMITS,
        GATEWAY__SERVER__KEEPALIVE_TIMEOUT_SECONDS=str(KEEPALIVE),
    )
    key = (await seed.key()).key
    assert await served_ok(gateway, key, 20) == [200] * 20
    base_fds, base_rss = own_fds(gateway, upstream, database_url), gateway.rss_kib()

    # 1,000 connections that never send a byte, 1,000 that made one request and now idle
    # (keep-alive), and 200 slowloris heads that trickle a header line every 0.3 s.
    silent = await open_connections(gateway.proxy_port, 1000)
    idle = await open_connections(gateway.proxy_port, 1000)
    request = f"GET /v1/customers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
    for writer in idle:
        writer.write(request.encode())
    slow = await open_connections(gateway.proxy_port, 200)
    opened = time.monotonic()
    closed_after: list[float] = []

    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /v1/customers HTTP/1.1\r\nHost: x\r\n")
        try:
            for i in range(100):  # 30 s of headers, far longer than the timeout
                writer.write(f"X-Slow-{i}: 1\r\n".encode())
                await writer.drain()
                await asyncio.sleep(0.3)
        except ConnectionError:
            closed_after.append(time.monotonic() - opened)
            return
        raise AssertionError("a slow head was never cut off")

    trickles = [asyncio.create_task(trickle(writer)) for writer in slow]

    def clients() -> int:
        """Connections the gateway holds from clients."""
        peers = socket_peers(gateway.pid, accepted_on=(gateway.proxy_port,))
        return peers.get(f"accepted:{gateway.proxy_port}", 0)

    try:
        await wait_for(lambda: clients() >= 2200, timeout=KEEPALIVE - 3)
        held, held_rss = clients(), gateway.rss_kib()
        # Others are served meanwhile, on new connections.
        assert await served_ok(gateway, key, 50) == [200] * 50
        # Every one of them is closed by the gateway once the keep-alive timeout is up,
        # slow heads included, though they never stop sending.
        await wait_for(lambda: clients() == 0, timeout=KEEPALIVE + 10)
        results = await asyncio.gather(*trickles, return_exceptions=True)
    finally:
        close_all(silent + idle + slow)
        for task in trickles:
            task.cancel()
    assert [r for r in results if r is not None] == []
    assert len(closed_after) == 200
    assert max(closed_after) < KEEPALIVE + 8
    per_connection = (held_rss - base_rss) * 1024 / held
    print(
        f"\nidle connections: {held} held, RSS +{held_rss - base_rss} KiB"
        f" ({per_connection / 1024:.1f} KiB each), all closed after the timeout"
    )
    assert per_connection < 64 * 1024
    # Beyond the upstream keep-alive pool and the database pool, nothing is left open.
    assert own_fds(gateway, upstream, database_url) <= base_fds
    assert await served_ok(gateway, key, 5) == [200] * 5
    assert await gateway.terminate() == 0
    assert gateway.trouble() == []


def upstream_connections(gateway: Served, upstream: TestServer) -> int:
    return socket_peers(gateway.pid).get(str(upstream.port), 0)


def abort(writer: asyncio.StreamWriter, reset: bool) -> None:
    """Close at once: with a TCP reset, or with a plain FIN."""
    if reset:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort() if reset else writer.close()


async def test_uploads_and_downloads_abandoned_half_way_leave_nothing_behind(
    serve: StartServe,  # noqa: F811
    seed: Seed,
    upstream: TestServer,
    database_url: str,
) -> None:
    gateway = await serve(str(upstream.make_url("")).rstrip("/"), **NO_LIMITS)
    key = (await seed.key()).key
    assert await served_ok(gateway, key, 10) == [200] * 10
    base_fds, base_rss = own_fds(gateway, upstream, database_url), gateway.rss_kib()
    port = gateway.proxy_port

    async def upload(i: int) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Length: 5000000\r\n\r\n".encode()
        )
        writer.write(b"u" * 200_000)
        await writer.drain()
        abort(writer, reset=i % 2 == 0)

    async def download(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET /v1/data/big?bytes=20000000 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {key}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        await reader.readexactly(100_000)
        abort(writer, reset=i % 2 == 0)

    async def abandon(batches: int) -> int:
        for batch in range(batches):  # 50 uploads and 50 downloads at a time
            await asyncio.gather(*(upload(batch * 50 + i) for i in range(50)))
            await asyncio.gather(*(download(batch * 50 + i) for i in range(50)))
        # Nothing is held once the gateway has noticed: no client socket, no upstream
        # one beyond the idle keep-alive pool.
        await wait_for(lambda: own_fds(gateway, upstream, database_url) <= base_fds, timeout=15)
        await wait_for(lambda: upstream_connections(gateway, upstream) <= 2, timeout=15)
        return gateway.rss_kib()

    rss = [await abandon(2)]  # the first ones warm the allocator up
    for _ in range(3):
        rss.append(await abandon(4))
    growth = [after - before for before, after in itertools.pairwise(rss)]
    print(
        f"\nabandoned transfers: 1,400, RSS +{rss[0] - base_rss} KiB after 200,"
        f" then {growth} KiB for each 400 more"
    )
    # Kept, 400 abandoned 5 MB uploads and 20 MB downloads would add well over 100 MB a
    # round. RSS also moves without a leak: the allocator jumps by up to ~40 MB in a round
    # now and then (measured; tracemalloc in the gateway saw its Python heap grow 53 KiB
    # over 1,200 abandoned transfers while RSS grew 44 MB). Memory that is released stays
    # flat in some round; retained transfers would grow it in every one.
    assert min(growth) < 24 * 1024, growth
    assert await served_ok(gateway, key, 5) == [200] * 5
    assert await gateway.terminate() == 0
    assert gateway.trouble() == []


async def test_a_client_that_stops_reading_does_not_hold_an_upstream_connection(
    serve: StartServe,  # noqa: F811
    seed: Seed,
    upstream: TestServer,
) -> None:
    """Slow-read: the client takes the head of a 200 MB download and then reads nothing.
    After proxy.timeout_seconds without progress the gateway drops it, and with it the
    upstream connection; memory meanwhile holds a bounded part of the body."""
    gateway = await serve(
        str(upstream.make_url("")).rstrip("/"), **NO_LIMITS, GATEWAY__PROXY__TIMEOUT_SECONDS="2"
    )
    key = (await seed.key()).key
    assert await served_ok(gateway, key, 5) == [200] * 5
    base_rss = gateway.rss_kib()
    stalled = []
    for _ in range(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.proxy_port)
        writer.transport.set_write_buffer_limits(0)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        writer.write(
            f"GET /v1/data/big?bytes=200000000 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {key}\r\n\r\n".encode()
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        reader._transport.pause_reading()  # type: ignore[attr-defined]  # stop reading
        stalled.append((reader, writer))
    try:
        await wait_for(lambda: upstream_connections(gateway, upstream) >= 10, timeout=10)
        peak = gateway.rss_kib() - base_rss
        assert await served_ok(gateway, key, 5) == [200] * 5  # others are served meanwhile
        await wait_for(lambda: upstream_connections(gateway, upstream) <= 1, timeout=20)
    finally:
        for _, writer in stalled:
            writer.transport.abort()
    print(f"\nstalled readers: 10, RSS +{peak} KiB at most while held")
    assert peak < 64 * 1024
    lines = [line for line in gateway.log_lines() if line.get("path") == "/v1/data/big"]
    assert len(lines) == 10 and {line["status"] for line in lines} == {499}
    assert await gateway.terminate() == 0
    assert gateway.trouble() == []
