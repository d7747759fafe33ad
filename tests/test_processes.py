"""Real `gateway serve` processes: revocation across processes, SIGTERM, secrets in logs."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from .conftest import Seed, UpstreamFactory
from .helpers import wait_for
from .reliability import Served, StartServe, serve  # noqa: F401

Starter = Callable[..., Awaitable[Served]]


@pytest.fixture
async def start_process(serve: StartServe, upstream: TestServer) -> Starter:  # noqa: F811
    """`await start_process(upstream_url=None, **env)`: a ready `gateway serve` in a child
    process (the test upstream unless `upstream_url`), with `env` on top."""

    def start(upstream_url: str | None = None, **env: str) -> Awaitable[Served]:
        return serve(upstream_url or str(upstream.make_url("")).rstrip("/"), **env)

    return start


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def status_of(session: aiohttp.ClientSession, base: str, key: str) -> int:
    async with session.get(f"{base}/v1/customers", headers=bearer(key)) as response:
        await response.read()
        return response.status


async def time_until_refused(
    session: aiohttp.ClientSession, base: str, key: str, started: float, timeout: float = 5.0
) -> float:
    while time.monotonic() - started < timeout:
        if await status_of(session, base, key) == 401:
            return time.monotonic() - started
    raise AssertionError(f"{base} still accepts the key after {timeout}s")


async def test_other_processes_refuse_regenerated_and_deleted_keys_within_a_second(
    start_process: Starter, seed: Seed
) -> None:
    first, second = await start_process(), await start_process()
    account = await seed.account()
    rolled, deleted = await seed.key(account), await seed.key(account)
    async with aiohttp.ClientSession() as session:
        for gateway in (first, second):
            for key in (rolled, deleted):
                assert await status_of(session, gateway.proxy_url, key.key) == 200

        started = time.monotonic()
        new = await seed.store.regenerate(account.account_id, rolled.id)
        assert new is not None
        for gateway in (first, second):
            assert await time_until_refused(session, gateway.proxy_url, rolled.key, started) < 1
            assert await status_of(session, gateway.proxy_url, new.key) == 200

        started = time.monotonic()
        assert await seed.store.delete(account.account_id, deleted.id)
        for gateway in (first, second):
            assert await time_until_refused(session, gateway.proxy_url, deleted.key, started) < 1


async def test_sigterm_finishes_in_flight_requests_then_flushes_and_exits_0(
    start_process: Starter, start_upstream: UpstreamFactory, seed: Seed, db: asyncpg.Connection
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.json_response({"slow": "done"})

    slow_upstream = await start_upstream({"/v1/slow": slow})
    try:
        gateway = await start_process(
            upstream_url=slow_upstream,
            # Only the shutdown flush can write last_used within this test.
            GATEWAY__USAGE__FLUSH_INTERVAL_SECONDS="3600",
        )
        key = await seed.key()
        async with aiohttp.ClientSession() as session:
            in_flight = asyncio.create_task(
                session.get(f"{gateway.proxy_url}/v1/slow", headers=bearer(key.key))
            )
            await asyncio.wait_for(entered.wait(), timeout=10)
            gateway.process.send_signal(signal.SIGTERM)

            # The listener closes: new connections are refused while the old one finishes.
            async def refusing() -> bool:
                try:
                    async with aiohttp.ClientSession() as other:
                        async with other.get(f"{gateway.proxy_url}/") as response:
                            await response.read()
                    return False
                except aiohttp.ClientConnectionError:
                    return True

            await wait_for(refusing, timeout=10)
            assert gateway.process.poll() is None
            release.set()
            response = await asyncio.wait_for(in_flight, timeout=10)
            assert response.status == 200
            assert await response.json() == {"slow": "done"}
            response.release()
        assert await asyncio.to_thread(gateway.process.wait, 15) == 0
    finally:
        release.set()
    assert await db.fetchval("SELECT last_used_at FROM api_key_last_used WHERE key_id = $1", key.id)
    assert (
        await db.fetchval(
            "SELECT sum(count) FROM key_usage_hourly WHERE key_id = $1 AND outcome = 'ok'", key.id
        )
        == 1
    )
    assert "stopped" in gateway.logs()


async def test_full_key_appears_nowhere_but_in_its_creation(
    start_process: Starter, seed: Seed, db: asyncpg.Connection
) -> None:
    """Not in the database, not in the logs, not in any later response."""
    gateway = await start_process()
    account = await seed.account()
    key = await seed.key(account)
    wrong, _ = seed.store.format.generate(key.public_id)
    secret = key.key[len("gp_") + 12 : -6]
    responses: list[str] = []
    async with aiohttp.ClientSession() as session:
        for path, authorization in [
            ("/v1/echo", f"Bearer {key.key}"),
            ("/v1/customers", f"Bearer {key.key}"),
            ("/v1/status/500", f"Bearer {key.key}"),
            ("/v1/echo", f"bearer   {key.key}  "),
            ("/v1/echo", f"Basic {key.key}"),
            ("/v1/echo", key.key),
            ("/v1/echo", f"Bearer {key.key}x"),
            ("/v1/echo", f"Bearer {wrong}"),
        ]:
            async with session.post(
                f"{gateway.proxy_url}{path}",
                headers={"Authorization": authorization},
                data=b"payload",
            ) as response:
                responses.append(repr(dict(response.headers)) + await response.text())
        new = await seed.store.regenerate(account.account_id, key.id)
        assert new is not None
        assert await status_of(session, gateway.proxy_url, key.key) == 401
    gateway.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.process.wait, 15) == 0

    tables = await db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    dump = []
    for table in tables:
        rows = await db.fetch(f'SELECT t::text AS row FROM "{table["table_name"]}" t')  # noqa: S608
        dump.extend(row["row"] for row in rows)
    database_text = "\n".join(dump)
    assert key.public_id in database_text  # the dump is real: the key's row is there
    logs = gateway.logs()
    assert '"access"' in logs or "gateway.access" in logs
    for secret_text in (key.key, secret, new.key, new.key[len("gp_") + 12 : -6]):
        assert secret_text not in database_text
        assert secret_text not in logs
        assert all(secret_text not in r for r in responses)


async def test_every_proxied_request_writes_one_json_access_line(
    start_process: Starter, seed: Seed
) -> None:
    gateway = await start_process()
    account = await seed.account()
    key = await seed.key(account)
    async with aiohttp.ClientSession() as session:
        assert await status_of(session, gateway.proxy_url, key.key) == 200
        async with session.get(f"{gateway.proxy_url}/v1/customers") as response:
            assert response.status == 401
            missing_id = response.headers["X-Request-Id"]
    gateway.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.process.wait, 15) == 0
    lines = [json.loads(line) for line in gateway.logs().splitlines() if line.startswith("{")]
    access = [
        line
        for line in lines
        if line["logger"] == "gateway.access" and line["path"] == "/v1/customers"
    ]
    assert len(access) == 2
    ok = access[0]
    assert {
        "time",
        "request_id",
        "account_id",
        "key_id",
        "method",
        "path",
        "status",
        "latency_ms",
        "client_ip",
        "outcome",
    } <= ok.keys()
    assert (ok["status"], ok["outcome"], ok["method"], ok["path"]) == (
        200,
        "ok",
        "GET",
        "/v1/customers",
    )
    assert ok["key_id"] == str(key.id) and ok["account_id"] == str(account.account_id)
    assert ok["client_ip"] == "127.0.0.1"
    refused = access[1]
    assert (refused["status"], refused["request_id"]) == (401, missing_id)
    assert refused["key_id"] is None
