"""Metrics, readiness and logs, read the way Prometheus and an operator read them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from admin.app import create_admin_app
from admin.health import LISTENER_CHECK
from gateway.app import LISTENER
from gateway.config import Config

from .conftest import Cluster, Seed
from .helpers import key_status, wait_for

# SPEC §7, family by family (names without the _total / _bucket suffixes).
SPEC_FAMILIES = [
    "gateway_requests",  # by outcome and status class
    "gateway_request_duration_seconds",
    "gateway_upstream_duration_seconds",
    "gateway_auth",  # by reason
    "gateway_key_cache_hits",
    "gateway_key_cache_misses",
    "gateway_key_cache_entries",
    "gateway_key_cache_evictions",
    "gateway_argon2_verifications",
    "gateway_argon2_duration_seconds",
    "gateway_flush_duration_seconds",
    "gateway_flush_pending",
    "gateway_flush_failures",
    "gateway_db_pool_connections_in_use",
    "gateway_notifications",
    "gateway_listener_reconnects",
    "gateway_upstream_errors",
    "gateway_admin_requests",
    "gateway_key_lifecycle_events",
]


@pytest.fixture
async def admin(config: Config, gateway: TestServer) -> AsyncIterator[TestServer]:
    """The admin app in the same process as the proxy, as `gateway serve` runs them."""
    app = create_admin_app(config)
    listener = gateway.app[LISTENER]
    app[LISTENER_CHECK] = lambda: None if listener.connected.is_set() else "disconnected"
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def scrape(admin: TestServer) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(admin.make_url("/metrics")) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def series_count(families: dict[str, list[tuple[str, dict[str, str], float]]]) -> int:
    return sum(len(samples) for name, samples in families.items() if name.startswith("gateway_"))


async def test_every_spec_metric_family_is_exported(
    admin: TestServer, gateway: TestServer, seed: Seed
) -> None:
    key = await seed.key()
    assert await key_status(gateway, key.key) == 200
    families = await scrape(admin)
    missing = [name for name in SPEC_FAMILIES if name not in families]
    assert missing == []


async def test_no_label_carries_a_key_a_key_id_or_a_path(
    admin: TestServer, gateway: TestServer, seed: Seed
) -> None:
    """1,000 distinct keys and 1,000 distinct paths leave the number of series unchanged."""
    account = await seed.account()
    first = await seed.key(account)
    fmt = seed.store.format
    # Every kind of outcome once, so that later requests create no new label values.
    assert await key_status(gateway, first.key) == 200
    assert await key_status(gateway, first.key, "/v1/status/404") == 404
    assert await key_status(gateway, fmt.generate()[0]) == 401
    assert await key_status(gateway, "not-a-key") == 401
    await scrape(admin)  # a scrape counts itself: the second one is the baseline
    before = await scrape(admin)

    keys = [await seed.key(account, name=f"key {i}") for i in range(1000)]
    async with aiohttp.ClientSession() as session:
        for i, key in enumerate(keys):
            async with session.get(
                gateway.make_url(f"/v1/echo/{i}/{key.public_id}"),
                headers={"Authorization": f"Bearer {key.key}"},
            ) as response:
                await response.read()
                assert response.status == 200
    after = await scrape(admin)
    assert series_count(after) == series_count(before)
    text_values = {
        str(v) for samples in after.values() for _, labels, _ in samples for v in labels.values()
    }
    assert not any(
        key.public_id in value or str(key.id) in value for key in keys[:50] for value in text_values
    )


async def test_readyz_turns_503_when_postgres_stops_and_back(
    admin: TestServer, cluster: Cluster
) -> None:
    async def readyz() -> tuple[int, dict[str, object]]:
        async with aiohttp.ClientSession() as session:
            async with session.get(admin.make_url("/readyz")) as response:
                return response.status, await response.json()

    status, body = await readyz()
    assert status == 200, body
    assert body["checks"] == {"database": "ok", "migrations": "ok", "notifications": "ok"}
    cluster.stop()
    try:
        status, body = await readyz()
        assert status == 503
        assert str(body["checks"]["database"]).startswith("unreachable")  # type: ignore[index]

        async def listener_noticed() -> bool:
            _, body = await readyz()
            return body["checks"]["notifications"] != "ok"  # type: ignore[index]

        await wait_for(listener_noticed, timeout=15)
    finally:
        cluster.start()

    async def ready() -> bool:
        return (await readyz())[0] == 200

    await wait_for(ready, timeout=20)
