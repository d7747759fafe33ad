"""Upstream faults (SPEC §8): refused, slow, cut mid-body, garbage — each gets its 502 or
504 in JSON, other requests go on, and a thousand faults leave nothing behind: no upstream
connection, connection slot, task or file descriptor, and no memory.

The gateway runs in this process (real sockets, real Postgres) so that its asyncio tasks,
its upstream pool and its allocations can be counted directly.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time
import tracemalloc
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from yarl import URL

from gateway.app import UPSTREAM
from gateway.config import Config
from gateway.embedded_pg import free_port
from gateway.proxy import Call
from gateway.upstream import UpstreamPool
from gateway.upstream_wire import Connection, UpstreamResponse

from .conftest import GatewayFactory, Seed
from .helpers import make_config, wait_for
from .reliability import Received, answer, bearer, raw_upstream, socket_peers

TIMEOUT = 1.0  # proxy.timeout_seconds in these tests


async def never_answers(request: Received, transport: asyncio.Transport) -> None:
    await asyncio.Event().wait()  # until the gateway gives up and closes


async def cut_mid_body(request: Received, transport: asyncio.Transport) -> None:
    transport.write(answer(b"x" * 1000)[:-990])  # the head and 10 of 1,000 bytes
    transport.close()


async def cut_mid_big_body(request: Received, transport: asyncio.Transport) -> None:
    # Large enough to be streamed: the head goes to the client before the cut.
    transport.write(answer(b"x" * 1_000_000)[:-900_000])
    transport.close()


async def garbage(request: Received, transport: asyncio.Transport) -> None:
    transport.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")


async def hang_up(request: Received, transport: asyncio.Transport) -> None:
    transport.close()


async def reset(request: Received, transport: asyncio.Transport) -> None:
    transport.abort()


FAULTS = {
    "/v1/slow": never_answers,
    "/v1/cut": cut_mid_body,
    "/v1/bigcut": cut_mid_big_body,
    "/v1/garbage": garbage,
    "/v1/hangup": hang_up,
    "/v1/reset": reset,
}


def fault_config(config: Config, upstream_url: str, timeout: float = TIMEOUT) -> Config:
    return make_config(
        config.database.url,
        upstream_url,
        proxy={"timeout_seconds": timeout, "max_upstream_connections": 50},
        rate_limits={"per_minute": 1_000_000, "per_day": 10_000_000},
    )


async def call(session: aiohttp.ClientSession, url: str, key: str) -> tuple[int, str | None]:
    """Status and gateway error code; a response cut short is (status, "cut")."""
    async with session.get(url, headers=bearer(key)) as response:
        try:
            body = await response.read()
        except aiohttp.ClientPayloadError:
            return response.status, "cut"
        if response.content_type == "application/json" and response.status >= 400:
            return response.status, json.loads(body)["error"]["code"]
        return response.status, None


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/slow", 504, "upstream_timeout"),
        ("/v1/garbage", 502, "upstream_unavailable"),
        ("/v1/hangup", 502, "upstream_unavailable"),
        ("/v1/reset", 502, "upstream_unavailable"),
        # Once the head is out, all the gateway can do is cut the connection.
        ("/v1/bigcut", 200, "cut"),
        ("/v1/fine", 200, None),
    ],
)
async def test_each_upstream_fault_gets_its_answer(
    start_gateway: GatewayFactory, config: Config, seed: Seed, path: str, status: int, code: str
) -> None:
    async with raw_upstream(FAULTS) as upstream:
        gateway = await start_gateway(fault_config(config, upstream.url))
        key = await seed.key()
        async with aiohttp.ClientSession() as session:
            assert await call(session, str(gateway.make_url(path)), key.key) == (status, code)


async def test_a_small_body_cut_short_never_looks_complete(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    """A short answer may be read whole before it is relayed (then 502) or streamed (then
    cut); either way the client never gets a 200 that looks complete."""
    async with raw_upstream(FAULTS) as upstream:
        gateway = await start_gateway(fault_config(config, upstream.url))
        key = await seed.key()
        async with aiohttp.ClientSession() as session:
            result = await call(session, str(gateway.make_url("/v1/cut")), key.key)
        assert result in {(502, "upstream_unavailable"), (200, "cut")}


async def test_refused_upstream_is_502(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    gateway = await start_gateway(fault_config(config, f"http://127.0.0.1:{free_port()}"))
    key = await seed.key()
    async with aiohttp.ClientSession() as session:
        url = str(gateway.make_url("/v1/customers"))
        assert await call(session, url, key.key) == (502, "upstream_unavailable")


async def test_a_slow_upstream_holds_up_nobody_else(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    """While 20 requests wait on a silent upstream, 100 others are served; then each of the
    20 gets its 504 once the timeout has passed, not before."""
    async with raw_upstream(FAULTS) as upstream:
        slow_config = make_config(
            config.database.url,
            upstream.url,
            proxy={"timeout_seconds": 2.0},
            rate_limits={"per_minute": 1_000_000, "per_day": 10_000_000},
        )
        gateway = await start_gateway(slow_config)
        key = await seed.key()
        finished: list[str] = []

        async def slow(session: aiohttp.ClientSession) -> tuple[int, str | None, float]:
            started = time.monotonic()
            result = await call(session, str(gateway.make_url("/v1/slow")), key.key)
            finished.append("slow")
            return (*result, time.monotonic() - started)

        async def fast(session: aiohttp.ClientSession) -> tuple[int, str | None]:
            result = await call(session, str(gateway.make_url("/v1/fast")), key.key)
            finished.append("fast")
            return result

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            slow_calls = [asyncio.create_task(slow(session)) for _ in range(20)]
            await wait_for(lambda: len(upstream.received) == 20)
            fast_results = await asyncio.gather(*(fast(session) for _ in range(100)))
            slow_results = await asyncio.gather(*slow_calls)
        assert fast_results == [(200, None)] * 100
        assert finished[:100] == ["fast"] * 100  # every fast one before any slow one
        for status, code, elapsed in slow_results:
            assert (status, code) == (504, "upstream_timeout")
            assert 2.0 <= elapsed < 10.0


def fds_but_database(database_url: str) -> int:
    """This process's open fds, less its Postgres connections (pools grow under load and
    keep idle connections for a minute: not a leak)."""
    port = URL(database_url).port
    return len(os.listdir("/proc/self/fd")) - socket_peers().get(str(port), 0)


LEAK_TYPES = (
    Connection,
    UpstreamResponse,
    Call,
    web.BaseRequest,
    web.StreamResponse,
    RequestHandler,
)


def live_objects() -> dict[str, int]:
    """How many objects of each type that belongs to one request or connection are alive."""
    gc.collect()
    counts = dict.fromkeys((t.__name__ for t in LEAK_TYPES), 0)
    for obj in gc.get_objects():
        for kind in LEAK_TYPES:
            if isinstance(obj, kind):
                counts[kind.__name__] += 1
    return counts


@pytest.fixture
def quiet_gateway_logs() -> Iterator[None]:
    """pytest keeps every captured log record in memory, which would look like a leak."""
    loggers = [logging.getLogger(name) for name in ("gateway", "aiohttp", "asyncio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


async def test_a_thousand_faults_leave_no_connection_task_fd_or_memory_behind(
    start_gateway: GatewayFactory, config: Config, seed: Seed, quiet_gateway_logs: None
) -> None:
    async with raw_upstream(FAULTS, record=False) as upstream:
        # Silent upstreams get a short timeout; the other faults a long one, so that a
        # loaded loop can never turn their 502 into a 504.
        slow = await start_gateway(fault_config(config, upstream.url, timeout=0.5))
        gateway = await start_gateway(fault_config(config, upstream.url, timeout=10))
        refused = await start_gateway(
            fault_config(config, f"http://127.0.0.1:{free_port()}", timeout=10)
        )
        key = await seed.key()
        servers = [slow, gateway, refused]
        pools: list[UpstreamPool] = [server.app[UPSTREAM] for server in servers]
        kinds = [
            (slow, "/v1/slow", (504, "upstream_timeout")),
            (gateway, "/v1/bigcut", (200, "cut")),
            (gateway, "/v1/garbage", (502, "upstream_unavailable")),
            (gateway, "/v1/hangup", (502, "upstream_unavailable")),
            (gateway, "/v1/reset", (502, "upstream_unavailable")),
            (refused, "/v1/customers", (502, "upstream_unavailable")),
        ]

        async def faults(n: int) -> dict[tuple[int, str | None], int]:
            seen: dict[tuple[int, str | None], int] = {}
            # Waiting on a silent upstream costs no CPU: those get more room.
            gates = {"/v1/slow": asyncio.Semaphore(200)}
            gate = asyncio.Semaphore(20)

            async def one(i: int, session: aiohttp.ClientSession) -> None:
                server, path, expected = kinds[i % len(kinds)]
                async with gates.get(path, gate):
                    result = await call(session, str(server.make_url(path)), key.key)
                assert result == expected, (path, result)
                seen[result] = seen.get(result, 0) + 1

            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                await asyncio.gather(*(one(i, session) for i in range(n)))
            return seen

        async def settled() -> tuple[int, int, int, list[int]]:
            gc.collect()
            return (
                len(asyncio.all_tasks()),
                fds_but_database(config.database.url),
                upstream.open,
                [pool.open_connections for pool in pools],
            )

        async def fine() -> None:
            async with aiohttp.ClientSession() as session:
                url = str(gateway.make_url("/v1/fine"))
                assert await call(session, url, key.key) == (200, None)

        await faults(60)  # warm-up: caches, prometheus series, first allocations
        await fine()
        await asyncio.sleep(0)
        tracemalloc.start(1)
        try:
            before = await settled()
            objects_before = live_objects()
            first = tracemalloc.take_snapshot()
            counts = await faults(1000)
            await fine()

            async def back_to(state: tuple[int, int, int, list[int]]) -> bool:
                now = await settled()
                return now[0] <= state[0] and now[1] <= state[1] and now[2] <= state[2]

            try:
                await wait_for(lambda: back_to(before), timeout=15, interval=0.1)
            except AssertionError:
                tasks = sorted(t.get_name() for t in asyncio.all_tasks())
                raise AssertionError(
                    f"tasks, fds, upstream connections: {before} before, {await settled()}"
                    f" after; tasks now: {tasks}; sockets: {socket_peers()}"
                ) from None
            after = await settled()
            second = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        assert sum(counts.values()) == 1000
        # The only upstream connections left are idle keep-alive ones, within the limit,
        # and every connection slot has come back.
        assert after[3][1] <= before[3][1] + 1  # at most one kept alive for /v1/fine
        assert after[3][0] == after[3][2] == 0
        for pool in pools:
            assert pool._slots._value == 50, "a connection slot leaked"
        # What the test's own code allocates is not the gateway's.
        ignore = [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "*/tests/*"),
        ]
        growth = sum(
            stat.size_diff
            for stat in second.filter_traces(ignore).compare_to(
                first.filter_traces(ignore), "filename"
            )
        )
        # Dicts that grew to hold many connections at once keep their size; a body or a
        # request kept per fault would be far over this.
        assert growth < 1024 * 1024, f"memory grew by {growth} bytes over 1,000 faults"
        objects_after = live_objects()
        assert all(objects_after[k] <= n for k, n in objects_before.items()), objects_after


async def test_waiting_for_an_upstream_connection_counts_toward_the_timeout(
    start_gateway: GatewayFactory, config: Config, seed: Seed
) -> None:
    """With every upstream connection busy on a silent upstream, a request that cannot get
    one still gets its 504 within the timeout, and no more connections are opened."""
    async with raw_upstream({"/v1/slow": never_answers}) as raw:
        bounded = make_config(
            config.database.url,
            raw.url,
            proxy={"timeout_seconds": 1.0, "max_upstream_connections": 4},
            rate_limits={"per_minute": 1_000_000, "per_day": 10_000_000},
        )
        gateway = await start_gateway(bounded)
        key = await seed.key()

        async def timed() -> tuple[tuple[int, str | None], float]:
            started = time.monotonic()
            result = await call(session, str(gateway.make_url("/v1/slow")), key.key)
            return result, time.monotonic() - started

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            results = await asyncio.gather(*(timed() for _ in range(12)))
        assert raw.most_open <= 4
        assert {result for result, _ in results} == {(504, "upstream_timeout")}
        # Queued behind three rounds of busy connections, the last would wait 3 s.
        assert max(elapsed for _, elapsed in results) < 2.0
        assert gateway.app[UPSTREAM]._slots._value == 4
