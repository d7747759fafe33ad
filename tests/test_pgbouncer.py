"""Through a real PgBouncer in transaction pooling (Debian's `pgbouncer`): with
`database.pgbouncer: true` and LISTEN on a direct connection (`database.listen_url`),
every core flow works, and revocation reaches every process within a second.

PgBouncer gets fewer server connections than the gateways have clients, so consecutive
statements of one client really do land on different server connections.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from .conftest import Seed
from .helpers import wait_for
from .topology import Daemon, Replica, start_pgbouncer

PgBouncerFactory = Callable[[int], str]


@pytest.fixture
def pgbouncer(database_url: str, tmp_path: Path) -> Iterator[PgBouncerFactory]:
    """`pgbouncer(pool_size)`: a PgBouncer in transaction pooling in front of this test's
    database, with `pool_size` server connections; returns the URL through it."""
    started: list[Daemon] = []

    def start(pool_size: int) -> str:
        daemon, url = start_pgbouncer(
            database_url, tmp_path / f"pgbouncer-{len(started)}", pool_size
        )
        started.append(daemon)
        return url

    yield start
    for daemon in started:
        daemon.stop()


async def connected(url: str, timeout: float = 10) -> None:
    async def accepts() -> bool:
        try:
            conn = await asyncpg.connect(url, statement_cache_size=0)
        except (OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    await wait_for(accepts, timeout=timeout, interval=0.05)


# One gateway process's statements, in a process of its own: asyncpg names its prepared
# statements from a per-process counter, so two processes name theirs alike.
_ONE_PROCESS = """
import asyncio, sys
from gateway.config import DatabaseConfig
from gateway.db import connect

async def main(url, pgbouncer, listen_url):
    conn = await connect(DatabaseConfig(url=url, pgbouncer=pgbouncer, listen_url=listen_url))
    try:
        for _ in range(2):
            await conn.fetchval("SELECT count(*) FROM api_keys WHERE id = $1", None)
    finally:
        await conn.close()

asyncio.run(main(sys.argv[1], sys.argv[2] == "true", sys.argv[3]))
"""


def one_process(url: str, pgbouncer: bool, listen_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _ONE_PROCESS, url, str(pgbouncer).lower(), listen_url],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_pgbouncer_setting_is_what_keeps_statements_safe(
    pgbouncer: PgBouncerFactory, database_url: str
) -> None:
    """Processes sharing PgBouncer's one server connection: asyncpg's named statements
    collide there unless `database.pgbouncer` turns them off."""
    url = pgbouncer(1)
    await connected(url)
    assert one_process(url, False, "").returncode == 0
    second = one_process(url, False, "")
    assert second.returncode != 0 and "prepared statement" in second.stderr, second.stderr
    for _ in range(2):
        run = one_process(url, True, database_url)
        assert run.returncode == 0, run.stderr


async def test_core_flows_through_pgbouncer_with_revocation_within_a_second(
    pgbouncer: PgBouncerFactory,
    database_url: str,
    seed: Seed,
    db: asyncpg.Connection,
    upstream: TestServer,
    tmp_path: Path,
) -> None:
    url = pgbouncer(2)
    await connected(url)
    env = {
        "DATABASE_URL": url,
        "GATEWAY__DATABASE__PGBOUNCER": "true",
        "GATEWAY__DATABASE__LISTEN_URL": database_url,
        "GATEWAY__PROXY__UPSTREAM": str(upstream.make_url("")).rstrip("/"),
        "GATEWAY__RATE_LIMITS__SYNC_INTERVAL_SECONDS": "0.2",
    }
    replicas = [Replica(f"replica{i}", env, tmp_path) for i in (1, 2)]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            await replica.wait_ready()
        account = await seed.account()
        owner = {"Authorization": f"Bearer {account.token}"}
        admin = replicas[0].admin_url
        async with aiohttp.ClientSession() as session:

            async def call(method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
                async with session.request(method, f"{admin}{path}", headers=owner, **kw) as r:
                    return r.status, (await r.json() if r.status != 204 else {})

            async def status(base: str, key: str) -> int:
                headers = {"Authorization": f"Bearer {key}"}
                async with session.get(f"{base}/v1/customers", headers=headers) as response:
                    await response.read()
                    return response.status

            code, created = await call(
                "POST", "/v1/keys", json={"name": "pooled", "rate_limit": {"per_minute": 8}}
            )
            assert code == 201, created
            key, key_id = created["key"], created["id"]
            for replica in replicas:
                for _ in range(3):
                    assert await status(replica.proxy_url, key) == 200

            # Last used and the shared rate-limit counters are written through PgBouncer.
            async def flushed() -> bool:
                _, got = await call("GET", f"/v1/keys/{key_id}")
                counted = await db.fetchval(
                    "SELECT coalesce(sum(count), 0) FROM rate_limit_counters"
                    " WHERE window_name = 'day'"
                )
                return got["last_used_at"] is not None and counted == 6  # both processes'

            await wait_for(flushed, timeout=10)
            # The per-minute limit of 8 still refuses (its own 3 and up to 5 more).
            statuses = [await status(replicas[0].proxy_url, key) for _ in range(6)]
            assert 429 in statuses, statuses

            # Regenerate through PgBouncer: every process refuses the old secret within 1 s.
            started = time.monotonic()
            code, rolled = await call("POST", f"/v1/keys/{key_id}/regenerate")
            assert code == 200
            for replica in replicas:
                while await status(replica.proxy_url, key) != 401:
                    assert time.monotonic() - started < 1.0, f"{replica.name} still accepts"
            code, _ = await call("DELETE", f"/v1/keys/{key_id}")
            assert code == 204
            for replica in replicas:
                assert await status(replica.proxy_url, rolled["key"]) == 401

            async with session.get(f"{admin}/readyz") as response:
                assert response.status == 200, await response.text()
        for replica in replicas:
            assert await replica.terminate() == 0
            logs = replica.logs()
            assert "prepared statement" not in logs, logs
            assert '"level": "error"' not in logs, logs
    finally:
        for replica in replicas:
            replica.kill()
