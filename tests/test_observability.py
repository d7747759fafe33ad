"""Metrics, readiness and logs, read the way Prometheus and an operator read them."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from admin.app import create_admin_app
from admin.health import LISTENER_CHECK, registry
from gateway import metrics
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


def value(
    families: dict[str, list[tuple[str, dict[str, str], float]]], name: str, **labels: str
) -> float:
    family = name.removesuffix("_total").removesuffix("_count")
    return sum(v for n, ls, v in families[family] if n == name and ls == labels)


async def test_a_scrape_counts_every_request_before_it(
    admin: TestServer, gateway: TestServer, seed: Seed
) -> None:
    """Per-request updates are held and folded in bulk: a scrape of the process folds
    first, so it misses none."""
    key = await seed.key()
    assert await key_status(gateway, key.key) == 200  # now cached
    before = await scrape(admin)
    for _ in range(3):
        assert await key_status(gateway, key.key) == 200
    after = await scrape(admin)

    def added(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert added("gateway_requests_total", outcome="ok", status_class="2xx") == 3
    assert added("gateway_auth_total", result="ok") == 3
    assert added("gateway_key_cache_hits_total") == 3
    assert added("gateway_request_duration_seconds_count") == 3
    assert added("gateway_upstream_duration_seconds_count") == 3


async def test_a_request_refused_before_its_key_is_judged_is_no_authentication_result(
    admin: TestServer, gateway: TestServer, seed: Seed
) -> None:
    """An expectation the gateway refuses (417) is decided before authentication: it
    counts as a request, not as a key accepted (it used to add to result="ok")."""
    key = await seed.key()
    before = await scrape(admin)
    async with aiohttp.ClientSession() as session:
        async with session.get(
            gateway.make_url("/v1/customers"),
            headers={"Authorization": f"Bearer {key.key}", "Expect": "something-else"},
        ) as response:
            assert response.status == 417
    after = await scrape(admin)
    assert value(after, "gateway_requests_total", outcome="bad_request", status_class="4xx") == (
        value(before, "gateway_requests_total", outcome="bad_request", status_class="4xx") + 1
    )
    assert value(after, "gateway_auth_total", result="ok") == value(
        before, "gateway_auth_total", result="ok"
    )


def test_a_worker_file_not_yet_sized_leaves_every_other_workers_metrics_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under --workers, /metrics and /readyz read the multiprocess directory. A process
    creates its file empty and sizes it a moment later (for good, if it is killed in that
    moment): the scrape still reads every other worker."""
    worker = "from prometheus_client import Counter; Counter('probe', 'p').inc(3)"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", worker], env=env, check=True)
    (tmp_path / "counter_4242.db").touch()  # another worker's file, created, not sized
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry()).decode())
    }
    assert [s.value for s in families["probe"].samples] == [3.0]


def test_a_fold_exports_what_observing_one_by_one_would() -> None:
    """`PendingHistogram` adds to prometheus-client's bucket values directly (there is no
    public bulk call): this fails if an upgrade moves them."""
    amounts = [0.0, -1.0, 0.0002, 0.00020001, 0.003, 0.5, 1.0, 29.9, 30.0, 31.0, math.inf]
    amounts += [i / 997 for i in range(1000)]
    one_by_one, folded = CollectorRegistry(), CollectorRegistry()
    expected = Histogram("h", "h", buckets=metrics.LATENCY_BUCKETS, registry=one_by_one)
    expected_count = Counter("c", "c", ["kind"], registry=one_by_one)
    actual = Histogram("h", "h", buckets=metrics.LATENCY_BUCKETS, registry=folded)
    actual_count = Counter("c", "c", ["kind"], registry=folded)
    pending = metrics.PendingHistogram(actual)
    for amount in amounts:
        expected.observe(amount)
        expected_count.labels("a").inc()
        pending.observe(amount)
        metrics.count(actual_count.labels("a"))
    pending.fold()
    metrics.fold()
    pending.fold()  # nothing left: changes nothing

    def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name, s.labels, s.value)
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert samples(folded) == samples(one_by_one)
    assert next(v for n, _, v in samples(folded) if n == "h_count") == len(amounts)


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
