"""`gateway serve --workers 2`: two proxy processes on one port, supervised by a third."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.embedded_pg import free_port

from .conftest import Seed
from .helpers import FAST_ARGON2, REPO_ROOT, gateway_command, wait_for


class Workers:
    def __init__(self, process: subprocess.Popen[bytes], port: int, admin_port: int, log: Path):
        self.process = process
        self.proxy_url = f"http://127.0.0.1:{port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.log_path = log

    def log_lines(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def access_pids(self) -> set[int]:
        return {line["pid"] for line in self.log_lines() if line["logger"] == "gateway.access"}


@pytest.fixture
async def workers(
    database_url: str, upstream: TestServer, tmp_path: Path
) -> AsyncIterator[Workers]:
    port, admin_port = free_port(), free_port()
    log = tmp_path / "workers.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "GATEWAY__PROXY__UPSTREAM": str(upstream.make_url("")).rstrip("/"),
        "GATEWAY__PROXY__PORT": str(port),
        "GATEWAY__ADMIN__PORT": str(admin_port),
        "GATEWAY__KEYS__ARGON2__TIME_COST": str(FAST_ARGON2["time_cost"]),
        "GATEWAY__KEYS__ARGON2__MEMORY_KIB": str(FAST_ARGON2["memory_kib"]),
        # Only the shutdown flush writes last_used within these tests.
        "GATEWAY__USAGE__FLUSH_INTERVAL_SECONDS": "3600",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            gateway_command("--config", str(REPO_ROOT / "config.yaml"), "serve", "--workers", "2"),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Workers(process, port, admin_port, log)

    async def ready() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{running.admin_url}/readyz") as response:
                    return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    await wait_for(ready, timeout=30)
    yield running
    if process.poll() is None:
        process.kill()
        process.wait()


async def fresh_connection_status(base: str, key: str, path: str = "/v1/customers") -> int:
    """One request on a new connection, so SO_REUSEPORT may pick either worker."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async with s.get(f"{base}{path}", headers={"Authorization": f"Bearer {key}"}) as r:
            await r.read()
            return r.status


async def spread(workers: Workers, key: str, count: int = 40) -> list[int]:
    return [await fresh_connection_status(workers.proxy_url, key) for _ in range(count)]


async def stop(workers: Workers) -> int:
    workers.process.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(workers.process.wait, 30)


async def test_one_scrape_sums_every_worker(workers: Workers, seed: Seed) -> None:
    key = await seed.key()
    statuses = await spread(workers, key.key, 60)
    assert statuses == [200] * 60
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{workers.admin_url}/metrics") as response:
            text = await response.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ok = sum(
        s.value
        for s in families["gateway_requests"].samples
        if s.name == "gateway_requests_total" and s.labels["outcome"] == "ok"
    )
    assert ok == 60
    connected = sum(s.value for s in families["gateway_listener_connected"].samples)
    assert connected == 2
    await stop(workers)
    assert len(workers.access_pids()) == 2, "both workers should have served requests"


async def test_revocation_reaches_both_workers(workers: Workers, seed: Seed) -> None:
    account = await seed.account()
    key = await seed.key(account)
    assert await spread(workers, key.key) == [200] * 40
    assert await seed.store.delete(account.account_id, key.id)

    async def refused_everywhere() -> bool:
        return set(await spread(workers, key.key, 10)) == {401}

    await wait_for(refused_everywhere, timeout=2)
    await stop(workers)
    assert len(workers.access_pids()) == 2


async def test_both_workers_flush_last_used_on_sigterm(
    workers: Workers, seed: Seed, db: asyncpg.Connection
) -> None:
    account = await seed.account()
    keys = [await seed.key(account, name=f"k{i}") for i in range(20)]
    for key in keys:
        assert await fresh_connection_status(workers.proxy_url, key.key) == 200
    assert (
        await db.fetchval(
            "SELECT count(*) FROM api_keys k JOIN api_key_last_used l ON l.key_id = k.id"
            " WHERE k.account_id = $1",
            account.account_id,
        )
        == 0
    )
    assert await stop(workers) == 0
    assert len(workers.access_pids()) == 2
    assert (
        await db.fetchval(
            "SELECT count(*) FROM api_keys k JOIN api_key_last_used l ON l.key_id = k.id"
            " WHERE k.account_id = $1",
            account.account_id,
        )
        == 20
    )


async def test_a_dead_worker_is_started_again_and_logged(workers: Workers, seed: Seed) -> None:
    started = [line for line in workers.log_lines() if line["message"] == "worker started"]
    assert len(started) == 2
    os.kill(started[0]["worker_pid"], signal.SIGKILL)

    def restarted() -> bool:
        lines = workers.log_lines()
        return any(line["message"] == "worker exited; starting it again" for line in lines) and (
            len([line for line in lines if line["message"] == "worker started"]) == 3
        )

    await wait_for(restarted, timeout=15)
    key = await seed.key()

    async def serving() -> bool:
        try:
            return set(await spread(workers, key.key, 10)) == {200}
        except aiohttp.ClientConnectionError:
            return False

    await wait_for(serving, timeout=15)
    assert await stop(workers) == 0
